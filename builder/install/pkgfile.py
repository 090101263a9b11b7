"""Read a .pkg file as a stream: the manifests first, then each payload entry.

Payload entries are joined to their manifest metadata (config files,
directories, sums, 2.8-style per-file owner/mode). Nothing is unpacked to disk.
Member names become paths in one place, payload_path, which the layer
writer uses too when it reads the bytes back.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional

from builder.errors import BuildError
from builder.common.archive import iter_tar
from builder.install.fsmodel import normalise


@dataclass(frozen=True)
class Entry:
    path: str            # absolute, normalised, no trailing slash
    kind: str            # file | dir | symlink | hardlink
    mode: int
    uname: str
    gname: str
    mtime: int
    size: int
    target: str          # symlink target, or hard link source path
    sum: Optional[str]   # manifest sum (typed), None for directories
    config: bool
    member: str = ""     # the archive member name as written, for messages


METADATA = ("+COMPACT_MANIFEST", "+MANIFEST")


def payload_path(member: tarfile.TarInfo, what: str) -> Optional[str]:
    """The path a payload member installs to, or None for package metadata (+MANIFEST, +DISPLAY...).

    The only place a member name becomes a path: the scan (through
    PackageReader) and the layer writer's read-back both use it, so they
    cannot disagree about which member an entry is ('a/./b' and 'a/b' are
    one path, and the scan refuses the second). Refuses what normalise
    refuses; the root comes back as '/' for the caller to judge.
    """
    if member.name.startswith("+"):
        return None
    # tarfile strips the trailing slash of directory names: a directory named "" was "/"
    return normalise(member.name or ("/" if member.isdir() else ""), what)


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "file"
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    return "device" if (m.ischr() or m.isblk()) else ("fifo" if m.isfifo() else "other")


class PackageReader:
    """Iterate a package once: ``manifest`` is set before the first payload entry."""

    def __init__(self, fh: BinaryIO, what: str, limit: Optional[int] = None):
        self.fh = fh
        self.what = what
        self.limit = limit
        self.manifest: dict = {}
        self.compact: dict = {}
        self.order: list[str] = []   # archive member names in order

    def _parse(self, name: str, raw: bytes) -> dict:
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BuildError(f"{self.what}: {name} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise BuildError(f"{self.what}: {name} is not a JSON object")
        return doc

    def entries(self) -> Iterator[tuple[Entry, Optional[BinaryIO]]]:
        """Yield (entry, data stream or None); read the stream before advancing."""
        config: set[str] = set()
        files: dict = {}
        for member, tar in iter_tar(self.fh, self.what, self.limit):
            self.order.append(member.name)
            if member.name in METADATA:
                f = tar.extractfile(member)
                doc = self._parse(member.name, f.read() if f else b"")
                if member.name == "+MANIFEST":
                    self.manifest = doc
                    config = set(doc.get("config") or ())
                    files = doc.get("files") or {}
                else:
                    self.compact = doc
                continue
            path = payload_path(member, self.what)
            if path is None:
                continue  # other metadata (e.g. +DISPLAY) is not installed
            if not self.manifest:
                raise BuildError(f"{self.what}: payload entry {member.name} before +MANIFEST")
            meta = files.get(path)
            sum_ = meta.get("sum") if isinstance(meta, dict) else meta
            kind = _kind(member)
            target = member.linkname
            if kind == "hardlink":
                target = normalise(target, f"{self.what}: hard link {path}")
            entry = Entry(path=path, kind=kind, mode=member.mode & 0o7777,
                          uname=member.uname or "root", gname=member.gname or "wheel",
                          mtime=int(member.mtime), size=member.size if kind == "file" else 0,
                          target=target, sum=sum_, config=path in config, member=member.name)
            yield entry, (tar.extractfile(member) if kind == "file" else None)
        if not self.manifest:
            raise BuildError(f"{self.what}: no +MANIFEST in package")
