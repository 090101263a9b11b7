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
