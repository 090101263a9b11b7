"""Merge OCI layouts built per arch into one: blobs copied, indexes of the same
ref joined by full platform (what CI's join job does with the matrix artifacts)."""
from __future__ import annotations

import shutil
from pathlib import Path

from builder.common.atomic import atomic_output
from builder.errors import BuildError
from builder.oci.image import index, merge_platforms
from builder.oci.layout import INDEX_MT, Descriptor, Layout


def assemble(dest: Path, sources: list[Path]) -> dict[str, Descriptor]:
    out = Layout(dest).init()
    merged: dict[str, tuple[tuple, list[Descriptor]]] = {}      # ref -> (annotations, manifests)
    plain: dict[str, Descriptor] = {}
    referrers: dict[str, list[Descriptor]] = {}     # SBOMs and provenance follow their images
    for src in sorted(sources, key=str):
        lay = Layout(src)
        if not (Path(src) / "index.json").exists():
            raise BuildError(f"{src}: not an OCI layout")
        for blob in sorted(lay.blobs.iterdir()):
            if not blob.name.startswith(".") and not out.has_blob("sha256:" + blob.name):
                with open(blob, "rb") as fh, atomic_output(out.blobs / blob.name) as dst:
                    shutil.copyfileobj(fh, dst, 1 << 20)
        for ref, desc in lay.refs().items():
            if desc.media_type == INDEX_MT:
                idx = lay.read_json(desc.digest)
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
