"""A pkg repository catalogue: meta.conf plus data.pkg or packagesite.pkg."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from builder.errors import BuildError
from builder.resolve import ucl


@dataclass(frozen=True, order=True)
class Dep:
    name: str
    origin: str
    version: str


@dataclass(frozen=True)
class RemotePackage:
    """One package as the catalogue describes it (pkg's compact manifest + repo keys)."""

    name: str
    origin: str
    version: str
    abi: str
    arch: str
    repopath: str
    sum: str
    pkgsize: int
    flatsize: int
    deps: tuple[Dep, ...]
    shlibs_required: tuple[str, ...]
    shlibs_provided: tuple[str, ...]
    annotations: tuple[tuple[str, str], ...]
    raw: dict = field(compare=False, hash=False, repr=False)
    repository: str = ""  # repository key in the release file

    @classmethod
    def from_json(cls, obj: dict, repository: str, where: str) -> "RemotePackage":
        for key in ("name", "origin", "version", "sum"):
            if not isinstance(obj.get(key), str):
                raise BuildError(f"{where}: malformed package entry {obj.get('name', '?')!r:.80}: "
                                 f"{key} must be a string, not {type(obj.get(key)).__name__}")
        pkg = cls._from_json(obj, repository, where)
        check_repopath(pkg.repopath, f"{where}: package {pkg.name}")
        return pkg

    @classmethod
    def _from_json(cls, obj: dict, repository: str, where: str) -> "RemotePackage":
        try:
            deps = tuple(sorted(Dep(n, d.get("origin", ""), d.get("version", ""))
                                for n, d in (obj.get("deps") or {}).items()))
            return cls(
                name=obj["name"], origin=obj["origin"], version=obj["version"],
                abi=obj.get("abi", ""), arch=obj.get("arch", ""),
                repopath=obj.get("repopath") or obj["path"], sum=obj["sum"],
                pkgsize=int(obj.get("pkgsize", 0)), flatsize=int(obj.get("flatsize", 0)),
                deps=deps,
                shlibs_required=tuple(obj.get("shlibs_required") or ()),
                shlibs_provided=tuple(obj.get("shlibs_provided") or ()),
                annotations=tuple(sorted((obj.get("annotations") or {}).items())),
                raw=obj, repository=repository,
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise BuildError(f"{where}: malformed package entry {obj.get('name', '?') if isinstance(obj, dict) else obj!r}: {exc!r}") from exc

    @property
    def sha256(self) -> Optional[str]:
        """The sha256 of the .pkg file when the catalogue gives one (pkg 2.0 style)."""
        s = self.sum
        if "$" in s:
            kind, _, body = s.partition("$")
            return body if kind == "1" else None
        return s


def check_repopath(path: str, what: str) -> str:
    """A package's path in its repository: relative, plain components only.

    The catalogue is signed, but signing says which packages exist, not where a mirror
    may write: ``mirror`` joins this path to its destination, and downloads to the base URL.
    """
    parts = path.split("/")
    if (not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path
            or any(p in ("", ".", "..") for p in parts)):
        raise BuildError(f"{what}: refusing repository path {path!r}: must be relative, without '.', '..' or empty parts")
    return path


@dataclass(frozen=True)
class Meta:
    version: int
    packing_format: str
    data: str
    manifests: str
    manifests_archive: str
    raw: dict

    @classmethod
    def parse(cls, text: str, source: str) -> "Meta":
        d = ucl.parse(text, source)
        return cls(
            version=int(d.get("version", 1)),
            packing_format=str(d.get("packing_format", "txz")),
            data=str(d.get("data", "data")),
            manifests=str(d.get("manifests", "packagesite.yaml")),
            manifests_archive=str(d.get("manifests_archive", "packagesite")),
            raw=d,
        )


@dataclass(frozen=True)
class Catalogue:
    repository: str        # release file key
    url: str
    meta: Meta
    kind: str              # "data" or "packagesite"
    digest: str            # sha256 of the catalogue file inside the archive
    packages: dict[str, RemotePackage]
    built: int = 0         # mtime of the catalogue file: when the repository was built


def parse_catalogue(member: str, content: bytes, repository: str, url: str, meta: Meta, built: int = 0) -> Catalogue:
    """Parse the catalogue file (``data`` JSON or ``packagesite.yaml`` lines)."""
    where = f"{url}: {member}"
    digest = hashlib.sha256(content).hexdigest()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BuildError(f"{where}: not UTF-8: {exc}") from exc
    objs: list[Any]
    if member == meta.data:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BuildError(f"{where}: bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        except RecursionError as exc:
            raise BuildError(f"{where}: JSON nested too deeply; refusing") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("packages"), list):
            raise BuildError(f"{where}: expected a JSON object with a 'packages' list")
        objs = doc["packages"]
        kind = "data"
    else:
        objs = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                objs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BuildError(f"{where}:{lineno}: bad JSON: {exc.msg}") from exc
            except RecursionError as exc:
                raise BuildError(f"{where}:{lineno}: JSON nested too deeply; refusing") from exc
        kind = "packagesite"
    packages: dict[str, RemotePackage] = {}
    for obj in objs:
        if not isinstance(obj, dict):
            raise BuildError(f"{where}: package entry is not an object: {obj!r:.80}")
        pkg = RemotePackage.from_json(obj, repository, where)
        if pkg.name in packages:
            raise BuildError(f"{where}: package {pkg.name} listed twice")
        packages[pkg.name] = pkg
    return Catalogue(repository=repository, url=url, meta=meta, kind=kind, digest=digest,
                     packages=dict(sorted(packages.items())), built=built)
