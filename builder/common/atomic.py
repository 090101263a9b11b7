"""Atomic file output, the one way every file is written: beside the target, fsync, rename.

An interrupted build leaves either the old file or the new one, never half of
either; readers (and the cache) never see a partial file under its final name.
A ``Pending`` file may learn its final name only once written (content-addressed
blobs), which is why the name is given at ``commit``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


class Pending:
    """A temporary file in ``directory`` that becomes a real file only by ``commit``."""

    def __init__(self, directory: Path, prefix: str = ".tmp."):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
        self.fh: BinaryIO = os.fdopen(fd, "w+b")
        self.done = False

    def commit(self, path: Path, mode: int = 0o644, durable: bool = True) -> Path:
        self.fh.flush()
        if durable:
            os.fsync(self.fh.fileno())
        self.fh.close()
        os.chmod(self.path, mode)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, path)
        self.done = True
        return Path(path)

    def discard(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        if not self.done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.done = True


@contextlib.contextmanager
def pending(directory: Path, prefix: str = ".tmp.") -> Iterator[Pending]:
    """A Pending file that is removed unless committed, whatever happens inside the block."""
    p = Pending(directory, prefix)
    try:
        yield p
    finally:
        p.discard()


@contextlib.contextmanager
def atomic_output(path: Path, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """``durable=False`` skips the fsync: for caches, where a file a power cut tore is a miss, never a wrong answer."""
    path = Path(path)
    with pending(path.parent, f".{path.name}.") as p:
        yield p.fh
        p.commit(path, mode, durable)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    with atomic_output(path, mode, durable) as fh:
        fh.write(data)


def write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it; True when written.

    An unchanged file keeps its mtime: make and CI caches see no change where there is none."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(data) + 1) == data:
                return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data, mode)
    return True
