"""Compression in one place: sniffing what a stream is, and the compressors output is written with.

Readers detect the format by content (pkg does the same), never by file name.
Compressors share one shape: ``write`` bytes, then ``finish`` once.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import zlib
from typing import BinaryIO, Optional

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


class Gzip(io.RawIOBase):
    """gzip with every header field pinned; Python's own writers differ in the OS byte."""

    def __init__(self, sink: BinaryIO, level: int):
        self.sink = sink
        self.z = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
        self.crc = 0
        self.size = 0
        sink.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\x03")

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        b = bytes(b)
        self.crc = zlib.crc32(b, self.crc)
        self.size += len(b)
        self.sink.write(self.z.compress(b))
        return len(b)

    def finish(self) -> None:
        self.sink.write(self.z.flush())
        self.sink.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))


class Zstd(io.RawIOBase):
    def __init__(self, sink: BinaryIO, level: int):
        self.sink = sink
        self.c = zstandard.ZstdCompressor(level=level, write_content_size=False, write_checksum=True).compressobj()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sink.write(self.c.compress(bytes(b)))
        return len(b)

    def finish(self) -> None:
        self.sink.write(self.c.flush())


class Xz:
    def __init__(self, sink, preset: int):
        self.sink = sink
        self.c = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)

    def write(self, b) -> int:
        self.sink.write(self.c.compress(bytes(b)))
        return len(b)

    def finish(self) -> None:
        self.sink.write(self.c.flush())
