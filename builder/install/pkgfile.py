"""Read a .pkg file as a stream: the manifests first, then each payload entry.

Payload entries are joined to their manifest metadata (config files,
directories, sums, 2.8-style per-file owner/mode). Nothing is unpacked to disk.
Member names become paths in one place, payload_path; each entry also
carries where its data starts in the uncompressed archive, where the layer
writer reads the bytes back without parsing the archive again.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional

from builder.errors import BuildError
from builder.common.archive import iter_tar
from builder.install.fsmodel import normalise
from builder.resolve.catalogue import check_manifest_values

# pkg's own manifests stay under a few MB even for the largest packages (FreeBSD-src);
# anything bigger is refused unread, however small the compressed package is.
MANIFEST_LIMIT = 16 << 20

# The manifest fields the builder reads, and the JSON types pkg writes for them: a
# field of another type is refused here, by name, not met later as a TypeError.
_STR, _INT, _BOOL, _LIST, _DICT = (str,), (int,), (bool,), (list,), (dict,)
MANIFEST_TYPES = {
    "name": _STR, "origin": _STR, "version": _STR, "arch": _STR, "abi": _STR, "comment": _STR,
    "desc": _STR, "maintainer": _STR, "www": _STR, "prefix": _STR, "licenselogic": _STR,
    "flatsize": _INT, "vital": _BOOL,
    "deps": _DICT, "options": _DICT, "scripts": _DICT, "files": _DICT, "directories": _DICT + _LIST,
    "annotations": _DICT,
    "config": _LIST, "categories": _LIST, "licenses": _LIST, "users": _LIST, "groups": _LIST,
    "shlibs_required": _LIST, "shlibs_provided": _LIST, "provides": _LIST, "requires": _LIST,
}
# What the values inside those containers must be.
ITEM_TYPES = {"deps": (dict,), "options": (str,), "scripts": (str,), "files": (str, dict), "annotations": (str,),
              "config": (str,), "categories": (str,), "licenses": (str,), "users": (str,), "groups": (str,),
              "shlibs_required": (str,), "shlibs_provided": (str,), "provides": (str,), "requires": (str,)}


def _type_name(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "a boolean",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def check_manifest_types(doc: dict, what: str, name: str) -> None:
    for key, types in MANIFEST_TYPES.items():
        if key not in doc or doc[key] is None:
            continue
        v = doc[key]
        # bool is an int to Python, never to pkg
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise BuildError(f"{what}: {name}: field {key!r} is {_type_name(v)}, "
                             f"expected {' or '.join(_type_name(t()) for t in types)}")
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        want = ITEM_TYPES.get(key)
        if want:
            bad = next((x for x in items if not isinstance(x, want)), None)
            if bad is not None:
                raise BuildError(f"{what}: {name}: field {key!r} holds {_type_name(bad)}, "
                                 f"expected {' or '.join(_type_name(t()) for t in want)}")


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
    offset: int = -1     # where the member's data starts in the uncompressed archive


METADATA = ("+COMPACT_MANIFEST", "+MANIFEST")


def payload_path(member: tarfile.TarInfo, what: str) -> Optional[str]:
    """The path a payload member installs to, or None for package metadata (+MANIFEST, +DISPLAY...).

    The only place a member name becomes a path, so an entry is known by one
    name ('a/./b' and 'a/b' are one path, and the scan refuses the second).
    Refuses what normalise refuses; the root comes back as '/' for the
    caller to judge.
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
        except (ValueError, UnicodeDecodeError) as exc:
            # ValueError beyond JSONDecodeError: a number of over 4300 digits (int's guard)
            raise BuildError(f"{self.what}: {name} is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise BuildError(f"{self.what}: {name} is JSON nested too deeply; refusing") from exc
        if not isinstance(doc, dict):
            raise BuildError(f"{self.what}: {name} is not a JSON object")
        check_manifest_types(doc, self.what, name)
        check_manifest_values(doc, raw, self.what, name)
        missing = [k for k in ("name", "origin", "version") if k not in doc]
        if name == "+MANIFEST" and missing:
            raise BuildError(f"{self.what}: {name} has no {', '.join(missing)}")
        return doc

    def _read_manifest(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> bytes:
        # the tar header gives the size before a byte is read (or decompressed)
        if member.size > MANIFEST_LIMIT:
            raise BuildError(f"{self.what}: {member.name} is {member.size} bytes, over the limit of "
                             f"{MANIFEST_LIMIT} bytes for a manifest; refusing")
        f = tar.extractfile(member)
        return f.read(MANIFEST_LIMIT + 1) if f else b""

    def entries(self) -> Iterator[tuple[Entry, Optional[BinaryIO]]]:
        """Yield (entry, data stream or None); read the stream before advancing."""
        config: set[str] = set()
        files: dict = {}
        for member, tar in iter_tar(self.fh, self.what, self.limit):
            self.order.append(member.name)
            if member.name in METADATA:
                doc = self._parse(member.name, self._read_manifest(member, tar))
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
            if member.issparse():
                # its data is not `size` bytes where the archive puts it; pkg never writes one
                raise BuildError(f"{self.what}: refusing sparse member {member.name!r} ({path}): "
                                 "sparse files are not installed")
            kind = _kind(member)
            target = member.linkname
            if kind == "hardlink":
                target = normalise(target, f"{self.what}: hard link {path}")
            entry = Entry(path=path, kind=kind, mode=member.mode & 0o7777,
                          uname=member.uname or "root", gname=member.gname or "wheel",
                          mtime=int(member.mtime), size=member.size if kind == "file" else 0,
                          target=target, sum=sum_, config=path in config, member=member.name,
                          offset=member.offset_data)
            yield entry, (tar.extractfile(member) if kind == "file" else None)
        if not self.manifest:
            raise BuildError(f"{self.what}: no +MANIFEST in package")
