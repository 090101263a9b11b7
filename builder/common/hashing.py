"""A writer that hashes and counts what passes through it (digests without a second read)."""
from __future__ import annotations

import hashlib
import io
from typing import BinaryIO, Optional


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
