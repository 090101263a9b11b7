"""Compression in one place: sniffing what a stream is, and the compressors output is written with.

Readers detect the format by content (pkg does the same), never by file name.
Compressors share one shape: ``write`` bytes, then ``finish`` once.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import collections
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Optional

import deflate
import zstandard

from builder.errors import BuildError

MAGICS = (
    (b"\x28\xb5\x2f\xfd", "tzst"),
    (b"\xfd7zXZ\x00", "txz"),
    (b"\x1f\x8b", "tgz"),
    (b"BZh", "tbz"),
)


def sniff(head: bytes) -> str:
    """The packing format of an archive from its first bytes."""
    for magic, name in MAGICS:
        if head.startswith(magic):
            return name
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise BuildError("not a pkg archive: unknown compression (expected zstd, xz, gzip, bzip2 or tar)")


class _Peek(io.RawIOBase):
    """Give back bytes read for sniffing, then continue with the stream."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[:len(data)] = data
        return len(data)


class Limit:
    """A byte limit that can be tightened once the manifest's flatsize is known."""

    def __init__(self, value: Optional[int]):
        self.value = value


class Bounded(io.RawIOBase):
    """Refuse to yield more than ``limit`` decompressed bytes (archive bombs)."""

    def __init__(self, inner: BinaryIO, limit, what: str):
        self._inner = inner
        self._limit = limit
        self._seen = 0
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._inner.read(len(b))
        self._seen += len(data)
        limit = getattr(self._limit, "value", self._limit)
        if limit is not None and self._seen > limit:
            raise BuildError(f"{self._what}: decompresses to more than {limit} bytes; refusing (archive bomb?)")
        b[:len(data)] = data
        return len(data)


def decompressing(raw: BinaryIO, what: str, limit=None) -> tuple[BinaryIO, str]:
    head = raw.read(512)
    fmt = sniff(head)
    src = io.BufferedReader(_Peek(head, raw), 1 << 16)
    if fmt == "tzst":
        stream: BinaryIO = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
    elif fmt == "txz":
        stream = lzma.LZMAFile(src)
    elif fmt == "tgz":
        stream = gzip.GzipFile(fileobj=src, mode="rb")
    elif fmt == "tbz":
        stream = bz2.BZ2File(src)
    else:
        stream = src
    return io.BufferedReader(Bounded(stream, limit, what), 1 << 16), fmt


# Layers are cut into blocks at fixed offsets of the uncompressed stream and each block is
# compressed on its own: a gzip member (RFC 1952 allows a stream of members) or a zstd frame.
# Blocks compress in parallel, yet the bytes depend only on the data, the level and BLOCK,
# never on the number of workers or on timing.
BLOCK = 4 << 20
GZIP_HEADER = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\x03"   # no name, mtime 0, OS Unix
MAX_IN_FLIGHT = 16        # blocks queued at once, whatever the core count: memory stays flat


def gzip_member(data: bytes, level: int) -> bytes:
    # libdeflate from the pinned `deflate` wheel, never the zlib Python links: zlib and
    # zlib-ng give different bytes at the same level. libdeflate's parsing has no
    # CPU-dispatched variants (only its checksums do), so x86-64 and arm64 agree.
    body = deflate.deflate_compress(data, level)
    return GZIP_HEADER + body + struct.pack("<II", deflate.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


def zstd_frame(data: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True).compress(data)


CODECS = {"gzip": gzip_member, "zstd": zstd_frame}


def versions() -> dict[str, str]:
    """The compressors' versions, recorded with each image (they shape its bytes)."""
    return {"gzip": f"libdeflate via deflate {deflate.__version__}",
            "zstd": f"libzstd {zstandard.ZSTD_VERSION[0]}.{zstandard.ZSTD_VERSION[1]}.{zstandard.ZSTD_VERSION[2]}"
                    f" via zstandard {zstandard.__version__}"}


class BlockCompressor(io.RawIOBase):
    """``write`` the uncompressed stream, ``finish`` once; compressed blocks reach ``sink`` in order."""

    def __init__(self, sink: BinaryIO, codec: str, level: int, workers: int = 1, block: int = BLOCK):
        self.sink, self.level, self.block = sink, level, block
        self.fn = CODECS[codec]
        self.buf: list[bytes] = []
        self.buffered = 0
        self.queue: collections.deque = collections.deque()
        self.blocks = 0
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers)) if workers > 1 else None
        self.in_flight = min(MAX_IN_FLIGHT, 2 * max(1, workers))

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = len(b)
        self.buf.append(bytes(b))
        self.buffered += n
        if self.buffered >= self.block:
            data = b"".join(self.buf)
            cut = 0
            while len(data) - cut >= self.block:
                self._submit(data[cut:cut + self.block])
                cut += self.block
            self.buf = [data[cut:]] if cut < len(data) else []
            self.buffered = len(data) - cut
        return n

    def _submit(self, data: bytes) -> None:
        self.blocks += 1
        if self.pool is None:
            self.sink.write(self.fn(data, self.level))
            return
        self.queue.append(self.pool.submit(self.fn, data, self.level))
        while len(self.queue) >= self.in_flight:
            self.sink.write(self.queue.popleft().result())

    def finish(self) -> None:
        if self.buffered or not self.blocks:
            self._submit(b"".join(self.buf))
            self.buf, self.buffered = [], 0
        while self.queue:
            self.sink.write(self.queue.popleft().result())
        self.close()

    def close(self) -> None:
        """Stop the workers (also when the layer failed half-way and ``finish`` never ran)."""
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


class Xz:
    def __init__(self, sink, preset: int):
        self.sink = sink
        self.c = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)

    def write(self, b) -> int:
        self.sink.write(self.c.compress(bytes(b)))
        return len(b)

    def finish(self) -> None:
        self.sink.write(self.c.flush())
