"""Merge OCI layouts built per arch into one: blobs copied, indexes of the same
ref joined by platform (what CI's join job does with the matrix artifacts)."""
from __future__ import annotations

import shutil
from pathlib import Path

from builder.errors import BuildError
from builder.oci.layout import INDEX_MT, Descriptor, Layout


def assemble(dest: Path, sources: list[Path]) -> dict[str, Descriptor]:
    out = Layout(dest).init()
    merged: dict[str, tuple[dict, dict]] = {}      # ref -> (annotations, platform key -> manifest entry)
    plain: dict[str, Descriptor] = {}
    for src in sorted(sources, key=str):
        lay = Layout(src)
        if not (Path(src) / "index.json").exists():
            raise BuildError(f"{src}: not an OCI layout")
        for blob in sorted(lay.blobs.iterdir()):
            if not blob.name.startswith(".") and not out.has_blob("sha256:" + blob.name):
                tmp = out.blobs / f".{blob.name}.tmp"
                shutil.copyfile(blob, tmp)
                tmp.replace(out.blobs / blob.name)
        for ref, desc in lay.refs().items():
            if desc.media_type == INDEX_MT:
                idx = lay.read_json(desc.digest)
                ann, plats = merged.setdefault(ref, (idx.get("annotations") or {}, {}))
                for m in idx["manifests"]:
                    p = m.get("platform") or {}
                    plats[(p.get("os"), p.get("architecture"), p.get("variant"))] = m
            else:
                plain[ref] = desc
    refs = dict(plain)
    for ref, (ann, plats) in merged.items():
        doc = {"schemaVersion": 2, "mediaType": INDEX_MT,
               "manifests": [plats[k] for k in sorted(plats, key=lambda k: tuple(x or "" for x in k))],
               "annotations": ann}
        refs[ref] = out.put_json(doc, INDEX_MT)
    out.set_refs(refs)
    return refs
