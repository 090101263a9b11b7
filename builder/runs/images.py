"""A release's images: build every flavour and arch into one OCI layout.

Ties the stages together: lock -> fetch -> build_arch (layers) -> OCI
config, manifests and indexes -> refs in the layout's index.json (last).
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from builder.layers.build import BuildOptions, FlavourResult, build_arch
from builder.runs.context import Context, epoch_override
from builder.errors import BuildError
from builder.layers.writer import LayerInfo
from builder.resolve.lock import Lock
from builder.oci import image as oci
from builder.oci.layout import CONFIG_MT, INDEX_MT, MANIFEST_MT, Descriptor, Layout


@dataclass(frozen=True)
class BuiltImage:
    name: str
    flavour: str
    arch: str             # FreeBSD arch
    platform: str         # OCI architecture
    manifest: Descriptor
    config: Descriptor
    layers: tuple[LayerInfo, ...]
    version: str
    tags: tuple[str, ...]
    packages: tuple[tuple[str, str], ...]   # (name, version) installed
    closure: Optional[dict] = None          # shared-library closure counts (Closure.to_json)

    @property
    def size(self) -> int:
        return sum(l.size for l in self.layers)

    def to_json(self) -> dict:
        return {"image": self.name, "tags": list(self.tags), "arch": self.arch, "platform": self.platform,
                "layers": len(self.layers), "size": self.size, "digest": self.manifest.digest,
                "config": self.config.digest, "version": self.version, "closure": self.closure}


@dataclass
class ReleaseBuild:
    release: str
    layout: Path
    epoch: int
    images: list[BuiltImage]
    indexes: dict[str, Descriptor]          # image name -> multi-arch index
    refs: dict[str, Descriptor]
    results: dict[str, dict[str, FlavourResult]]  # arch -> flavour -> result (filesystem models)
    blobs_written: int = 0


def layout_dir(out: Path, release: str) -> Path:
    return Path(out) / release


def build_epoch(lock: Lock) -> int:
    e = epoch_override()
    return e if e is not None else lock.source_date_epoch


def build_release(ctx: Context, lock: Lock, out: Path, flavours: Optional[list[str]] = None,
                  compression: str = "gzip", squash: bool = False, jobs: int = 2,
                  log=lambda msg: print(msg, file=sys.stderr),
                  warn=lambda msg: print(f"warning: {msg}", file=sys.stderr)) -> ReleaseBuild:
    family = ctx.project.family
    declared = ctx.project.release(ctx.release.name)   # URLs as declared, not the mirror's
    epoch = build_epoch(lock)
    opts = BuildOptions(epoch=epoch, compression=compression, squash=squash)
    layout = Layout(layout_dir(out, ctx.release.name)).init()

    def sink(write):
        info, digest, size = layout.put_stream(write)
        if (digest, size) != (info.digest, info.size):
            raise BuildError(f"layer blob {digest} does not match what the writer hashed ({info.digest})")
        return info

    def one(arch: str):
        if arch not in lock.arches:
            raise BuildError(f"{ctx.release.name}: arch {arch} is not in the lock file {ctx.lock_path}")
        paths = ctx.fetch_locked(lock, arch)
        log(f"{ctx.release.name}/{arch}: {len(paths)} packages ready, building")
        return arch, build_arch(family, declared, arch, lock.arches[arch], paths, opts, sink, flavours, warn=warn)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = dict(pool.map(one, ctx.arches))

    images: list[BuiltImage] = []
    by_key: dict[tuple[str, str], BuiltImage] = {}
    names = [f for f in family.names if any(f in r for r in results.values())]
    metas: dict[str, oci.ImageMeta] = {}
    for fname in names:
        for arch in ctx.arches:
            res = results[arch][fname]
            a = declared.arch(arch)
            name = declared.render_name(fname)
            immutable, moving = declared.render_tags(fname, res.version)
            tags = tuple(dict.fromkeys(immutable + moving))
            parent = family.flavours[fname].parent
            base_name = f"{declared.render_name(parent)}:{immutable[0] if immutable else res.version}" if parent else None
            meta = oci.ImageMeta(name=name, flavour=fname, description=res.description, version=res.version,
                                 epoch=epoch, config=res.config, tags=tags, base_name=base_name)
            metas[fname] = meta
            cfg = layout.put_json(oci.image_config(meta, a, [l.diff_id for l in res.layers], res.history), CONFIG_MT)
            layers = [Descriptor(l.media_type, l.digest, l.size) for l in res.layers]
            base_digest = by_key[(parent, arch)].manifest.digest if parent else None
            man = layout.put_json(oci.manifest(cfg, layers, oci.annotations(meta, base_digest)), MANIFEST_MT,
                                  platform=oci.platform(a))
            img = BuiltImage(name, fname, arch, a.platform, man, cfg, tuple(res.layers), res.version, tags,
                             tuple(sorted(res.versions.items())), res.closure.to_json() if res.closure else None)
            by_key[(fname, arch)] = img
            images.append(img)

    existing = layout.refs()
    refs: dict[str, Descriptor] = {}
    indexes: dict[str, Descriptor] = {}
    for fname in names:
        meta = metas[fname]
        built = [by_key[(fname, a)] for a in ctx.arches]
        manifests = {dict(i.manifest.platform)["architecture"]: i.manifest for i in built}
        # Building some arches keeps the other arches already in the layout's index.
        old = existing.get(f"{meta.name}:{meta.tags[0]}") if meta.tags else None
        if old is not None and old.media_type == INDEX_MT and layout.has_blob(old.digest):
            for m in layout.read_json(old.digest).get("manifests", []):
                d = Descriptor.from_json(m)
                arch_name = dict(d.platform or ()).get("architecture")
                if arch_name and arch_name not in manifests and layout.has_blob(d.digest):
                    manifests[arch_name] = d
        idx = layout.put_json(oci.index(list(manifests.values()), oci.index_annotations(meta)), INDEX_MT)
        indexes[meta.name] = idx
        for tag in meta.tags:
            refs[f"{meta.name}:{tag}"] = idx
        for img in built:
            # one ref per platform manifest: what single-image tools (umoci, oci-image-tool) open
            refs[f"{meta.name}:{meta.tags[0]}-{img.platform}"] = img.manifest
    layout.set_refs(refs)
    return ReleaseBuild(ctx.release.name, layout.root, epoch, images, indexes, refs, results, layout.written)


def ref_manifests(layout: Layout, ref: str) -> list[tuple[Descriptor, dict]]:
    """The platform manifests a ref names (one for a manifest ref, each arch for an index)."""
    refs = layout.refs()
    if ref not in refs:
        raise BuildError(f"{layout.root}: no ref {ref!r}; refs: {', '.join(sorted(refs))}")
    d = refs[ref]
    if d.media_type == INDEX_MT:
        return [(Descriptor.from_json(m), layout.read_json(m["digest"]))
                for m in layout.read_json(d.digest)["manifests"]]
    return [(d, layout.read_json(d.digest))]


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)

