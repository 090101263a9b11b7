"""Hashing: of a file, and writers/readers that hash what passes through them (digests without a second read)."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import BinaryIO, Optional, Union


def file_digest(path: Union[str, Path], algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in pieces: memory stays flat whatever its size."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class HashingWriter(io.RawIOBase):
    def __init__(self, sink: Optional[BinaryIO] = None):
        self.sink = sink
        self.h = hashlib.sha256()
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        if self.sink is not None:
            self.sink.write(b)
        return len(b)

    @property
    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


class HashingReader(io.RawIOBase):
    """Hashes what is read through it; ``finish`` reads the rest, so the digest covers the whole file."""

    def __init__(self, source: BinaryIO):
        self.source = source
        self.h = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.source.read(len(b))
        self.h.update(data)
        b[:len(data)] = data
        return len(data)

    def finish(self) -> str:
        while chunk := self.source.read(1 << 20):
            self.h.update(chunk)
        return self.h.hexdigest()
