"""Tar archives as pkg writes them, read as a stream whatever their compression.

Everything here streams: a package or catalogue is read entry by entry from
a decompressing reader, never unpacked to disk or held whole in memory.
"""
from __future__ import annotations

import lzma
import tarfile
from typing import BinaryIO, Iterator

import zstandard

from builder.common.compress import decompressing
from builder.errors import BuildError

def iter_tar(raw: BinaryIO, what: str, limit=None) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Yield (member, tar) in archive order; read a member's data with tar.extractfile(member)."""
    stream, _ = decompressing(raw, what, limit)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                yield member, tar
    except (tarfile.TarError, zstandard.ZstdError, lzma.LZMAError, OSError, EOFError) as exc:
        raise BuildError(f"{what}: corrupt archive: {exc}") from exc
