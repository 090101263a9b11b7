"""Lock files: the exact packages of every (arch, flavour) of a release.

Written with sorted keys and a trailing newline so an unchanged lock is
byte-identical. Builds use the lock when present and refuse catalogues that
no longer carry a locked package, unless asked to update.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
import datetime
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from builder.common.atomic import write_if_changed
from builder.config.family import Family, PackageRef
from builder.config.release import Release
from builder.errors import BuildError, ConfigError
from builder.config.plan import flavour_packages
from builder.resolve.catalogue import Catalogue
from builder.resolve.client import fetch_catalogue
from builder.common.http import Transport
from builder.resolve.version import compare
from builder.resolve.resolver import PackageProblem, resolve

LOCK_VERSION = 1


@dataclass(frozen=True)
class LockedPackage:
    name: str
    origin: str
    version: str
    repository: str
    path: str
    size: int
    sum: str


@dataclass(frozen=True)
class FlavourLock:
    """The packages a flavour installs for one arch, and which of them only as dependencies."""
    packages: tuple[str, ...]
    automatic: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"packages": list(self.packages), "automatic": list(self.automatic)}

    @classmethod
    def from_json(cls, doc: dict) -> "FlavourLock":
        if not isinstance(doc.get("packages"), list) or not isinstance(doc.get("automatic", []), list):
            raise TypeError(f"flavour entry {doc!r}: packages and automatic are lists of names")
        return cls(packages=tuple(map(str, doc["packages"])), automatic=tuple(map(str, doc.get("automatic", []))))


@dataclass(frozen=True)
class ArchLock:
    abi: str
    catalogues: dict          # repository key -> sha256 of its catalogue file
    packages: dict            # name -> LockedPackage
    flavours: dict            # flavour -> FlavourLock
    built: dict = field(default_factory=dict)   # repository key -> when its catalogue was built (rollback check)


@dataclass(frozen=True)
class Lock:
    release: str
    source_date_epoch: int
    arches: dict              # arch -> ArchLock

    def to_json(self) -> dict:
        return {
            "lock-version": LOCK_VERSION,
            "release": self.release,
            "source-date-epoch": self.source_date_epoch,
            "arches": {a: {"abi": al.abi, "catalogues": al.catalogues, "catalogue-built": al.built,
                           "packages": {n: {k: v for k, v in asdict(p).items() if k != "name"}
                                        for n, p in sorted(al.packages.items())},
                           "flavours": {f: e.to_json() for f, e in al.flavours.items()}}
                       for a, al in sorted(self.arches.items())},
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, doc: dict, source: str) -> "Lock":
        try:
            if doc.get("lock-version") != LOCK_VERSION:
                raise BuildError(f"{source}: unsupported lock-version {doc.get('lock-version')!r}")
            arches = {}
            for a, al in doc["arches"].items():
                pkgs = {n: LockedPackage(name=n, **p) for n, p in al["packages"].items()}
                arches[a] = ArchLock(abi=al["abi"], catalogues=al["catalogues"], packages=pkgs, flavours={f: FlavourLock.from_json(e) for f, e in al["flavours"].items()},
                                     built={k: int(v) for k, v in (al.get("catalogue-built") or {}).items()})
            return cls(release=doc["release"], source_date_epoch=int(doc["source-date-epoch"]), arches=arches)
        except (KeyError, TypeError, ValueError) as exc:
            raise BuildError(f"{source}: malformed lock file: {exc!r}") from exc


def load_lock(path: Path) -> Optional[Lock]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        return Lock.from_json(json.loads(text), str(path))
    except json.JSONDecodeError as exc:
        raise BuildError(f"{path}: not JSON: {exc}") from exc


def write_lock(path: Path, lock: Lock) -> bool:
    """Write the lock; return True if its bytes changed."""
    return write_if_changed(Path(path), lock.dumps())


def fetch_catalogues(transport: Transport, release: Release, arches: list[str]) -> dict[str, list[Catalogue]]:
    """Catalogues per arch, in repository priority order (fetched in parallel)."""
    jobs = [(a, r) for a in arches for r in release.repositories]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda ar: fetch_catalogue(transport, ar[1], release.abi(ar[0])), jobs))
    out: dict[str, list[Catalogue]] = {a: [] for a in arches}
    for (a, _), cat in zip(jobs, results):
        out[a].append(cat)
    return out


def make_lock(release: Release, family: Family, catalogues: dict[str, list[Catalogue]],
              warn=lambda msg: None) -> Lock:
    arches = {}
    for arch, cats in catalogues.items():
        abi = release.abi(arch)
        packages: dict[str, LockedPackage] = {}
        flavours = {}
        for fname in family.names:
            fl = family.resolve(fname)
            res = _resolve_located(release, family, fname, cats, abi, arch)
            for w in res.warnings:
                warn(f"{release.name}/{arch}/{fname}: {w}")
            for p in res.packages:
                packages[p.name] = LockedPackage(p.name, p.origin, p.version, p.repository, p.repopath, p.pkgsize, p.sum)
            # Packages the flavour only reads from (skeleton specs, extracted files) are locked too.
            sources = [e.package for e in fl.extract] + ([fl.skeleton.package] if fl.skeleton else [])
            extra = [PackageRef(n, None, False) for n in release.map_packages(sources) if n not in packages]
            for p in resolve(cats, extra, abi).packages if extra else ():
                packages[p.name] = LockedPackage(p.name, p.origin, p.version, p.repository, p.repopath, p.pkgsize, p.sum)
            flavours[fname] = FlavourLock(packages=tuple(res.names), automatic=tuple(sorted(res.automatic)))
        arches[arch] = ArchLock(abi=abi, catalogues={c.repository: c.digest for c in cats},
                                packages=packages, flavours=flavours, built={c.repository: c.built for c in cats})
    epoch = max((c.built for cats in catalogues.values() for c in cats), default=0)
    return Lock(release=release.name, source_date_epoch=epoch, arches=arches)


def _resolve_located(release: Release, family: Family, fname: str, cats: list[Catalogue], abi: str, arch: str):
    """The flavour's packages resolved; a package the catalogues cannot give is reported where the family
    names it (file:line:col), with the flavour, release and arch."""
    fl = family.resolve(fname)
    try:
        return resolve(cats, flavour_packages(release, fl.packages), abi)
    except PackageProblem as exc:
        named = next((r.name for r in fl.packages if exc.name in release.map_packages([r.name])), exc.name)
        mapped = f" (the release's package-map makes {named} {exc.name})" if named != exc.name else ""
        raise ConfigError([family.package_diagnostic(
            fname, named, f"flavour {fname}, release {release.name}, {arch}: {exc}{mapped}")]) from exc


def check_lock(lock: Lock, catalogues: dict[str, list[Catalogue]]) -> None:
    """Refuse catalogues that no longer carry every locked package exactly."""
    problems = []
    for arch, cats in catalogues.items():
        if arch not in lock.arches:
            problems.append(f"{arch}: not in the lock file")
            continue
        by_repo = {c.repository: c for c in cats}
        for p in lock.arches[arch].packages.values():
            cat = by_repo.get(p.repository)
            now = cat.packages.get(p.name) if cat else None
            if now is None:
                problems.append(f"{arch}: {p.name}-{p.version} is no longer in repository {p.repository}")
            elif (now.version, now.sum) != (p.version, p.sum):
                problems.append(f"{arch}: {p.name} is locked at {p.version} but the catalogue has {now.version}"
                                + ("" if now.version != p.version else " with another checksum"))
    if problems:
        raise BuildError("the catalogue no longer matches the lock file (run `freebsd-images lock` or pass --update):\n  "
                         + "\n  ".join(problems))


@dataclass(frozen=True)
class Update:
    name: str
    old: str
    new: Optional[str]
    arches: tuple[str, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "old": self.old, "new": self.new, "arches": list(self.arches)}


def outdated(lock: Lock, catalogues: dict[str, list[Catalogue]]) -> list[Update]:
    moved: dict[tuple[str, str, Optional[str]], list[str]] = {}
    for arch, cats in catalogues.items():
        by_repo = {c.repository: c for c in cats}
        al = lock.arches.get(arch)
        if al is None:
            continue
        for p in al.packages.values():
            cat = by_repo.get(p.repository)
            now = cat.packages.get(p.name) if cat else None
            new = now.version if now else None
            if new is None or compare(p.version, new) != 0:
                moved.setdefault((p.name, p.version, new), []).append(arch)
    return [Update(n, o, v, tuple(sorted(a))) for (n, o, v), a in sorted(moved.items(), key=lambda kv: kv[0][0])]


def _when(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def downgrades(previous: Lock, new: Lock) -> list[str]:
    """What would move backwards: a catalogue older than the locked one, a locked package going down.

    A mirror is trusted for nothing, but an old catalogue is still validly signed: replaying one
    is how a mirror rolls a release back to a version with known holes.
    """
    out = []
    for arch, al in sorted(new.arches.items()):
        old = previous.arches.get(arch)
        if old is None:
            continue
        for repo, t in sorted(al.built.items()):
            if repo in old.built and t < old.built[repo]:
                out.append(f"{arch}: repository {repo}: catalogue built {_when(t)} is older than the locked one "
                           f"({_when(old.built[repo])})")
        for name, p in sorted(al.packages.items()):
            q = old.packages.get(name)
            if q is not None and compare(p.version, q.version) < 0:
                out.append(f"{arch}: {name} would go down from {q.version} to {p.version}")
    return out


def relock(release: Release, family: Family, catalogues: dict[str, list[Catalogue]], previous: Optional[Lock],
           allow_downgrade: bool = False, warn=lambda msg: None) -> tuple[Lock, list[str]]:
    """A new lock from the catalogues, refused when it rolls the previous one back.

    Returns the lock and the downgrades accepted with ``allow_downgrade`` (for the report).
    """
    lock = make_lock(release, family, catalogues, warn=warn)
    found = downgrades(previous, lock) if previous is not None else []
    if found and not allow_downgrade:
        raise BuildError(f"release {release.name}: refusing catalogues that roll the lock back (a replayed old "
                         "catalogue, or a mirror serving stale data); pass --allow-downgrade if this is intended:\n  "
                         + "\n  ".join(found))
    for d in found:
        warn(f"{release.name}: accepted downgrade: {d}")
    return lock, found


def stale_catalogues(catalogues: dict[str, list[Catalogue]], max_age_days: Optional[int],
                     now: Optional[float] = None) -> list[str]:
    """Catalogues older than the release's maximum age (none set: none): a mirror may be frozen on an old,
    signed state."""
    if not max_age_days:
        return []
    now = time.time() if now is None else now
    out = []
    for arch, cats in sorted(catalogues.items()):
        for c in cats:
            if c.built and now - c.built > max_age_days * 86400:
                out.append(f"{arch}: repository {c.repository}: catalogue built {_when(c.built)}, "
                           f"{int((now - c.built) // 86400)} days ago (more than {max_age_days}): is the mirror frozen?")
    return out
