"""The project's declarative inputs, loaded and cross-checked together."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from builder.config.family import Family, load_family
from builder.config.release import Release, find_release, load_release, release_files
from builder.common.templates import confined
from builder.errors import BuildError, ConfigError, Diagnostic


@dataclass(frozen=True)
class Project:
    root: Path
    family: Family
    releases: dict[str, Release]

    def release(self, name: str) -> Release:
        if name not in self.releases:
            find_release(self.root / "releases", name)  # raises with the known names
        return self.releases[name]


def default_root() -> Path:
    return Path(os.environ.get("FREEBSD_IMAGES_PROJECT") or Path.cwd())


def load_project(root: Optional[Path] = None, only_release: Optional[str] = None) -> Project:
    """Load families.yaml and every release file, reporting all problems at once."""
    root = Path(root or default_root())
    problems: list[Diagnostic] = []
    family = None
    try:
        family = load_family(root / "families.yaml")
    except ConfigError as exc:
        problems += exc.diagnostics
    releases: dict[str, Release] = {}
    files = release_files(root / "releases")
    if not files:
        problems.append(Diagnostic(str(root / "releases"), 1, 1, "no release files (*.yaml) found"))
    for path in files:
        if only_release is not None and path.stem != only_release:
            continue
        try:
            rel = load_release(path, root)
        except ConfigError as exc:
            problems += exc.diagnostics
            continue
        if rel.name != path.stem:
            problems.append(Diagnostic(str(path), 1, 1, f"release {rel.name!r} must live in {rel.name}.yaml"))
        releases[rel.name] = rel
    if family is not None:
        problems += _cross_check(root, family, releases)
    if problems:
        raise ConfigError(problems)
    return Project(root=root, family=family, releases=releases)


def _cross_check(root: Path, family: Family, releases: dict[str, Release]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for fl in family.flavours.values():
        for f in fl.files:
            if f.template:
                try:
                    confined(family.base_dir, f.template, f"flavour {fl.name}")
                except BuildError as exc:
                    out.append(Diagnostic(family.source, 1, 1, str(exc)))
        for p in fl.packages:
            for rel in releases.values():
                if p.repository and p.repository not in {r.key for r in rel.repositories}:
                    out.append(Diagnostic(rel.source, 1, 1,
                                          f"flavour {fl.name} wants package {p.name} from repository "
                                          f"{p.repository!r}, which release {rel.name} does not define"))
    return out
