"""A build's recipe made from its context (for each image), and a scratch project made from a recipe (to rebuild).

The two are inverses: the project a recipe lays out holds the same families, release file, templates
and key files at the same paths, and the lock of the recipe's arch, so that building its flavour there
gives the image the recipe was attached to.
"""
from __future__ import annotations

from pathlib import Path

from builder import FORMAT_VERSION, __version__
from builder.common.atomic import atomic_write_bytes
from builder.config.family import DEFAULT_FAMILY, Family
from builder.errors import BuildError
from builder.oci.recipe import FILE_NAME, Recipe
from builder.resolve.lock import Lock
from builder.runs.context import Context, lock_name


def _templates(family: Family) -> set[Path]:
    return {Path(family.base_dir) / f.template for name in family.names for f in family.resolve(name).files
            if f.template}


def project_files(ctx: Context) -> dict[str, bytes]:
    """The project files a build of this release and family reads, by their path in the project."""
    root = Path(ctx.project.root).resolve()
    paths = {root / "families.yaml", Path(ctx.target.release.source)} | _templates(ctx.project.family)
    if ctx.family.name != DEFAULT_FAMILY:
        paths |= {Path(ctx.family.source)} | _templates(ctx.family)
    for repo in ctx.target.release.repositories:
        if repo.fingerprints is not None:
            paths |= {f for sub in ("trusted", "revoked") for f in (Path(repo.fingerprints) / sub).glob("*")}
        if repo.pubkey is not None:
            paths.add(Path(repo.pubkey))
    out = {}
    for p in sorted(paths):
        p = p.resolve()
        # keys outside the project (a test mirror's) verify catalogues only, which a rebuild by sum never reads
        if root not in p.parents or not p.is_file() or p.is_symlink():
            continue
        name = p.relative_to(root).as_posix()
        if FILE_NAME.fullmatch(name):
            out[name] = p.read_bytes()
    return out


def make_recipe(ctx: Context, files: dict[str, bytes], lock: Lock, arch: str, flavour: str, epoch: int,
                compression: str, squash: bool) -> Recipe:
    one = Lock(release=lock.release, source_date_epoch=lock.source_date_epoch, arches={arch: lock.arches[arch]})
    return Recipe(format=FORMAT_VERSION, builder=__version__, release=ctx.name, family=ctx.family.name,
                  flavour=flavour, arch=arch, epoch=epoch, compression=compression, squash=squash, files=files,
                  lock=one.to_json())


def check_format(recipe: Recipe, where: str) -> None:
    if recipe.format != FORMAT_VERSION:
        raise BuildError(f"{where}: made by freebsd-images {recipe.builder} (format {recipe.format}); this builder "
                         f"writes format {FORMAT_VERSION} and cannot give the same bytes: rebuild with a checkout "
                         f"of freebsd-images {recipe.builder} (or any version of format {recipe.format})")


def lay_out(recipe: Recipe, root: Path) -> tuple[Path, Path]:
    """The recipe's project under root, and its lock file there: (project, lock path)."""
    root = Path(root)
    for name, data in sorted(recipe.files.items()):
        atomic_write_bytes(root / name, data)
    lock = Lock.from_json(recipe.lock, f"the recipe of {recipe.release}/{recipe.arch}")
    if set(lock.arches) != {recipe.arch} or recipe.flavour not in lock.arches[recipe.arch].flavours:
        raise BuildError(f"the recipe of {recipe.release}/{recipe.arch}: its lock does not hold arch {recipe.arch} "
                         f"and flavour {recipe.flavour} alone")
    path = root / "releases" / lock_name(recipe.release, recipe.family)
    atomic_write_bytes(path, lock.dumps())
    return root, path
