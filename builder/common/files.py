"""Files that hostile hands may have placed: opened only when they are regular files, read within a bound.

Caches, layouts, lookaside signatures and a vuln.xml given on the command line all come from places
someone else may write. Opening one must not follow a planted link, must not wait forever on a FIFO,
and reading it must not take more than the caller can afford: one way, for all of them.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from builder.errors import BuildError


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "of an unknown type"


def open_regular(path: Path) -> BinaryIO:
    """A regular file open for reading; a symlink (last component), FIFO, device or directory is refused.

    O_NONBLOCK: opening a FIFO must not wait for a writer. FileNotFoundError passes through (missing
    is the caller's case).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise BuildError(f"{path}: {why}, not a regular file; refusing") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BuildError(f"{path}: {kind_of(mode)}, not a regular file; refusing")
    return os.fdopen(fd, "rb")


def read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes, its size checked before reading; never more than ``limit`` bytes read
    (/proc files say size 0 and then give more)."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise BuildError(f"{path}: over the limit of {limit} bytes; refusing")
    return data
