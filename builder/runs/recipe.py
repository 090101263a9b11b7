"""A build's recipe made from its context (for each image), and a scratch project made from a recipe (to rebuild).

The two are inverses: the project a recipe lays out holds the same families, release file, templates
and key files at the same paths, and the lock of the recipe's arch, so that building its flavour there
gives the image the recipe was attached to.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import yaml

from builder import FORMAT_VERSION, __version__
from builder.common.atomic import atomic_write_bytes
from builder.config.family import DEFAULT_FAMILY, Family
from builder.errors import BuildError
from builder.layers.plan import package_reads
from builder.oci.recipe import FILE_NAME, Recipe
from builder.resolve.lock import Lock
from builder.runs.context import Context, RunOptions, lock_name


class Recipes:
    """The recipes of one release build. Each family file is read once and each flavour's files made
    once: a build has a recipe per image and arch, and YAML is slow to parse."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._docs: dict[str, dict] = {}
        self._chains: dict[tuple[str, tuple[str, ...]], bytes] = {}
        self._files: dict[str, dict[str, bytes]] = {}

    def chain_file(self, family: Family, flavours: list[str]) -> bytes:
        """The family file with only these flavours: an image's recipe (and so its provenance) changes with
        the flavours it is made of, not with every other flavour of the family."""
        key = (family.source, tuple(flavours))
        if key not in self._chains:
            if family.source not in self._docs:
                self._docs[family.source] = yaml.load(Path(family.source).read_bytes(), Loader=_Loader)
            doc = dict(self._docs[family.source])
            doc["flavours"] = {name: body for name, body in doc["flavours"].items() if name in flavours}
            # the pure-Python dumper everywhere: libyaml's may lay the same data out otherwise
            self._chains[key] = yaml.dump(doc, Dumper=yaml.SafeDumper, sort_keys=False, allow_unicode=True,
                                          width=120).encode()
        return self._chains[key]

    def files(self, flavour: str) -> dict[str, bytes]:
        if flavour not in self._files:
            self._files[flavour] = self._project_files(flavour)
        return self._files[flavour]

    def _project_files(self, flavour: str) -> dict[str, bytes]:
        """The project files a build of this flavour reads, by their path in the project: the family file cut
        to the flavour's chain (for another family than the default, families.yaml cut to its first flavour,
        which a project must have), the release file, the chain's templates and the release's key files."""
        ctx = self.ctx
        root = Path(ctx.project.root).resolve()
        chain = ctx.family.chain(flavour)
        first = ctx.project.family.chain(ctx.project.family.names[0])
        default_chain = chain if ctx.family.name == DEFAULT_FAMILY else first
        made = {root / "families.yaml": self.chain_file(ctx.project.family, default_chain)}
        if ctx.family.name != DEFAULT_FAMILY:
            made[Path(ctx.family.source).resolve()] = self.chain_file(ctx.family, chain)
        paths = {Path(ctx.target.release.source)} | _chain_templates(ctx.project.family, default_chain)
        if ctx.family.name != DEFAULT_FAMILY:
            paths |= _chain_templates(ctx.family, chain)
        for repo in ctx.target.release.repositories:
            if repo.fingerprints is not None:
                paths |= {f for sub in ("trusted", "revoked") for f in (Path(repo.fingerprints) / sub).glob("*")}
            if repo.pubkey is not None:
                paths.add(Path(repo.pubkey))
        out = {}
        for p in sorted(paths | set(made)):
            p = p.resolve()
            # keys outside the project (a test mirror's) verify catalogues only, which a rebuild by sum never reads
            if root not in p.parents or not (p in made or (p.is_file() and not p.is_symlink())):
                continue
            name = p.relative_to(root).as_posix()
            if FILE_NAME.fullmatch(name):
                out[name] = made[p] if p in made else p.read_bytes()
        return out

    def recipe(self, lock: Lock, arch: str, flavour: str, epoch: int, compression: str, squash: bool) -> Recipe:
        ctx = self.ctx
        one = _chain_lock(lock, arch, ctx.family, ctx.target.release, flavour)
        return Recipe(format=FORMAT_VERSION, builder=__version__, release=ctx.name, family=ctx.family.name,
                      flavour=flavour, arch=arch, epoch=epoch, compression=compression, squash=squash,
                      files=self.files(flavour), lock=one.to_json())


# libyaml's loader when there is one: the data it gives is the same, only faster
try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # a PyYAML built without libyaml
    from yaml import SafeLoader as _Loader


def _chain_templates(family: Family, flavours: list[str]) -> set[Path]:
    return {Path(family.base_dir) / f.template for name in flavours for f in family.resolve(name).files if f.template}


def _chain_lock(lock: Lock, arch: str, family: Family, release, flavour: str) -> Lock:
    """The lock of one arch cut to the flavour's chain: its flavours and the packages they install or read."""
    al = lock.arches[arch]
    chain = family.chain(flavour)
    names = {n for f in chain for n in package_reads(family.resolve(f), release, list(al.flavours[f].packages))}
    one = replace(al, flavours={f: al.flavours[f] for f in chain},
                  packages={n: p for n, p in al.packages.items() if n in names})
    return Lock(release=lock.release, source_date_epoch=lock.source_date_epoch, arches={arch: one})


def check_format(recipe: Recipe, where: str) -> None:
    if recipe.format != FORMAT_VERSION:
        raise BuildError(f"{where}: made by freebsd-images {recipe.builder} (format {recipe.format}); this builder "
                         f"writes format {FORMAT_VERSION} and cannot give the same bytes: rebuild with a checkout "
                         f"of freebsd-images {recipe.builder} (or any version of format {recipe.format})")


def open_recipe(recipe: Recipe, root: Path, mirror: Optional[str],
                cache_dir: Optional[Path]) -> tuple[Context, Lock]:
    """The recipe's project laid out under root (its files and the lock of its arch), opened for its arch
    with packages from the release's repositories or ``mirror``: what reproduce and mirror --from read."""
    root = Path(root)
    for name, data in sorted(recipe.files.items()):
        atomic_write_bytes(root / name, data)
    lock = Lock.from_json(recipe.lock, f"the recipe of {recipe.release}/{recipe.arch}")
    if set(lock.arches) != {recipe.arch} or recipe.flavour not in lock.arches[recipe.arch].flavours:
        raise BuildError(f"the recipe of {recipe.release}/{recipe.arch}: its lock does not hold arch {recipe.arch} "
                         f"and flavour {recipe.flavour} alone")
    path = root / "releases" / lock_name(recipe.release, recipe.family)
    atomic_write_bytes(path, lock.dumps())
    ctx = Context.open(RunOptions(project=root, arches=(recipe.arch,), mirror=mirror, lock=path, cache_dir=cache_dir,
                                  family=recipe.family), recipe.release)
    return ctx, lock
