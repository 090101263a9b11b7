"""What a release-level run needs: the project, one release (re-rooted on a mirror), transport, cache, lock path."""
from __future__ import annotations

import os
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
class Where:
    """Where a run reads from and writes to: the command-line options every release-level command shares."""
    project: Optional[Path] = None
    arches: tuple[str, ...] = ()
    mirror: Optional[str] = None
    keys: Optional[Path] = None
    lock: Optional[Path] = None
    lock_dir: Optional[Path] = None
    cache_dir: Optional[Path] = None
    family: Optional[str] = None       # None: the default family (families.yaml)


def lock_name(release: str, family: str) -> str:
    """<release>.lock.json for the default family, <release>.<family>.lock.json for another."""
    return f"{release}.lock.json" if family == DEFAULT_FAMILY else f"{release}.{family}.lock.json"


@dataclass
class Context:
    project: Project
    release: Release          # re-rooted on the mirror when one is given
    arches: list[str]
    transport: Transport
    cache: Cache
    lock_path: Path
    mirror: Optional[str] = None
    keys: Optional[Path] = None
    family: Optional[Family] = None     # the selected family, its flavours those of this release's major
    declared: Optional[Release] = None  # the release as declared (URLs written into images), with the family's naming

    def __post_init__(self):
        if self.family is None:
            self.family = self.project.family.for_release(self.release.major)
        if self.declared is None:
            self.declared = self.project.release(self.release.name).for_family(self.family)

    @classmethod
    def open(cls, where: Where, release_name: str, project: Optional[Project] = None) -> "Context":
        project = project or load_project(where.project)
        declared, family = project.view(release_name, where.family)
        rel = declared
        mirror = where.mirror or env_mirror()
        keys = where.keys or env_keys()
        keys = Path(keys).resolve() if keys else None
        if mirror or keys:
            rel = rel.with_mirror(mirror, keys)
        arches = [rel.arch(a).name for a in where.arches] if where.arches else [a.name for a in rel.arches]
        lock = where.lock or ((where.lock_dir or project.root / "releases") / lock_name(rel.name, family.name))
        return cls(project, rel, arches, Transport(), Cache(where.cache_dir), Path(lock), mirror, keys, family,
                   declared)

    def ensure_lock(self, update: bool = False, warn: Callable[[str], None] = lambda m: None,
                    allow_downgrade: bool = False, check: bool = True) -> Lock:
        return ensure_lock(self.transport, self.release, self.family, self.arches, self.lock_path,
                           update, warn, allow_downgrade, check)

    def fetch_locked(self, lock: Lock, arch: str, names: Optional[list[str]] = None) -> dict[str, Path]:
        return fetch_locked(self.transport, self.cache, self.release, lock, arch, names)


def epoch_override() -> Optional[int]:
    v = os.environ.get("SOURCE_DATE_EPOCH")
    return int(v) if v and v.isdigit() else None
