"""`reproduce REF`: rebuild a published image from the recipe attached to it, and compare.

Per platform manifest of REF (an index: every platform; a manifest: that one): read its build recipe
(oci/recipe.py), refuse one made by another format version, lay its project files and lock out in a
scratch directory (never the checkout's files), fetch the locked packages by their sums from the
release's repositories or a mirror, build that flavour and arch there with the recipe's epoch,
compression and squash, and compare digests; where they differ, explain how (prove/diff.py).

Nothing of the rebuild comes from a cache that could hide a difference: the layer and scan caches
are off and downloads go to a scratch cache unless one is named (packages are checked against their
locked sums either way).
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from builder.common.log import Log
from builder.errors import BuildError
from builder.oci.layout import INDEX_MT, Layout, platform_label
from builder.oci.recipe import MAX_RECIPE, RECIPE_MT, Recipe, parse_recipe
from builder.prove.diff import Difference, Source, compare_manifest, open_source
from builder.runs.images import ImageOptions, build_release
from builder.runs.recipe import check_format, open_recipe


@dataclass(frozen=True)
class ReproduceOptions:
    mirror: Optional[str] = None           # None: the repositories of the recipe's release file
    insecure: bool = False                 # plain HTTP to a docker:// REF's registry
    keep: Optional[Path] = None            # keep the scratch projects and rebuilds here
    cache_dir: Optional[Path] = None       # download cache (default: a scratch one)
    allow_writer_drift: bool = False


@dataclass(frozen=True)
class Outcome:
    image: str
    platform: str
    published: str                          # the platform manifest's digest in REF
    rebuilt: str                            # the rebuild's
    differences: tuple[Difference, ...] = ()

    @property
    def identical(self) -> bool:
        return self.published == self.rebuilt


def reproduce(ref: str, opts: ReproduceOptions = ReproduceOptions(), log: Log = Log()) -> list[Outcome]:
    src = open_source(ref, opts.insecure, referrers=True)
    work = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="freebsd-images-reproduce."))
    try:
        out = []
        for n, (image, plat, digest) in enumerate(platforms(src, ref)):
            where = f"{ref} [{plat}]"
            recipe = read_recipe(src.layout, digest, where)
            check_format(recipe, where)
            log.info(f"{where}: rebuilding {recipe.release}/{recipe.arch} flavour {recipe.flavour} "
                     f"({recipe.family} family) from its recipe")
            layout, rebuilt = rebuild(recipe, work / f"{n}-{re.sub('[^A-Za-z0-9]+', '-', plat)}", opts, log)
            diffs = () if rebuilt == digest else tuple(compare_manifest(image, plat, src.layout, layout, digest, rebuilt))
            out.append(Outcome(image, plat, digest, rebuilt, diffs))
        return out
    finally:
        src.close()
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)


def platforms(src: Source, ref: str) -> list[tuple[str, str, str]]:
    """(image, platform, digest) of every platform manifest REF names."""
    refs = src.refs()
    if len(refs) != 1:
        raise BuildError(f"{ref}: names {len(refs)} images; name one (DIR:NAME:TAG, docker://HOST/REPO:TAG)")
    name, desc = next(iter(refs.items()))
    if desc.media_type != INDEX_MT:
        return [(name or ref, platform_label({"platform": dict(desc.platform or ())}), desc.digest)]
    out = [(name or ref, platform_label(m), m["digest"]) for m in src.layout.read_index(desc.digest)["manifests"]]
    if not out:
        raise BuildError(f"{ref}: an index without platform manifests")
    return out


def read_recipe(layout: Layout, digest: str, where: str) -> Recipe:
    found = [d for d in layout.referrers().get(digest, []) if d.artifact_type == RECIPE_MT]
    if not found:
        raise BuildError(f"{where}: no build recipe ({RECIPE_MT}) is attached: the image was made by another tool, "
                         "by freebsd-images before recipes existed, or copied without its referrers "
                         "(release archives carry none: reproduce the layout or the registry image)")
    if len(found) > 1:
        raise BuildError(f"{where}: {len(found)} build recipes are attached; refusing to pick one")
    man = layout.read_json(found[0].digest)
    layers = man.get("layers") if isinstance(man, dict) else None
    if not (isinstance(layers, list) and len(layers) == 1 and isinstance(layers[0], dict)
            and layers[0].get("mediaType") == RECIPE_MT and isinstance(layers[0].get("size"), int)):
        raise BuildError(f"{where}: the recipe's artifact manifest {found[0].digest} does not hold one recipe")
    if layers[0]["size"] > MAX_RECIPE:
        raise BuildError(f"{where}: recipe of {layers[0]['size']} bytes, over {MAX_RECIPE}; refusing")
    return parse_recipe(layout.read_blob(layers[0]["digest"]), where)


def rebuild(recipe: Recipe, work: Path, opts: ReproduceOptions, log: Log) -> tuple[Layout, str]:
    """The recipe's image built again under work/: (its layout, the platform manifest's digest)."""
    ctx, lock = open_recipe(recipe, work / "project", opts.mirror, opts.cache_dir or work / "cache")
    image_opts = ImageOptions(flavours=(recipe.flavour,), compression=recipe.compression, squash=recipe.squash,
                              epoch=recipe.epoch, jobs=1, use_cache=False, check_catalogues=False,
                              allow_writer_drift=opts.allow_writer_drift)
    rb = build_release(ctx, lock, work / "out", image_opts, log)
    img = next(i for i in rb.images if i.flavour == recipe.flavour and i.arch == recipe.arch)
    return Layout(rb.layout), img.manifest.digest
