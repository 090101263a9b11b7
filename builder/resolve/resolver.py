"""Dependency resolution over a release's repositories, by priority."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from builder.config.family import PackageRef
from builder.errors import BuildError
from builder.resolve.catalogue import Catalogue, RemotePackage

SUBPACKAGE = re.compile(r".*-(dbg|dev|man|lib32)$")


def is_metapackage(pkg: RemotePackage) -> bool:
    """A package with no files of its own that exists for its dependencies: FreeBSD's sets
    (FreeBSD-set-devel, ...), made by release/packages/create-sets.sh with flatsize 0."""
    return pkg.flatsize == 0 and bool(pkg.deps)


@dataclass(frozen=True)
class Resolution:
    packages: tuple[RemotePackage, ...]    # sorted by name
    automatic: frozenset[str]              # pulled in as dependencies only
    warnings: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.packages]


def _abi_ok(pkg_abi: str, abi: str) -> bool:
    want = abi.split(":")
    have = pkg_abi.split(":")
    return len(have) == 3 and all(h in (w, "*") for h, w in zip(have, want))


class PackageProblem(BuildError):
    """A package a flavour names that the catalogues cannot give: the caller knows where it was named."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def resolve(catalogues: list[Catalogue], refs: list[PackageRef], abi: str) -> Resolution:
    """Close refs over their dependencies; catalogues are in priority order."""
    by_repo = {c.repository: c for c in catalogues}
    all_names = sorted({n for c in catalogues for n in c.packages})

    def find(name: str, repo: str | None, chain: list[str]) -> RemotePackage:
        sources = [by_repo[repo]] if repo else catalogues
        if repo and repo not in by_repo:
            raise PackageProblem(name, f"package {name}: no repository {repo!r} in this release (repositories: "
                                       + ", ".join(sorted(by_repo)) + ")")
        for cat in sources:
            if name in cat.packages:
                pkg = cat.packages[name]
                if not _abi_ok(pkg.abi, abi):
                    raise BuildError(f"package {name} in repository {cat.repository} is for {pkg.abi}, not {abi}")
                return pkg
        if chain:
            raise BuildError(f"missing dependency {name}, needed by " + " <- ".join(reversed(chain)))
        hint = difflib.get_close_matches(name, all_names, n=3)
        where = f"repository {repo}" if repo else "any repository (" + ", ".join(c.repository for c in catalogues) + ")"
        raise PackageProblem(name, f"unknown package {name} in {where}"
                             + (f"; did you mean {', '.join(hint)}?" if hint else ""))

    chosen: dict[str, RemotePackage] = {}
    requested = {r.name for r in refs}
    warnings: list[str] = []
    stack: list[tuple[str, str | None, list[str], bool]] = [(r.name, r.repository, [], r.follow_deps) for r in refs]
    while stack:
        name, repo, chain, follow = stack.pop(0)
        if name in chosen:
            continue
        pkg = find(name, repo, chain)
        chosen[name] = pkg
        if not follow:
            continue
        meta = is_metapackage(pkg)
        for dep in pkg.deps:
            if dep.name in chosen:
                continue
            # a set's members are what it is for, sub-packages (-dev, -dbg, ...) included
            if SUBPACKAGE.match(dep.name) and dep.name not in requested and not meta:
                warnings.append(f"{name} depends on sub-package {dep.name}, which is not pulled in unless named")
                continue
            stack.append((dep.name, None, chain + [name], True))
    for pkg in chosen.values():
        for c in pkg.raw.get("conflicts") or ():
            if c in chosen:
                raise BuildError(f"conflict: {pkg.name} conflicts with {c}; both are in the set")
    provided = {s for p in chosen.values() for s in p.shlibs_provided}
    for pkg in sorted(chosen.values(), key=lambda p: p.name):
        for lib in pkg.shlibs_required:
            if lib not in provided:
                warnings.append(f"{pkg.name} requires shared library {lib}, which no package in the set provides")
    return Resolution(
        packages=tuple(sorted(chosen.values(), key=lambda p: p.name)),
        automatic=frozenset(n for n in chosen if n not in requested),
        warnings=tuple(warnings))
