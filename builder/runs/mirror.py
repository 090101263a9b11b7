"""`mirror`: a release's catalogues and locked packages copied into a local repository tree; or, `--from REF`,
the packages a published image's recipe locks, so that `reproduce` works after the repositories moved on."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

from builder.common.atomic import atomic_output, atomic_write_bytes
from builder.common.http import NotFound
from builder.errors import BuildError
from builder.resolve.catalogue import check_repopath
from builder.resolve.client import catalogue_file_limit
from builder.resolve.lock import Lock
from builder.common.log import Log
from builder.prove.diff import open_source
from builder.runs.context import Context
from builder.runs.recipe import open_recipe
from builder.runs.reproduce import platforms, read_recipe

CATALOGUE_FILES = ("meta.conf", "meta", "data.pkg", "packagesite.pkg")
REQUIRED = ("meta.conf", "data.pkg")


def mirror_release(ctx: Context, lock: Lock, dest: Path, catalogues: bool = True) -> dict[str, int]:
    """ABI -> packages mirrored under dest/ABI/<repository directory>/; with ``catalogues`` the
    repositories' catalogue files too (without them, a mirror serves packages by their locked sums
    alone: what `reproduce` reads)."""
    done: dict[str, int] = {}
    for arch in ctx.arches:
        abi = ctx.source.release.abi(arch)
        paths = ctx.fetch_locked(lock, arch)
        for repo in ctx.source.release.repositories:
            base = repo.url_for(abi).rstrip("/")
            where = Path(dest) / abi / base.rsplit("/", 1)[1]
            where.mkdir(parents=True, exist_ok=True)
            if catalogues:
                _copy_catalogues(ctx, base, where)
            for n, p in lock.arches[arch].packages.items():
                if p.repository == repo.key:
                    # the lock file may have been edited by hand since the catalogue was checked
                    check_repopath(p.path, f"{abi}: package {n}")
                    target = (where / p.path).resolve()
                    if where.resolve() not in target.parents:
                        raise BuildError(f"{abi}: package {n}: {p.path} resolves to {target}, outside {where}")
                    with open(paths[n], "rb") as src, atomic_output(target) as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        done[abi] = len(paths)
    return done


def _copy_catalogues(ctx: Context, base: str, where: Path) -> None:
    for name in CATALOGUE_FILES:
        try:
            atomic_write_bytes(where / name, ctx.source.transport.fetch_bytes(f"{base}/{name}", catalogue_file_limit(name)))
        except NotFound:
            # only absence makes a file optional: a refusal (too large, too slow) is not absence
            if name in REQUIRED:
                raise


def mirror_image(ref: str, dest: Path, mirror: Optional[str] = None, insecure: bool = False,
                 cache_dir: Optional[Path] = None, log: Log = Log()) -> dict[str, int]:
    """An air-gapped mirror of exactly the packages a published image's recipes lock (every platform of REF),
    fetched from the recipes' release repositories or ``mirror`` and checked against their sums."""
    src = open_source(ref, insecure, referrers=True)
    done: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="freebsd-images-mirror.") as tmp:
            for n, (_, plat, digest) in enumerate(platforms(src, ref)):
                recipe = read_recipe(src.layout, digest, f"{ref} [{plat}]")
                ctx, lock = open_recipe(recipe, Path(tmp) / str(n), mirror, cache_dir)
                for abi, count in mirror_release(ctx, lock, dest, catalogues=False).items():
                    done[abi] = max(done.get(abi, 0), count)
                    log.info(f"{ref} [{plat}]: {count} packages of {recipe.release}/{recipe.arch} in {Path(dest) / abi}")
    finally:
        src.close()
    return done
