"""Scan packages into the filesystem model, checking everything on the way in.

A scan streams each .pkg once: it hashes every file, checks ELF headers
against the target arch, reads each ELF file's dynamic section (for the
shared-library closure), and refuses hostile entries (``..``, links that
climb out of the root, hard links to nothing, device nodes, archive bombs,
empty names, the same path spelt twice, a non-directory root), naming the
package, the path and the reason. The package is then installed into an
empty filesystem model, which refuses what only the tree shows (entries
below a symlink or a file, ``s -> .`` chains climbing out, loops);
installing it into the image's model checks the same against every other
package.

The ELF reader keeps a bounded part of each file while it streams by (see
builder.install.elf). The rare file whose strings lay behind that part is
read once more, in one more pass over the package for all such files.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Optional

from builder.errors import BuildError
from builder.install import elf
from builder.install.fsmodel import FileSystem, Node, check_symlink
from builder.install.pkgfile import Entry, PackageReader
from builder.common.compress import Limit
from builder.common.hashing import HashingReader

BOMB_SLACK = 4 << 20  # tar headers and padding on top of flatsize
MAX_MEMBER = 16 << 20  # a file read whole for post-install work (passwd, services, a certificate...)


@dataclass
class ScannedPackage:
    name: str
    path: Path
    manifest: dict
    nodes: list[Node] = field(default_factory=list)
    config: dict[str, bytes] = field(default_factory=dict)   # config file contents, for the pkg database
    sha256: str = ""     # of the package file scanned: the layer writer reads exactly these bytes back


def check_elf(head: bytes, arch: str, what: str, path: str) -> None:
    if not head.startswith(b"\x7fELF") or len(head) < 20:
        return
    klass, machine = head[4], int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    want = elf.MACHINE.get(arch)
    if want and (klass, machine) != want:
        raise BuildError(f"{what}: {path} is an ELF file for machine {machine} (class {klass}), "
                         f"not {arch} (machine {want[1]}, class {want[0]})")


def scan_package(pkg_path: Path, name: str, arch: str, epoch: int, version: Optional[str] = None) -> ScannedPackage:
    """Scan one package; ``version``, when given, is the version its signed catalogue entry (the lock) names."""
    what = f"package {name} ({Path(pkg_path).name})"
    limit = Limit(None)
    out = ScannedPackage(name, Path(pkg_path), {})
    seen: dict[str, Node] = {}
    again: dict[str, tuple[int, list]] = {}   # ELF files to read once more: path -> (size, regions)
    strings = elf.StringTable()   # one per package: its files share their library names
    with open(pkg_path, "rb") as raw:
        fh = HashingReader(raw)
        pkg_reader = PackageReader(fh, what, limit)
        for entry, stream in pkg_reader.entries():
            if limit.value is None:
                _check_identity(pkg_reader.manifest, name, version, what)
                limit.value = 2 * int(pkg_reader.manifest.get("flatsize") or 0) + BOMB_SLACK
            path = entry.path   # normalised by PackageReader, as the layer writer reads it back
            if path == "/":
                if entry.kind == "dir":
                    continue   # the image root belongs to the image: a package never sets its mode
                raise BuildError(f"{what}: refusing {entry.kind} entry {entry.member!r}: it names the image root")
            if path in seen:
                raise BuildError(f"{what}: refusing duplicate entry {path} (member {entry.member!r} names "
                                 f"the same path as an earlier member)")
            mtime = min(entry.mtime, epoch)
            if entry.kind == "file":
                node = _scan_file(entry, stream, out, arch, mtime, what, strings, again)
            elif entry.kind == "dir":
                node = Node(path, "dir", entry.mode, entry.uname, entry.gname, mtime, owner=name, source=f"pkg:{name}")
            elif entry.kind == "symlink":
                check_symlink(path, entry.target, what)
                node = Node(path, "symlink", 0o777, entry.uname, entry.gname, mtime,
                            sha256=hashlib.sha256(entry.target.encode()).hexdigest(), target=entry.target,
                            owner=name, source=f"pkg:{name}")
            elif entry.kind == "hardlink":
                target = entry.target   # normalised by PackageReader
                src = seen.get(target)
                if src is None or src.kind != "file":
                    raise BuildError(f"{what}: refusing hard link {path} -> {entry.target}: "
                                     "target is not a file earlier in this package (escapes the package)")
                node = Node(path, "hardlink", src.mode, src.uname, src.gname, src.mtime, src.size, src.sha256,
                            target=target, owner=name, source=f"pkg:{name}", elf=src.elf, offset=src.offset)
            else:
                raise BuildError(f"{what}: refusing {entry.kind} entry {path}: device nodes and special files are not installed")
            seen[path] = node
            out.nodes.append(node)
        out.manifest = pkg_reader.manifest
        out.sha256 = fh.finish()
    if limit.value is None:   # no payload entry came to check it on the way
        _check_identity(out.manifest, name, version, what)
    if again:
        found = _read_again(pkg_path, what, limit, again, strings)
        out.nodes = [replace(n, elf=found[n.target if n.kind == "hardlink" else n.path])
                     if n.kind in ("file", "hardlink") and (n.target if n.kind == "hardlink" else n.path) in found
                     else n for n in out.nodes]
    # The package as a tree of its own, whatever the entry order: nothing
    # below its own files or symlinks, no link climbing out through its links.
    install(FileSystem(), out, what)
    return out


def _check_identity(manifest: dict, name: str, version: Optional[str], what: str) -> None:
    """The package is the one its signed catalogue entry names: a signed catalogue vouches for
    the file's bytes, and the SBOM and pkg's database say what the +MANIFEST says."""
    if manifest.get("name") not in (None, name):
        raise BuildError(f"{what}: manifest says it is {manifest.get('name')}")
    if version is not None and manifest.get("version") != version:
        raise BuildError(f"{what}: its +MANIFEST says version {manifest.get('version')}, its catalogue entry "
                         f"(the lock) says {version}; refusing")


def _scan_file(entry: Entry, stream: BinaryIO, out: ScannedPackage, arch: str, mtime: int, what: str,
               strings: elf.StringTable, again: dict[str, tuple[int, list]]) -> Node:
    """Hash a regular file as it streams by, keep a config file's bytes, read an ELF file's dynamic section."""
    h = hashlib.sha256()
    head = b""
    size = 0
    keep = [] if entry.config else None
    reader = None
    while chunk := stream.read(1 << 16):
        if not head:
            head = chunk[:64]
            if elf.is_elf(head):
                reader = elf.ElfReader(entry.size, strings=strings)
        if reader is not None:
            reader.feed(chunk)
        h.update(chunk)
        size += len(chunk)
        if keep is not None:
            keep.append(chunk)
    if keep is not None:
        out.config[entry.path] = b"".join(keep)
    check_elf(head, arch, what, entry.path)
    info = None
    if reader is not None:
        info = reader.finish()
        _check_strings(strings, what, entry.path)
        if info is None:
            again[entry.path] = (entry.size, reader.regions)
    return Node(entry.path, "file", entry.mode, entry.uname, entry.gname, mtime, size, h.hexdigest(),
                owner=out.name, source=f"pkg:{out.name}", elf=info, offset=entry.offset)


def _check_strings(strings: elf.StringTable, what: str, path: str) -> None:
    if strings.refused is not None:
        raise BuildError(f"{what}: {path}: {strings.refused}; refusing the package")


def _read_again(pkg_path: Path, what: str, limit: Limit, files: dict[str, tuple[int, list]],
                strings: elf.StringTable) -> dict[str, elf.ElfInfo]:
    """Stream the package again for the ELF files whose dynamic strings streamed past unkept."""
    found: dict[str, elf.ElfInfo] = {}
    for _ in range(elf.MAX_PASSES - 1):
        with open(pkg_path, "rb") as fh:
            for entry, stream in PackageReader(fh, what, limit).entries():
                if entry.kind != "file" or entry.path not in files or entry.path in found:
                    continue
                size, regions = files[entry.path]
                reader = elf.ElfReader(size, regions, strings=strings)
                while chunk := stream.read(1 << 16):
                    reader.feed(chunk)
                info = reader.finish()
                _check_strings(strings, what, entry.path)
                if info is not None:
                    found[entry.path] = info
                else:
                    files[entry.path] = (size, reader.regions)
        if len(found) == len(files):
            return found
    for path, (size, regions) in files.items():
        found.setdefault(path, elf.ElfReader(size, regions, strings=strings).give_up())
    return found


def install(fs: FileSystem, scanned: ScannedPackage, what: str = "") -> None:
    what = what or f"package {scanned.name}"
    for node in scanned.nodes:
        fs.add(node, what)
    fs.verify(what)


def read_member(pkg_path: Path, name: str, wanted: set[str]) -> dict[str, bytes]:
    """Contents of a few (small) files of a package, by absolute path."""
    out: dict[str, bytes] = {}
    with open(pkg_path, "rb") as fh:
        for entry, stream in PackageReader(fh, f"package {name}").entries():
            if entry.path in wanted and stream is not None:
                if entry.size > MAX_MEMBER:
                    raise BuildError(f"package {name}: {entry.path} is {entry.size} bytes, over the {MAX_MEMBER} "
                                     "bytes the builder reads of a configuration file or certificate; refusing")
                out[entry.path] = stream.read(MAX_MEMBER)
                if len(out) == len(wanted):
                    break   # the scan already refused duplicates: nothing later can differ
    missing = wanted - set(out)
    if missing:
        raise BuildError(f"package {name}: has no file {', '.join(sorted(missing))}")
    return out
