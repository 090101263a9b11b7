"""Tar headers built from metadata, never from the host (no getpwuid, no stat)."""
from __future__ import annotations

import tarfile

TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
         "hardlink": tarfile.LNKTYPE}


def info(name: str, kind: str, *, size: int = 0, mode: int = 0o644, mtime: int = 0,
         uname: str = "root", gname: str = "wheel", uid: int = 0, gid: int = 0,
         linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = TYPES[kind]
    ti.size = size if kind == "file" else 0
    ti.mode = mode & 0o7777
    ti.mtime = int(mtime)
    ti.uname, ti.gname = uname, gname
    ti.uid, ti.gid = uid, gid
    ti.linkname = linkname
    ti.devmajor = ti.devminor = 0
    return ti
