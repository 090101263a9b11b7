"""A release's images: build every flavour and arch into one OCI layout.

Ties the stages together: lock -> fetch -> build_arch (layers) -> OCI
config, manifests and indexes -> refs in the layout's index.json (last).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from builder.common import compress
from builder.layers.build import BuildOptions, FlavourResult, build_arch
from builder.runs.context import Context, epoch_override
from builder.errors import BuildError
from builder.layers.cache import LayerCache, ScanCache
from builder.layers.writer import LayerInfo
from builder.resolve.lock import Lock, check_lock, fetch_catalogues
from builder.oci import attest, image as oci
from builder.config.release import Release
from builder.oci.layout import CONFIG_MT, INDEX_MT, MANIFEST_MT, Descriptor, Layout, canonical


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
    referrers: tuple[Descriptor, ...] = ()  # SBOM and provenance attached to the manifest

    @property
    def size(self) -> int:
        return sum(l.size for l in self.layers)

    def to_json(self) -> dict:
        return {"image": self.name, "tags": list(self.tags), "arch": self.arch, "platform": self.platform,
                "layers": len(self.layers), "size": self.size, "digest": self.manifest.digest,
                "config": self.config.digest, "version": self.version, "closure": self.closure,
                "referrers": [{"artifactType": r.artifact_type, "digest": r.digest} for r in self.referrers]}


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
    epoch_source: str = "the lock"      # the lock | the environment | --epoch
    revision: Optional[str] = None      # org.opencontainers.image.revision
    revision_in_images: bool = False    # True: a configured value, in every manifest; False: the checkout's commit,
                                        # recorded outside the images (layout and archive index.json) only
    family: str = "default"


def checkout_revision(root: Path) -> Optional[str]:
    """The project's git commit, or None outside a checkout (or without git)."""
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = r.stdout.strip()
    return rev if r.returncode == 0 and len(rev) in (40, 64) and all(c in "0123456789abcdef" for c in rev) else None


def image_revision(ctx: Context) -> tuple[Optional[str], bool]:
    """(revision, whether it goes into the image bytes).

    A revision configured in the release file (publish.revision) is a fact about the release,
    chosen on purpose, so it is written into every manifest and index. The project's git commit
    changes with every commit of this project, a change that alters no file of any image: in the
    images it would change every digest on every commit (nightly would republish everything, the
    golden digests would never hold), so it is recorded only where no digest covers it."""
    if ctx.declared.revision:
        return ctx.declared.revision, True
    return checkout_revision(ctx.project.root), False


def layout_dir(out: Path, release: str) -> Path:
    return Path(out) / release


def build_epoch(lock: Lock, explicit: Optional[int] = None) -> tuple[int, str]:
    """The epoch every time in the images comes from, and where it came from.

    The lock's epoch unless overridden on purpose (--epoch, or SOURCE_DATE_EPOCH set
    in the environment); an override is reported, because it changes every digest.
    """
    if explicit is not None:
        return explicit, "--epoch"
    e = epoch_override()
    if e is not None:
        return e, "the environment"
    return lock.source_date_epoch, "the lock"


def build_release(ctx: Context, lock: Lock, out: Path, flavours: Optional[list[str]] = None,
                  compression: str = "gzip", squash: bool = False, jobs: int = 2,
                  log=lambda msg: print(msg, file=sys.stderr),
                  warn=lambda msg: print(f"warning: {msg}", file=sys.stderr), epoch: Optional[int] = None,
                  workers: int = os.cpu_count() or 1, use_cache: bool = True) -> ReleaseBuild:
    family = ctx.family
    declared = ctx.declared   # URLs as declared, not the mirror's; the family's naming
    revision, in_images = image_revision(ctx)
    epoch, epoch_source = build_epoch(lock, epoch)
    if epoch_source != "the lock":
        log(f"{ctx.release.name}: SOURCE_DATE_EPOCH {epoch} from {epoch_source} overrides the lock's "
            f"{lock.source_date_epoch}: digests differ from a build of the lock as it is")
    opts = BuildOptions(epoch=epoch, compression=compression, squash=squash)
    build_env = oci.build_environment(compression)
    # Names and tags are checked before any byte is written: the version in them is package data.
    for arch in ctx.arches:
        if arch in lock.arches:
            locked = lock.arches[arch].packages.get(declared.version_package)
            for fname in flavours or family.names:
                declared.render_name(fname)
                declared.render_tags(fname, locked.version if locked else declared.name)
    layout = Layout(layout_dir(out, ctx.release.name)).init()

    def sink(write):
        # the writer hashes through the layout's own blob writer: its digest is the blob's name
        return layout.put_stream(write)[0]

    def blob_ok(info: LayerInfo) -> bool:
        # a cache entry is trusted only once the layout's blob is there with exactly its bytes
        return layout.verify_blob(info.digest, info.size)

    cache = LayerCache(ctx.cache.root / "layers", blob_ok) if use_cache else None

    def one(arch: str):
        if arch not in lock.arches:
            raise BuildError(f"{ctx.release.name}: arch {arch} is not in the lock file {ctx.lock_path}")

        checked = []

        def packages(names: list[str]) -> dict:
            # the catalogues are read only now, when something has to be downloaded
            if not checked:
                check_lock(lock, fetch_catalogues(ctx.transport, ctx.release, [arch]))
                checked.append(arch)
            paths = ctx.fetch_locked(lock, arch, names)
            log(f"{ctx.release.name}/{arch}: {len(paths)} packages ready")
            return paths

        res = build_arch(family, declared, arch, lock.arches[arch], packages, opts, sink, flavours, warn=warn,
                         cache=cache, scans_cache=ScanCache(ctx.cache.root / "scans") if use_cache else None,
                         workers=compressors)
        for fname, r in res.items():
            log(f"{ctx.release.name}/{arch}: {fname} layer {r.layers[-1].digest[:19]} "
                f"{'reused from the layer cache' if r.reused else 'built'}")
        return arch, res

    with compress.Workers(workers) if workers > 0 else contextlib.nullcontext() as compressors:
        if jobs <= 1:
            results = dict(map(one, ctx.arches))
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
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
            base_name = None
            if parent:
                p_immutable, _ = declared.render_tags(parent, res.version)
                base_name = declared.published(declared.render_name(parent),
                                               p_immutable[0] if p_immutable else res.version)
            meta = oci.ImageMeta(name=name, flavour=fname, description=res.description, version=res.version,
                                 epoch=epoch, config=res.config, tags=tags, base_name=base_name,
                                 build_env=build_env, revision=revision if in_images else None)
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

    inputs = _input_digests(ctx, declared, lock)
    commit = project_commit(ctx.project.root)
    attached: dict[str, list[Descriptor]] = {}
    for n, img in enumerate(images):
        res = results[img.arch][img.flavour]
        subject = attest.ImageSubject(img.name, img.tags[0] if img.tags else img.version, img.version,
                                      img.platform, img.manifest)
        label_url = dict(res.config.labels).get(oci.ANN + "url") if res.config else None
        doc = attest.sbom(subject, attest.package_records(res.manifests, lock.arches[img.arch], declared), epoch,
                          label_url or attest.NAMESPACE_BASE)
        params = {"release": ctx.release.name, "arch": img.arch, "flavour": img.flavour, "image": img.name,
                  "compression": compression, "squash": squash}
        statement = attest.provenance(subject, params, inputs + _catalogues(declared, lock, img.arch), epoch,
                                      commit, build_env)
        refs_of = [attest.attach(layout, img.manifest, attest.SPDX_MT, attest.SPDX_MT, canonical(doc), epoch),
                   attest.attach(layout, img.manifest, attest.INTOTO_MT, attest.INTOTO_MT, canonical(statement),
                                 epoch)]
        attached[img.manifest.digest] = refs_of
        images[n] = by_key[(img.flavour, img.arch)] = replace(img, referrers=tuple(refs_of))

    existing = layout.refs()
    refs: dict[str, Descriptor] = {}
    indexes: dict[str, Descriptor] = {}
    for fname in names:
        meta = metas[fname]
        built = [by_key[(fname, a)] for a in ctx.arches]
        # Building some arches keeps the other platforms already in the layout's index.
        kept: list[Descriptor] = []
        old = existing.get(f"{meta.name}:{meta.tags[0]}") if meta.tags else None
        if old is not None and old.media_type == INDEX_MT and layout.has_blob(old.digest):
            kept = [d for d in map(Descriptor.from_json, layout.read_json(old.digest).get("manifests", []))
                    if layout.has_blob(d.digest)]
        merged = oci.merge_platforms(kept, [i.manifest for i in built])
        idx = layout.put_json(oci.index(merged, oci.index_annotations(meta)), INDEX_MT)
        indexes[meta.name] = idx
        # the checkout's revision rides on the layout's refs: index.json is covered by no digest
        ref_ann = ((oci.ANN + "revision", revision),) if revision and not in_images else ()
        for tag in meta.tags:
            refs[f"{meta.name}:{tag}"] = replace(idx, annotations=idx.annotations + ref_ann)
        for img in built:
            # one ref per platform manifest: what single-image tools (umoci, oci-image-tool) open
            refs[f"{meta.name}:{meta.tags[0]}-{img.platform}"] = replace(img.manifest, annotations=img.manifest.annotations + ref_ann)
    layout.set_refs(refs, referrers=attached)
    return ReleaseBuild(ctx.release.name, layout.root, epoch, images, indexes, refs, results, layout.written,
                        epoch_source, revision, in_images, family.name)


def project_commit(root: Path) -> str:
    """The git commit of the project checkout, or "unknown" outside one (or without git)."""
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True,
                           text=True, timeout=30, env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")})
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = r.stdout.strip()
    return commit if r.returncode == 0 and len(commit) in (40, 64) else "unknown"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _input_digests(ctx: Context, declared: Release, lock: Lock) -> list[dict]:
    """families.yaml, the release file and the lock, by digest: what a build is a function of."""
    root = Path(ctx.project.root)
    release_file = Path(declared.source)
    try:
        release_name = str(release_file.resolve().relative_to(root.resolve()))
    except ValueError:
        release_name = release_file.name
    return [
        {"name": "families.yaml", "digest": {"sha256": _sha256_file(root / "families.yaml")}},
        {"name": release_name, "digest": {"sha256": _sha256_file(release_file)}},
        # the lock as it is written (write_lock), so that a lock file on disk compares by digest
        {"name": f"{lock.release}.lock.json", "digest": {"sha256": hashlib.sha256(lock.dumps()).hexdigest()}},
    ]


def _catalogues(declared: Release, lock: Lock, arch: str) -> list[dict]:
    al = lock.arches[arch]
    repos = {r.key: r for r in declared.repositories}
    out = []
    for key, digest in sorted(al.catalogues.items()):
        d = {"name": f"catalogue:{key}", "digest": {"sha256": digest.split(":", 1)[-1]}}
        if key in repos:
            d["uri"] = repos[key].url_for(al.abi)
        out.append(d)
    return out


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)

