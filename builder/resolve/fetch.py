"""Locks made or checked against the catalogues, and the locked packages fetched into the cache."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from builder.common.http import Transport
from builder.config.family import Family
from builder.config.release import Release
from builder.resolve.cache import Cache
from builder.resolve.catalogue import RemotePackage
from builder.resolve.client import fetch_package
from builder.resolve.lock import Lock, check_lock, fetch_catalogues, load_lock, relock, write_lock


def fetch_locked(transport: Transport, cache: Cache, release: Release, lock: Lock, arch: str,
                 names: Optional[list[str]] = None, jobs: int = 4) -> dict[str, Path]:
    """Download (or take from the cache) the locked packages of one arch; name -> verified file."""
    al = lock.arches[arch]
    wanted = [al.packages[n] for n in (names or sorted(al.packages))]

    def one(p):
        rp = RemotePackage(name=p.name, origin=p.origin, version=p.version, abi=al.abi, arch="", repopath=p.path,
                           sum=p.sum, pkgsize=p.size, flatsize=0, deps=(), shlibs_required=(), shlibs_provided=(),
                           annotations=(), raw={}, repository=p.repository)
        return p.name, fetch_package(transport, cache, release.repository(p.repository), al.abi, rp)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(one, wanted))


def ensure_lock(transport: Transport, release: Release, family: Family, arches: list[str], lock_path: Path,
                update: bool = False, warn: Callable[[str], None] = lambda m: None,
                allow_downgrade: bool = False, check: bool = True) -> Lock:
    """The release's lock: used when present and still valid, else made (and written) — never rolled back.

    ``check=False`` takes an existing lock as it is: the caller checks it against the
    catalogues (``check_lock``) only if it comes to download, so a build whose layers are
    all cached reads neither catalogue nor package.
    """
    previous = load_lock(lock_path)
    if previous is not None and not update and not check:
        return previous
    cats = fetch_catalogues(transport, release, arches)
    if previous is not None and not update:
        check_lock(previous, cats)
        return previous
    lock, _ = relock(release, family, cats, previous, allow_downgrade, warn)
    write_lock(lock_path, lock)
    return lock
