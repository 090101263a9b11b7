"""What to build for one arch, decided before anything is built: a pure function of its inputs.

A layer's key is a digest of everything that goes into it (layers/cache.py); the plan computes every
key from the family, the release, the lock and the options, and from the cache's answers it decides,
per flavour, whether its layer is written, reused, and whether its filesystem must be assembled
(a layer to write, or a child to build on it), loaded from the cache's copy, or kept for the children.
No file is read here: the rendered files and trust-root digests a key covers are given (``KeyInputs``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from builder.config.family import Family, ResolvedFlavour
from builder.config.release import Release
from builder.errors import BuildError
from builder.layers.cache import layer_key
from builder.resolve.lock import ArchLock


@dataclass(frozen=True)
class LayerOptions:
    """The options that shape a layer's bytes."""
    epoch: int
    compression: str = "gzip"     # gzip | zstd
    squash: bool = False          # one layer per image instead of one per flavour


@dataclass(frozen=True)
class KeyInputs:
    """What a flavour's layer key covers that is read from files: made at the edge, handed to the plan."""
    rendered: tuple[bytes, ...]                 # the flavour's files' contents, in the flavour's order
    trust: tuple[tuple[str, str], ...]          # (image path, sha256) of the trust-root files it installs


@dataclass(frozen=True)
class LayerStep:
    flavour: str
    parent: Optional[str]
    key: str
    cached: bool = False        # the layer cache holds this layer (and the layout its exact bytes)
    assemble: bool = False      # its filesystem is built from packages (a layer to write, or a child needs it)
    load_fs: bool = False       # its filesystem is the cache's copy (a child needs it)
    keep_fs: bool = False       # other flavours are built on it: its filesystem is kept with its layer

    @property
    def write(self) -> bool:
        return not self.cached


def wanted_flavours(family: Family, only: Optional[list[str]] = None) -> list[str]:
    """Every flavour of the family, or those named with their ancestors, in family order."""
    if not only:
        return list(family.names)
    need = {link for f in only for link in family.chain(f)}
    return [f for f in family.names if f in need]


def package_reads(fl: ResolvedFlavour, release: Release, names: list[str]) -> list[str]:
    """Every package a flavour's layer is made from: installed, extracted from, or the skeleton's."""
    read = [e.package for e in fl.extract] + ([fl.skeleton.package] if fl.skeleton else [])
    return sorted(set(names) | set(release.map_packages(read)))


def image_version(release: Release, lock: ArchLock) -> str:
    """The FreeBSD version the images carry: the version package's locked version."""
    locked = lock.packages.get(release.version_package)
    return locked.version if locked else release.name


def layer_keys(family: Family, release: Release, arch: str, lock: ArchLock, opts: LayerOptions,
               wanted: list[str], inputs: Mapping[str, KeyInputs], repo_names: Mapping[str, str],
               env: Mapping[str, object]) -> dict[str, str]:
    """flavour -> layer key, parents first: a change anywhere below a layer reaches its key."""
    keys: dict[str, str] = {}
    version = image_version(release, lock)
    for fname in wanted:
        fl = family.resolve(fname)
        entry = lock.flavours.get(fname)
        if entry is None:
            raise BuildError(f"{release.name}/{arch}: flavour {fname} is not in the lock file; run `freebsd-images lock`")
        locked = {n: lock.packages[n] for n in package_reads(fl, release, list(entry.packages)) if n in lock.packages}
        keys[fname] = layer_key(parent=keys.get(family.flavours[fname].parent), flavour=fl,
                                files=list(inputs[fname].rendered), lock=entry, packages=locked,
                                trust=list(inputs[fname].trust),
                                release=[release.name, release.abi(arch), dict(repo_names), release.pkgdb_user_version,
                                         version], epoch=opts.epoch, compression=opts.compression, squash=opts.squash,
                                env=dict(env))
    return keys


def schedule(wanted: list[str], parents: Mapping[str, Optional[str]], keys: Mapping[str, str],
             cached: frozenset[str], fs_cached: frozenset[str], bases: frozenset[str]) -> list[LayerStep]:
    """One step per wanted flavour, in order.

    ``cached``: the flavours whose layers the cache holds; ``fs_cached``: those whose filesystem the
    cache holds too; ``bases``: the flavours any other is built on. A flavour whose layer is not
    cached is assembled from its parent's filesystem: the cache's copy when it has one, else the
    parent is assembled too (from the grandparent's, and so on down).
    """
    assemble: set[str] = set()
    load: set[str] = set()
    for f in wanted:
        link = None if f in cached else f
        while link is not None and link not in assemble and link not in load:
            if link in cached and link in fs_cached:
                load.add(link)
                break
            assemble.add(link)
            link = parents[link]
    return [LayerStep(flavour=f, parent=parents[f], key=keys[f], cached=f in cached, assemble=f in assemble,
                      load_fs=f in load, keep_fs=f in bases) for f in wanted]
