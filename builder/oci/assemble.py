"""Merge OCI layouts built per arch into one: blobs copied, indexes of the same
ref joined by full platform (what CI's join job does with the matrix artifacts).

The per-arch layouts are downloaded artifacts, so hostile input: only regular files named by a
digest are copied, never through a symlink (of a blob, of blobs/ or blobs/sha256), never blocking
on a FIFO, and each is hashed as it is copied and refused unless its bytes match its name.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from builder.common.atomic import atomic_output
from builder.errors import BuildError
from builder.oci.image import index, merge_platforms
from builder.oci.layout import INDEX_MT, Descriptor, Layout, valid_digest


def _copy_blobs(src: Layout, out: Layout) -> None:
    """Every blob of src that out lacks, checked against its name while it is copied."""
    with src.blob_dir() as fd:
        if fd is None:
            return
        with os.scandir(fd) as listing:
            names = sorted(e.name for e in listing)
    for name in names:
        if name.startswith("."):
            continue                # a leftover of an interrupted write: not a blob
        digest = "sha256:" + name
        if not valid_digest(digest):
            raise BuildError(f"{src.blobs / name}: not named by a sha256 digest; refusing")
        if out.has_blob(digest):
            continue
        # open_blob refuses symlinks, FIFOs and devices; verify() hashes what was copied
        with src.open_blob(digest) as fh, atomic_output(out.blob_path(digest)) as dst:
            shutil.copyfileobj(fh, dst, 1 << 20)
            fh.verify()


def assemble(dest: Path, sources: list[Path]) -> dict[str, Descriptor]:
    out = Layout(dest)
    with out.blob_dir():
        pass                        # refused before anything is written when dest's blobs lead elsewhere
    out.init()
    merged: dict[str, tuple[tuple, list[Descriptor]]] = {}      # ref -> (annotations, manifests)
    plain: dict[str, Descriptor] = {}
    referrers: dict[str, list[Descriptor]] = {}     # SBOMs and provenance follow their images
    for src in sorted(sources, key=str):
        lay = Layout(src)
        if not os.path.lexists(Path(src) / "index.json"):
            raise BuildError(f"{src}: not an OCI layout")
        refs = lay.refs()           # index.json checked before any blob is copied
        _copy_blobs(lay, out)
        for ref, desc in refs.items():
            if desc.media_type == INDEX_MT:
                idx = lay.read_index(desc.digest)
                ann, mans = merged.setdefault(ref, (tuple(sorted((idx.get("annotations") or {}).items())), []))
                mans.extend(Descriptor.from_json(m) for m in idx["manifests"])
            else:
                plain[ref] = desc
        for subject, descs in lay.referrers().items():
            have = referrers.setdefault(subject, [])
            have += [d for d in descs if d.digest not in {h.digest for h in have}]
    refs = dict(plain)
    for ref, (ann, mans) in merged.items():
        refs[ref] = out.put_json(index(merge_platforms(mans), ann), INDEX_MT)
    out.set_refs(refs, referrers=referrers)
    return refs
