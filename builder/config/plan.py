"""Targets: every (release, flavour, arch) with its resolved package set."""
from __future__ import annotations

import difflib

from dataclasses import asdict, dataclass
from typing import Optional

from builder.config.family import DEFAULT_FAMILY, PackageRef
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
    family: str = DEFAULT_FAMILY
    cmd: tuple[str, ...] = ()          # the image's command (config Cmd); () none

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
            arches: list[str] | None = None, family: Optional[str] = None) -> list[Target]:
    out = []
    fam_all = project.get_family(family)
    # a filter that matches nothing is a mistake, refused as build refuses it, not an empty table
    for what, given, known in (("release", releases, list(project.releases)), ("flavour", flavours, fam_all.names),
                               ("arch", arches, sorted({x for r in project.releases.values() for a in r.arches
                                                        for x in (a.name, a.platform)}))):
        for g in given or ():
            if g not in known:
                hint = difflib.get_close_matches(g, known, n=1)
                raise BuildError(f"unknown {what} {g!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                                 + f" ({what}s: {', '.join(known)})")
    for rname in project.releases:
        if releases and rname not in releases:
            continue
        rel, fam = project.view(rname, family)
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
                    own_packages=tuple(p.name for p in flavour_packages(rel, fl.own_packages)),
                    family=fam.name, cmd=tuple(fl.config.cmd or ())))
    return out


def parse_image(project: Project, image: str, family: Optional[str] = None,
                release: Optional[str] = None) -> tuple[str, str]:
    """``freebsd14.2-minimal`` -> (release, flavour), by rendering every release's name pattern.

    A family whose names do not carry the release (the official ``freebsd-runtime``) needs
    ``release`` to tell them apart; an image name only a release tells apart is refused."""
    found = []
    for rname in project.releases:
        if release and rname != release:
            continue
        rel, fam = project.view(rname, family)
        for fname in fam.flavours:
            if rel.render_name(fname) == image:
                found.append((rname, fname))
    if len(found) == 1:
        return found[0]
    if found:
        raise BuildError(f"image {image!r} is built by several releases ({', '.join(r for r, _ in found)}): "
                         f"name one with --release")
    names = sorted({t.image for t in targets(project, [release] if release else None, family=family)})
    raise BuildError(f"unknown image {image!r}; known images: {', '.join(names)}")


def select(project: Project, images: list[str], release: Optional[str] = None, all_flavours: bool = False,
           flavours: Optional[list[str]] = None, family: Optional[str] = None) -> dict[str, list[str]]:
    """release -> flavours (family order), from image names or a release with --all / --flavour."""
    out: dict[str, list[str]] = {}
    project.get_family(family)
    for image in images:
        rel, fl = parse_image(project, image, family, release)
        out.setdefault(rel, []).append(fl)
    if release and (all_flavours or flavours or not images):
        if not (all_flavours or flavours):
            raise BuildError("--release needs --all or --flavour")
        _, fam = project.view(release, family)
        for f in flavours or ():
            if f not in fam.flavours:
                every = project.get_family(family)
                why = (f" (not built for FreeBSD {project.release(release).major})" if f in every.flavours else "")
                raise BuildError(f"unknown flavour {f!r} of family {fam.name} for release {release}{why}; "
                                 f"flavours: {', '.join(fam.names)}")
        out.setdefault(release, []).extend(fam.names if all_flavours else flavours)
    if not out:
        raise BuildError("nothing to build: name an image (e.g. freebsd14.2-minimal) or --release R --all")
    result = {}
    for r, fs in out.items():
        order = project.view(r, family)[1].names
        result[r] = sorted(set(fs), key=order.index)
    return result
