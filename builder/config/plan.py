"""Targets: every (release, flavour, arch) with its resolved package set."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from builder.config.family import PackageRef
from builder.config.release import Release
from builder.config.project import Project
from builder.errors import BuildError


@dataclass(frozen=True)
class Target:
    image: str
    release: str
    flavour: str
    parent: str | None
    arch: str          # FreeBSD arch (amd64, aarch64)
    platform: str      # OCI architecture
    abi: str
    packages: tuple[str, ...]
    own_packages: tuple[str, ...]

    def to_json(self) -> dict:
        return asdict(self)


def flavour_packages(release: Release, refs: tuple[PackageRef, ...]) -> list[PackageRef]:
    """Apply the release's package-map, keeping each ref's repository pin."""
    out: list[PackageRef] = []
    for ref in refs:
        for name in release.map_packages([ref.name]):
            if name not in {r.name for r in out}:
                out.append(PackageRef(name, ref.repository, ref.follow_deps))
    return out


def targets(project: Project, releases: list[str] | None = None, flavours: list[str] | None = None,
            arches: list[str] | None = None) -> list[Target]:
    out = []
    fam = project.family
    for rname, rel in project.releases.items():
        if releases and rname not in releases:
            continue
        for fname in fam.names:
            if flavours and fname not in flavours:
                continue
            fl = fam.resolve(fname)
            for arch in rel.arches:
                if arches and arch.name not in arches and arch.platform not in arches:
                    continue
                out.append(Target(
                    image=rel.render_name(fname), release=rname, flavour=fname,
                    parent=fam.flavours[fname].parent, arch=arch.name, platform=arch.platform,
                    abi=rel.abi(arch.name),
                    packages=tuple(p.name for p in flavour_packages(rel, fl.packages)),
                    own_packages=tuple(p.name for p in flavour_packages(rel, fl.own_packages))))
    return out


def parse_image(project: Project, image: str) -> tuple[str, str]:
    """``freebsd14.2-minimal`` -> (release, flavour), by rendering every release's name pattern."""
    for rname, rel in project.releases.items():
        for fname in project.family.flavours:
            if rel.render_name(fname) == image:
                return rname, fname
    names = sorted({t.image for t in targets(project)})
    raise BuildError(f"unknown image {image!r}; known images: {', '.join(names)}")


def select(project: Project, images: list[str], release: Optional[str] = None, all_flavours: bool = False,
           flavours: Optional[list[str]] = None) -> dict[str, list[str]]:
    """release -> flavours (family order), from image names or a release with --all / --flavour."""
    out: dict[str, list[str]] = {}
    for image in images:
        rel, fl = parse_image(project, image)
        out.setdefault(rel, []).append(fl)
    if release:
        if not (all_flavours or flavours):
            raise BuildError("--release needs --all or --flavour")
        project.release(release)
        for f in flavours or ():
            if f not in project.family.flavours:
                raise BuildError(f"unknown flavour {f!r}; flavours: {', '.join(project.family.names)}")
        out.setdefault(release, []).extend(project.family.names if all_flavours else flavours)
    if not out:
        raise BuildError("nothing to build: name an image (e.g. freebsd14.2-minimal) or --release R --all")
    return {r: sorted(set(fs), key=project.family.names.index) for r, fs in out.items()}
