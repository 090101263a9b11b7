"""What a release-level command needs, built once from the command line."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from builder.config.release import Release, env_mirror
from builder.project import Project, load_project
from builder.repo.cache import Cache
from builder.repo.transport import Transport


def add_release_options(p, release_positional: bool = True) -> None:
    if release_positional:
        p.add_argument("release", help="release name, e.g. 14.2")
    p.add_argument("--arch", action="append", help="only this arch, FreeBSD or OCI name (repeatable)")
    p.add_argument("--mirror", default=None, help="re-root repository URLs on this mirror (or $FREEBSD_IMAGES_MIRROR)")
    p.add_argument("--keys", type=Path, default=None, help="trust this key directory instead (trusted/, revoked/, repo.pub)")
    p.add_argument("--lock", type=Path, default=None, help="lock file (default <lock-dir>/<release>.lock.json)")
    p.add_argument("--lock-dir", type=Path, default=None, help="directory of lock files (default the project's releases/)")
    p.add_argument("--cache-dir", type=Path, default=None, help="download cache (default $XDG_CACHE_HOME/freebsd-images)")


@dataclass
class Context:
    project: Project
    release: Release
    arches: list[str]
    transport: Transport
    cache: Cache
    lock_path: Path
    mirror: Optional[str] = None
    keys: Optional[Path] = None

    @classmethod
    def from_args(cls, args, release_name: Optional[str] = None) -> "Context":
        project = load_project(args.project)
        rel = project.release(release_name or args.release)
        mirror = args.mirror or env_mirror()
        keys = args.keys.resolve() if args.keys else None
        if mirror or keys:
            rel = rel.with_mirror(mirror, keys)
        arches = [rel.arch(a).name for a in args.arch] if args.arch else [a.name for a in rel.arches]
        lock_dir = getattr(args, "lock_dir", None) or (project.root / "releases")
        lock = args.lock or (lock_dir / f"{rel.name}.lock.json")
        return cls(project, rel, arches, Transport(), Cache(args.cache_dir), lock, mirror, keys)


def epoch_override() -> Optional[int]:
    v = os.environ.get("SOURCE_DATE_EPOCH")
    return int(v) if v and v.isdigit() else None
