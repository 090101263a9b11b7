"""`mirror`: a release's catalogues and locked packages copied into a local repository tree."""
from __future__ import annotations

import shutil
from pathlib import Path

from builder.common.atomic import atomic_output, atomic_write_bytes
from builder.common.http import NotFound
from builder.errors import BuildError
from builder.resolve.catalogue import check_repopath
from builder.resolve.client import catalogue_file_limit
from builder.resolve.lock import Lock
from builder.runs.context import Context

CATALOGUE_FILES = ("meta.conf", "meta", "data.pkg", "packagesite.pkg")
REQUIRED = ("meta.conf", "data.pkg")


def mirror_release(ctx: Context, lock: Lock, dest: Path) -> dict[str, int]:
    """ABI -> packages mirrored under dest/ABI/<repository directory>/."""
    done: dict[str, int] = {}
    for arch in ctx.arches:
        abi = ctx.source.release.abi(arch)
        paths = ctx.fetch_locked(lock, arch)
        for repo in ctx.source.release.repositories:
            base = repo.url_for(abi).rstrip("/")
            where = Path(dest) / abi / base.rsplit("/", 1)[1]
            where.mkdir(parents=True, exist_ok=True)
            for name in CATALOGUE_FILES:
                try:
                    atomic_write_bytes(where / name, ctx.source.transport.fetch_bytes(f"{base}/{name}", catalogue_file_limit(name)))
                except NotFound:
                    # only absence makes a file optional: a refusal (too large, too slow) is not absence
                    if name in REQUIRED:
                        raise
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
