"""Compressed tar archives as pkg writes them: compression detected by content.

Everything here streams: a package or catalogue is read entry by entry from
a decompressing reader, never unpacked to disk or held whole in memory.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from typing import BinaryIO, Iterator, Optional

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


def iter_tar(raw: BinaryIO, what: str, limit=None) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Yield (member, tar) in archive order; read a member's data with tar.extractfile(member)."""
    stream, _ = decompressing(raw, what, limit)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                yield member, tar
    except (tarfile.TarError, zstandard.ZstdError, lzma.LZMAError, OSError, EOFError) as exc:
        raise BuildError(f"{what}: corrupt archive: {exc}") from None


def read_members(path, what: str, wanted: set[str], limit: Optional[int] = 256 << 20) -> dict[str, bytes]:
    """Read whole small members (catalogue files, signatures) by name."""
    out: dict[str, bytes] = {}
    with open(path, "rb") as fh:
        for member, tar in iter_tar(fh, what, limit):
            if member.name in wanted and member.isfile():
                f = tar.extractfile(member)
                out[member.name] = f.read() if f else b""
    return out


def list_members(path, what: str) -> list[str]:
    with open(path, "rb") as fh:
        return [m.name for m, _ in iter_tar(fh, what)]
