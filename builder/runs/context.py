"""What a release-level run needs, as three typed values a caller cannot mix up.

- ``RunOptions``: what the user chose (the options every release-level command shares).
- ``Source``: where packages come from: the release re-rooted on a mirror, how to reach it, the download cache.
- ``Target``: what is built: the release as declared (its URLs are written into the images) with the family's
  naming, and the family's flavours for that release's major.

A release exists twice because a mirror changes where bytes are fetched but must never change the bytes
(an image built from a mirror names pkg.FreeBSD.org in its pkg configuration, like one built from there).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from builder.common.http import Transport
from builder.config.family import DEFAULT_FAMILY, Family
from builder.config.project import Project, load_project
from builder.config.release import Release, env_keys, env_mirror
from builder.resolve.cache import Cache
from builder.resolve.fetch import ensure_lock, fetch_locked
from builder.resolve.lock import Lock


@dataclass(frozen=True)
class RunOptions:
    """Where a run reads from and writes to: the command-line options every release-level command shares."""
    project: Optional[Path] = None
    arches: tuple[str, ...] = ()
    mirror: Optional[str] = None
    keys: Optional[Path] = None
    lock: Optional[Path] = None
    lock_dir: Optional[Path] = None
    cache_dir: Optional[Path] = None
    family: Optional[str] = None       # None: the default family (families.yaml)


@dataclass(frozen=True)
class Source:
    """Where a release's packages come from: never what goes into an image."""
    release: Release                   # re-rooted on the mirror when one is given
    transport: Transport
    cache: Cache
    mirror: Optional[str] = None
    keys: Optional[Path] = None


@dataclass(frozen=True)
class Target:
    """What a run builds: the release as declared, named as the family names it, and the family's flavours."""
    release: Release
    family: Family


def lock_name(release: str, family: str) -> str:
    """<release>.lock.json for the default family, <release>.<family>.lock.json for another."""
    return f"{release}.lock.json" if family == DEFAULT_FAMILY else f"{release}.{family}.lock.json"


@dataclass(frozen=True)
class Context:
    project: Project
    source: Source
    target: Target
    arches: tuple[str, ...]
    lock_path: Path

    @property
    def name(self) -> str:
        return self.target.release.name

    @property
    def family(self) -> Family:
        return self.target.family

    @classmethod
    def open(cls, opts: RunOptions, release_name: str, project: Optional[Project] = None) -> "Context":
        project = project or load_project(opts.project)
        declared, family = project.view(release_name, opts.family)
        mirror = opts.mirror or env_mirror()
        keys = opts.keys or env_keys()
        keys = Path(keys).resolve() if keys else None
        fetched = declared.with_mirror(mirror, keys) if mirror or keys else declared
        arches = tuple(fetched.arch(a).name for a in opts.arches) if opts.arches else tuple(a.name for a in fetched.arches)
        lock = opts.lock or ((opts.lock_dir or project.root / "releases") / lock_name(declared.name, family.name))
        return cls(project=project,
                   source=Source(release=fetched, transport=Transport(), cache=Cache(opts.cache_dir), mirror=mirror,
                                 keys=keys),
                   target=Target(release=declared, family=family), arches=arches, lock_path=Path(lock))

    def ensure_lock(self, update: bool = False, warn: Callable[[str], None] = lambda m: None,
                    allow_downgrade: bool = False, check: bool = True) -> Lock:
        return ensure_lock(self.source.transport, self.source.release, self.family, list(self.arches), self.lock_path,
                           update, warn, allow_downgrade, check)

    def fetch_locked(self, lock: Lock, arch: str, names: Optional[list[str]] = None) -> dict[str, Path]:
        return fetch_locked(self.source.transport, self.source.cache, self.source.release, lock, arch, names)

