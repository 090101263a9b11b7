"""A release's images: build every flavour and arch into one OCI layout.

Ties the stages together in named steps: layers (fetch, build_arch per arch) -> images (OCI
config and manifest per flavour and arch) -> attestations (SBOM, provenance) -> indexes and the
refs in the layout's index.json (last, so a failed build leaves the old refs).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from builder.common import compress, writers
from builder.common.epoch import source_date_epoch
from builder.common.hashing import file_digest
from builder.common.log import Log
from builder.common.sealed import user_key
from builder.config.release import Release
from builder.errors import BuildError
from builder.layers.build import FlavourResult, build_arch
from builder.layers.cache import LayerCache, ScanCache
from builder.layers.plan import LayerOptions
from builder.layers.writer import LayerInfo
from builder.oci import attest, image as oci
from builder.oci.layout import CONFIG_MT, INDEX_MT, MANIFEST_MT, Descriptor, Layout, canonical
from builder.oci.recipe import RECIPE_MT
from builder.oci.release import BuiltImage, ReleaseBuild
from builder.resolve.lock import Lock, check_lock, fetch_catalogues
from builder.runs.context import Context
from builder.runs.recipe import Recipes


@dataclass(frozen=True)
class ImageOptions:
    """How a release's images are built: the choices that shape bytes, then those that only shape speed."""
    flavours: tuple[str, ...] = ()      # empty: every flavour
    compression: str = "gzip"           # gzip | zstd
    squash: bool = False                # one layer per image instead of one per flavour
    epoch: Optional[int] = None         # None: the lock's (or SOURCE_DATE_EPOCH's); else this one, on purpose
    jobs: int = 2                       # arches built in parallel
    workers: int = os.cpu_count() or 1  # compression processes (0: in the builder's own process)
    use_cache: bool = True              # the layer and scan caches (they never change the bytes)
    allow_writer_drift: bool = False    # build with other writers than the pinned ones (warned, recorded)
    check_catalogues: bool = True       # False: packages are taken by their locked sums alone (reproduce)


def git_commit(root: Path) -> Optional[str]:
    """The project checkout's git commit, or None outside one (or without git).

    GIT_* variables are dropped: a hook or CI step that sets GIT_DIR would otherwise name another
    repository's commit."""
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True,
                           text=True, timeout=30, env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")})
    except (OSError, subprocess.SubprocessError):
        return None
    rev = r.stdout.strip()
    return rev if r.returncode == 0 and len(rev) in (40, 64) and all(c in "0123456789abcdef" for c in rev) else None


def image_revision(ctx: Context, commit: Optional[str]) -> tuple[Optional[str], bool]:
    """(revision, whether it goes into the image bytes).

    A revision configured in the release file (publish.revision) is a fact about the release,
    chosen on purpose, so it is written into every manifest and index. The project's git commit
    changes with every commit of this project, a change that alters no file of any image: in the
    images it would change every digest on every commit (nightly would republish everything, the
    golden digests would never hold), so it is recorded only where no digest covers it."""
    if ctx.target.release.revision:
        return ctx.target.release.revision, True
    return commit, False


def layout_dir(out: Path, release: str) -> Path:
    return Path(out) / release


def build_epoch(lock: Lock, explicit: Optional[int] = None) -> tuple[int, str]:
    """The epoch every time in the images comes from, and where it came from.

    The lock's epoch unless overridden on purpose (--epoch, or SOURCE_DATE_EPOCH set
    in the environment); an override is reported, because it changes every digest.
    """
    if explicit is not None:
        return explicit, "--epoch"
    e = source_date_epoch()
    if e is not None:
        return e, "the environment"
    return lock.source_date_epoch, "the lock"


@dataclass(frozen=True)
class _Run:
    """One build_release call's fixed facts, shared by its steps."""
    ctx: Context
    lock: Lock
    layout: Layout
    opts: ImageOptions
    epoch: int
    build_env: str
    log: Log
    commit: Optional[str]     # the project checkout's, asked of git once per build


def build_release(ctx: Context, lock: Lock, out: Path, opts: ImageOptions = ImageOptions(),
                  log: Log = Log()) -> ReleaseBuild:
    """A release's images into OUT/<release>/, in named steps: layers, images, attestations, indexes."""
    drift = check_writers(opts.allow_writer_drift, log)
    epoch, epoch_source = build_epoch(lock, opts.epoch)
    if epoch != lock.source_date_epoch:
        log.info(f"{ctx.name}: SOURCE_DATE_EPOCH {epoch} from {epoch_source} overrides the lock's "
                 f"{lock.source_date_epoch}: digests differ from a build of the lock as it is")
    check_names(ctx, lock, opts)
    run = _Run(ctx, lock, Layout(layout_dir(out, ctx.name)).init(), opts, epoch,
               oci.build_environment(opts.compression, drift), log, git_commit(ctx.project.root))
    revision, in_images = image_revision(ctx, run.commit)
    results = build_layers(run)
    images, metas = write_images(run, results, revision if in_images else None)
    images = attach_attestations(run, results, images)
    indexes, refs = write_indexes(run, images, metas, revision if not in_images else None)
    return ReleaseBuild(ctx.name, run.layout.root, epoch, tuple(images), indexes, refs, run.layout.written,
                        epoch_source, revision, in_images, ctx.family.name, drift)


def check_writers(allow: bool, log: Log) -> tuple[str, ...]:
    """The writers that shape the bytes are the pinned ones, or the build stops before it writes one.

    With ``allow`` it goes on, warns, and the drift is recorded in every image's build environment."""
    drift = tuple(writers.drift(writers.running()))
    if drift and not allow:
        raise BuildError("the writers running are not the pinned ones, so the images would not have the bytes "
                         "anyone else gets from the same inputs:\n  " + "\n  ".join(drift)
                         + f"\n  install the pinned ones: {writers.fix_command()}\n  or build anyway with "
                           "--allow-writer-drift (recorded in the images and the nightly report)")
    for d in drift:
        log.warn(f"building with another writer than the pinned one (--allow-writer-drift): {d}")
    return drift


def check_names(ctx: Context, lock: Lock, opts: ImageOptions) -> None:
    """Names and tags are checked before any byte is written: the version in them is package data."""
    declared = ctx.target.release
    for arch in ctx.arches:
        if arch in lock.arches:
            locked = lock.arches[arch].packages.get(declared.version_package)
            for fname in opts.flavours or ctx.family.names:
                declared.render_name(fname)
                declared.render_tags(fname, locked.version if locked else declared.name)


def build_layers(run: _Run) -> dict[str, dict[str, FlavourResult]]:
    """Step 1: every arch's layers into the layout (arches in parallel): arch -> flavour -> result."""
    ctx, lock, layout = run.ctx, run.lock, run.layout

    def blob_ok(info: LayerInfo) -> bool:
        # a cache entry is trusted only once the layout's blob is there with exactly its bytes
        return layout.verify_blob(info.digest, info.size)

    key = user_key() if run.opts.use_cache else b""
    cache = LayerCache(ctx.source.cache.root / "layers", blob_ok, key) if run.opts.use_cache else None
    scans = ScanCache(ctx.source.cache.root / "scans", key) if run.opts.use_cache else None
    layer_opts = LayerOptions(epoch=run.epoch, compression=run.opts.compression, squash=run.opts.squash)

    def one(arch: str):
        if arch not in lock.arches:
            raise BuildError(f"{ctx.name}: arch {arch} is not in the lock file {ctx.lock_path}")
        # what a user reads says the platform as the image's refs and tables do (arm64, not aarch64)
        label = f"{ctx.name}/{ctx.target.release.arch(arch).platform}"

        def progress(fname: str, r: Optional[FlavourResult], seconds: float) -> None:
            # each layer's line as soon as it is done: a large image is minutes of silence otherwise
            if r is None:
                run.log.status(f"{label}: building {fname} ...")
            else:
                run.log.info(f"{label}: {fname} layer {r.layers[-1].digest[:19]} "
                             + ("reused from the layer cache" if r.reused else
                                f"built ({human_size(r.layers[-1].size)}, {seconds:.1f} s)"))

        res = build_arch(ctx.family, ctx.target.release, arch, lock.arches[arch],
                         _fetcher(ctx, lock, arch, run.log, run.opts.check_catalogues), layer_opts,
                         lambda write: layout.put_stream(write)[0], list(run.opts.flavours), warn=run.log.warn,
                         cache=cache, scans_cache=scans, workers=compressors, progress=progress)
        return arch, res

    try:
        with compress.Workers(run.opts.workers) if run.opts.workers > 0 else contextlib.nullcontext() as compressors:
            if run.opts.jobs <= 1:
                return dict(map(one, ctx.arches))
            with ThreadPoolExecutor(max_workers=run.opts.jobs) as pool:
                return dict(pool.map(one, ctx.arches))
    finally:
        run.log.done()


def _fetcher(ctx: Context, lock: Lock, arch: str, log: Log, check_catalogues: bool = True):
    """The named locked packages of one arch, downloaded (or found in the cache) and checked against their
    locked sums; first the lock against the catalogues, unless the packages are wanted by sum alone (a
    reproduction of a published image, whose packages the catalogues may have dropped since)."""
    checked = [] if check_catalogues else [arch]
    label = f"{ctx.name}/{ctx.target.release.arch(arch).platform}"

    def packages(names: list[str]) -> dict:
        # the catalogues are read only now, when something has to be downloaded
        if not checked:
            check_lock(lock, fetch_catalogues(ctx.source.transport, ctx.source.release, [arch]))
            checked.append(arch)
        log.status(f"{label}: fetching {len(names)} packages ...")
        start = time.monotonic()
        paths = ctx.fetch_locked(lock, arch, names)
        size, took = sum(lock.arches[arch].packages[n].size for n in paths), time.monotonic() - start
        log.info(f"{label}: {len(paths)} packages ready ({human_size(size)} checked in {took:.1f} s, "
                 f"{human_size(int(size / max(took, 1e-3)))}/s)")
        return paths
    return packages


def write_images(run: _Run, results: dict[str, dict[str, FlavourResult]],
                 revision: Optional[str]) -> tuple[list[BuiltImage], dict[str, oci.ImageMeta]]:
    """Step 2: each (flavour, arch)'s image config and manifest, parents first (a child names its base);
    and what names and describes each image (the same for every arch)."""
    declared, layout = run.ctx.target.release, run.layout
    images: dict[tuple[str, str], BuiltImage] = {}
    metas: dict[str, oci.ImageMeta] = {}
    for fname in [f for f in run.ctx.family.names if any(f in r for r in results.values())]:
        for arch in run.ctx.arches:
            res = results[arch][fname]
            a = declared.arch(arch)
            meta = metas[fname] = image_meta(run, fname, res, revision)
            cfg = layout.put_json(oci.image_config(meta, a, [l.diff_id for l in res.layers], res.history), CONFIG_MT)
            layers = [Descriptor(l.media_type, l.digest, l.size) for l in res.layers]
            base_digest = images[(res.parent, arch)].manifest.digest if res.parent else None
            man = layout.put_json(oci.manifest(cfg, layers, oci.annotations(meta, base_digest)), MANIFEST_MT,
                                  platform=oci.platform(a))
            images[(fname, arch)] = BuiltImage(meta.name, fname, arch, a.platform, man, cfg, tuple(res.layers),
                                               res.version, meta.tags, tuple(sorted(res.versions.items())),
                                               res.closure.to_json() if res.closure else None)
    return list(images.values()), metas


def image_meta(run: _Run, fname: str, res: FlavourResult, revision: Optional[str]) -> oci.ImageMeta:
    """What an image's config and annotations say of it: name, tags, its base image's name."""
    declared = run.ctx.target.release
    immutable, moving = declared.render_tags(fname, res.version)
    base_name = None
    if res.parent:
        p_immutable, _ = declared.render_tags(res.parent, res.version)
        base_name = declared.published(declared.render_name(res.parent),
                                       p_immutable[0] if p_immutable else res.version)
    return oci.ImageMeta(name=declared.render_name(fname), flavour=fname, description=res.description,
                         version=res.version, epoch=run.epoch, config=res.config,
                         tags=tuple(dict.fromkeys(immutable + moving)), base_name=base_name,
                         build_env=run.build_env, revision=revision)


def attach_attestations(run: _Run, results: dict[str, dict[str, FlavourResult]],
                        images: list[BuiltImage]) -> list[BuiltImage]:
    """Step 3: each platform manifest's SBOM, provenance and build recipe, attached as unnamed referrers."""
    ctx, lock, declared = run.ctx, run.lock, run.ctx.target.release
    inputs = _input_digests(ctx, lock)
    recipes = Recipes(ctx)
    commit = run.commit or "unknown"
    out = []
    for img in images:
        res = results[img.arch][img.flavour]
        subject = attest.ImageSubject(img.name, img.tags[0] if img.tags else img.version, img.version,
                                      img.platform, img.manifest)
        label_url = dict(res.config.labels).get(oci.ANN + "url") if res.config else None
        doc = attest.sbom(subject, attest.package_records(res.manifests, lock.arches[img.arch], declared), run.epoch,
                          label_url or attest.NAMESPACE_BASE)
        params = {"release": ctx.name, "arch": img.arch, "flavour": img.flavour, "image": img.name,
                  "compression": run.opts.compression, "squash": run.opts.squash}
        recipe = canonical(recipes.recipe(lock, img.arch, img.flavour, run.epoch, run.opts.compression,
                                          run.opts.squash).to_json())
        made_from = [{"name": "recipe", "mediaType": RECIPE_MT,
                      "digest": {"sha256": Layout.digest_of(recipe).split(":", 1)[1]}}]
        statement = attest.provenance(subject, params, [_family_digest(ctx, recipes, img.flavour)] + inputs
                                      + _catalogues(declared, lock, img.arch) + made_from,
                                      run.epoch, commit, run.build_env)
        refs = (attest.attach(run.layout, img.manifest, attest.SPDX_MT, attest.SPDX_MT, canonical(doc), run.epoch),
                attest.attach(run.layout, img.manifest, attest.INTOTO_MT, attest.INTOTO_MT, canonical(statement),
                              run.epoch),
                attest.attach(run.layout, img.manifest, RECIPE_MT, RECIPE_MT, recipe, run.epoch))
        out.append(replace(img, referrers=refs))
    return out


def write_indexes(run: _Run, images: list[BuiltImage], metas: dict[str, oci.ImageMeta],
                  ref_revision: Optional[str]) -> tuple[dict[str, Descriptor], dict[str, Descriptor]]:
    """Step 4: a multi-arch index per image, then every ref (and the referrers) in index.json, last."""
    layout = run.layout
    existing = layout.refs()
    refs: dict[str, Descriptor] = {}
    indexes: dict[str, Descriptor] = {}
    # the checkout's revision rides on the layout's refs: index.json is covered by no digest
    ref_ann = ((oci.ANN + "revision", ref_revision),) if ref_revision else ()
    # per flavour, as its meta names it: two flavours may share an image name (with other tags)
    for fname, meta in metas.items():
        built = [i for i in images if i.flavour == fname]
        name, tags = meta.name, meta.tags
        # Building some arches keeps the other platforms already in the layout's index.
        kept: list[Descriptor] = []
        old = existing.get(f"{name}:{tags[0]}") if tags else None
        if old is not None and old.media_type == INDEX_MT and layout.has_blob(old.digest):
            kept = [d for d in map(Descriptor.from_json, layout.read_json(old.digest).get("manifests", []))
                    if layout.has_blob(d.digest)]
        merged = oci.merge_platforms(kept, [i.manifest for i in built])
        idx = layout.put_json(oci.index(merged, oci.index_annotations(meta)), INDEX_MT)
        indexes[name] = idx
        for tag in tags:
            refs[f"{name}:{tag}"] = replace(idx, annotations=idx.annotations + ref_ann)
        for img in built:
            # one ref per platform manifest: what single-image tools (umoci, oci-image-tool) open
            refs[f"{name}:{tags[0]}-{img.platform}"] = replace(img.manifest, annotations=img.manifest.annotations + ref_ann)
    layout.set_refs(refs, referrers={i.manifest.digest: list(i.referrers) for i in images})
    return indexes, refs


def _project_name(ctx: Context, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(ctx.project.root).resolve()))
    except ValueError:
        return Path(path).name


def _family_digest(ctx: Context, recipes: Recipes, flavour: str) -> dict:
    """The family file cut to the image's flavour chain, by digest (the recipe carries it): an image's
    provenance changes with the flavours it is made of, not with every flavour of the family."""
    data = recipes.chain_file(ctx.family, ctx.family.chain(flavour))
    return {"name": f"{_project_name(ctx, Path(ctx.family.source))}#{flavour}",
            "digest": {"sha256": hashlib.sha256(data).hexdigest()}}


def _input_digests(ctx: Context, lock: Lock) -> list[dict]:
    """The release file and the lock, by digest: with the family's flavours, what a build is a function of."""
    release_file = Path(ctx.target.release.source)
    return [
        {"name": _project_name(ctx, release_file), "digest": {"sha256": file_digest(release_file)}},
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

