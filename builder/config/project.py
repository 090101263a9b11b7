"""The project's declarative inputs, loaded and cross-checked together."""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import replace, dataclass, field
from pathlib import Path
from typing import Optional

from builder.config.family import DEFAULT_FAMILY, Family, load_family
from builder.config.release import Release, find_release, load_release, release_files
from builder.common.templates import confined
from builder.errors import BuildError, ConfigError, Diagnostic


@dataclass(frozen=True)
class Project:
    root: Path
    family: Family                       # the default family (families.yaml)
    releases: dict[str, Release]
    families: dict[str, Family] = field(default_factory=dict)   # every family by name, the default first

    def release(self, name: str) -> Release:
        if name not in self.releases:
            find_release(self.root / "releases", name)  # raises with the known names
        return self.releases[name]

    def get_family(self, name: Optional[str] = None) -> Family:
        name = name or DEFAULT_FAMILY
        fams = self.families or {self.family.name: self.family}
        if name not in fams:
            hint = difflib.get_close_matches(name, list(fams), n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise BuildError(f"unknown family {name!r}{more}; families: {', '.join(fams)} "
                             f"(families.yaml is {DEFAULT_FAMILY!r}, families/NAME.yaml is NAME)")
        return fams[name]

    def view(self, release: str, family: Optional[str] = None) -> tuple[Release, Family]:
        """A release as one family builds it: the family's naming, and only the flavours for its major."""
        rel = self.release(release)
        fam = self.get_family(family)
        return rel.for_family(fam), fam.for_release(rel.major, rel.name)


def default_root() -> Path:
    return Path(os.environ.get("FREEBSD_IMAGES_PROJECT") or Path.cwd())


def load_project(root: Optional[Path] = None, only_release: Optional[str] = None) -> Project:
    """Load families.yaml, families/*.yaml and every release file, reporting all problems at once."""
    root = Path(root or default_root())
    problems: list[Diagnostic] = []
    family = None
    families: dict[str, Family] = {}
    try:
        family = load_family(root / "families.yaml")
        families[family.name] = family
    except ConfigError as exc:
        problems += exc.diagnostics
    for path in sorted((root / "families").glob("*.yaml")) if (root / "families").is_dir() else ():
        if path.stem == DEFAULT_FAMILY or not re.fullmatch(r"[a-z][a-z0-9-]*", path.stem):
            problems.append(Diagnostic(str(path), 1, 1, f"a family file is families/NAME.yaml with a lower-case NAME "
                                                        f"other than {DEFAULT_FAMILY!r} (that one is families.yaml)"))
            continue
        try:
            families[path.stem] = load_family(path, path.stem, base_dir=root)
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
    for fam in families.values():
        problems += _cross_check(root, fam, releases)
    if problems:
        raise ConfigError(problems)
    return Project(root=root, family=family, releases=releases, families=families)


def _cross_check(root: Path, family: Family, releases: dict[str, Release]) -> list[Diagnostic]:
    """What a family asks of the release files and the project, each problem at the family's own line."""
    out: list[Diagnostic] = []

    def at(path: tuple, message: str) -> Diagnostic:
        line, col = family.positions.get(path, family.positions.get(path[:2], (1, 1)))
        return Diagnostic(family.source, line, col, message)

    def lacking(fl, key: str) -> list[str]:
        return [r.name for r in releases.values() if not (fl.majors and r.major not in fl.majors)
                and not (fl.releases and r.name not in fl.releases)
                and key not in {x.key for x in r.repositories}]

    for fl in family.flavours.values():
        for i, key in enumerate(fl.trust):
            if lacking(fl, key):
                out.append(at(("flavours", fl.name, "trust", i), f"flavour {fl.name} trusts repository {key!r}, "
                              f"which releases {', '.join(lacking(fl, key))} do not define"))
        for i, f in enumerate(fl.files):
            if f.template:
                out += _template_problem(family, fl.name, f.template, at(("flavours", fl.name, "files", i, "template"), ""))
        for i, p in enumerate(fl.packages):
            if p.repository and lacking(fl, p.repository):
                keys = sorted({x.key for r in releases.values() for x in r.repositories})
                out.append(at(("flavours", fl.name, "packages", i, "repository"),
                              f"flavour {fl.name} wants package {p.name} from repository {p.repository!r}, which "
                              f"releases {', '.join(lacking(fl, p.repository))} do not define (repositories: "
                              f"{', '.join(keys)})"))
    return out


def _template_problem(family: Family, flavour: str, template: str, where: Diagnostic) -> list[Diagnostic]:
    try:
        confined(family.base_dir, template, f"flavour {flavour}")
        return []
    except BuildError as exc:
        near = difflib.get_close_matches(template, [p.relative_to(family.base_dir).as_posix()
                                                    for p in Path(family.base_dir).glob("templates/**/*.j2")], n=1)
        return [replace(where, message=str(exc) + (f"; did you mean {near[0]}?" if near else ""))]
