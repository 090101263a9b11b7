"""Write an OCI layer tar from filesystem nodes, deterministically.

Tar headers come from builder.common.tarutil (every field set by us, PAX only
where ustar cannot hold a value), paths sorted so that parents come first,
hard links as links. The stream is compressed in fixed 4 MiB blocks
(gzip members by the pinned libdeflate, or zstd frames), in parallel, in
order. The uncompressed stream's sha256 is the diff_id, the compressed
one's the blob digest.

Package contents are read back in sorted order from a decompressed spool of
each package (a temporary uncompressed tar, deleted after the layer), at the
offsets the scan recorded, so memory stays flat however large the layer is
and no archive is parsed twice.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, Optional


from builder.common import tarutil
from builder.errors import BuildError
from builder.install.fsmodel import Node, normalise
from builder.common.compress import BlockCompressor, Workers, decompressing
from builder.common.hashing import HashingReader, HashingWriter

LEVELS = {"gzip": 6, "zstd": 9}
MEDIA_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


@dataclass(frozen=True)
class LayerInfo:
    digest: str          # sha256:<hex> of the compressed blob
    diff_id: str         # sha256:<hex> of the tar
    size: int            # compressed bytes
    tar_size: int
    media_type: str
    entries: int


def sort_key(path: str) -> tuple[str, ...]:
    # Component-wise: a directory sorts right before its own contents.
    return tuple(path.strip("/").split("/"))


class IdMap:
    """Owner and group names to ids, from the image's own master.passwd and group."""

    def __init__(self, passwd: Optional[bytes], group: Optional[bytes]):
        self.users = {"root": 0}
        self.groups = {"wheel": 0}
        for text, table in ((passwd, self.users), (group, self.groups)):
            for line in (text or b"").decode("utf-8", "replace").splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                f = line.split(":")
                if len(f) > 2 and f[2].isdigit():
                    table.setdefault(f[0], int(f[2]))

    # Like pkg (get_uid_from_archive / get_gid_from_archive), a name the image
    # does not know installs as 0; packages built on other hosts carry such
    # names on symlinks (FreeBSD-runtime's /usr/bin/chfn is root:root).
    def uid(self, name: str, where: str) -> int:
        return self.users.get(name, 0)

    def gid(self, name: str, where: str) -> int:
        return self.groups.get(name, 0)


class _Slice:
    """``size`` bytes of a file from ``offset``, read with pread (no shared file position)."""

    def __init__(self, fd: int, offset: int, size: int):
        self.fd, self.pos, self.left = fd, offset, size

    def read(self, n: int) -> bytes:
        data = os.pread(self.fd, min(n, self.left), self.pos)
        self.pos += len(data)
        self.left -= len(data)
        return data


class PackageFile(NamedTuple):
    path: Path
    sha256: str     # of the file as scanned: the offsets in its nodes are offsets in these bytes


class _PackageSpool:
    """Each package decompressed once into a temporary file, its files read where the scan found them.

    Only the head of a package up to the last byte this layer needs is
    decompressed: that is also the most any package can make it write. The
    whole file is hashed on the way and must be the file that was scanned.
    """

    def __init__(self, packages: dict[str, PackageFile], nodes: list[Node]):
        self.packages = packages
        self.need: dict[str, int] = {}
        for n in nodes:
            if n.source.startswith("pkg:") and n.kind in ("file", "hardlink"):
                pkg = n.source[4:]
                if n.offset < 0:
                    raise BuildError(f"package {pkg}: {n.path} has no place in its package (not from a scan)")
                self.need[pkg] = max(self.need.get(pkg, 0), n.offset + n.size)
        self.open: dict[str, BinaryIO] = {}

    def read(self, pkg: str, node: Node) -> _Slice:
        if pkg not in self.open:
            tmp = tempfile.TemporaryFile()
            self.open[pkg] = tmp
            left = self.need[pkg]
            with open(self.packages[pkg].path, "rb") as raw:
                fh = HashingReader(raw)
                stream, _ = decompressing(fh, f"package {pkg}")
                while left and (chunk := stream.read(min(left, 1 << 20))):
                    tmp.write(chunk)
                    left -= len(chunk)
                if fh.finish() != self.packages[pkg].sha256 or left:
                    raise BuildError(f"package {pkg}: changed between scan and write (at {node.path} or before): "
                                     "refusing to write bytes that were not scanned")
            tmp.flush()
        return _Slice(self.open[pkg].fileno(), node.offset, node.size)

    def close(self) -> None:
        for tmp in self.open.values():
            tmp.close()
        self.open.clear()


def write_layer(out: BinaryIO, nodes: list[Node], whiteouts: list[str], packages: dict[str, PackageFile],
                ids: IdMap, epoch: int, compression: str = "gzip", workers: Optional[Workers] = None) -> LayerInfo:
    # the layout's blob writer already hashes what it stores: hash the compressed bytes once
    compressed = out if isinstance(out, HashingWriter) else HashingWriter(out)
    comp = BlockCompressor(compressed, compression, LEVELS[compression], workers)
    plain = HashingWriter(comp)
    spool = _PackageSpool(packages, nodes)
    entries: list[tuple[tuple[str, ...], str, Optional[Node]]] = [(sort_key(n.path), n.path, n) for n in nodes]
    for w in whiteouts:
        parent, _, base = w.rpartition("/")
        wh = f"{parent}/.wh.{base}"
        entries.append((sort_key(wh), wh, None))
    entries.sort(key=lambda e: e[0])
    # In a layer the first member of a hard-link group (in sorted order) carries the data.
    first_of: dict[tuple[str, str], str] = {}
    count = 0
    try:
        with tarutil.TarWriter(plain) as tar:
            for _, path, node in entries:
                name = path.lstrip("/")
                who = (node.owner or node.source) if node else "whiteout"
                if path == "/" or normalise(path, who) != path:
                    # the model never holds these (FileSystem.add); a layer must not either
                    raise BuildError(f"{who}: refusing to write {path!r} into a layer: the root or a non-canonical path")
                count += 1
                if node is None:
                    tar.addfile(tarutil.info(name, "file", size=0, mode=0o644, mtime=epoch))
                    continue
                where = f"{node.owner or node.source}: {path}"
                uid, gid = ids.uid(node.uname, where), ids.gid(node.gname, where)
                common = dict(mode=node.mode, mtime=min(node.mtime, epoch), uname=node.uname, gname=node.gname,
                              uid=uid, gid=gid)
                if node.kind == "dir":
                    tar.addfile(tarutil.info(name, "dir", **common))
                elif node.kind == "symlink":
                    tar.addfile(tarutil.info(name, "symlink", linkname=node.target, **common))
                else:
                    group = (node.owner, node.target if node.kind == "hardlink" else node.path)
                    if node.kind == "hardlink" or group in first_of:
                        first = first_of.get(group)
                        if first is not None:
                            tar.addfile(tarutil.info(name, "hardlink", linkname=first.lstrip("/"), **common))
                            continue
                    first_of[group] = path
                    ti = tarutil.info(name, "file", size=node.size, **common)
                    if node.data is not None:
                        tar.addfile(ti, node.data)
                    else:
                        tar.addfile(ti, spool.read(node.source[4:], node))
        comp.finish()
    finally:
        comp.close()
        spool.close()
    return LayerInfo(digest="sha256:" + compressed.h.hexdigest(), diff_id="sha256:" + plain.h.hexdigest(),
                     size=compressed.n, tar_size=plain.n, media_type=MEDIA_TYPES[compression], entries=count)
