"""Build twice under perturbation and diff: the reproducibility check.

Each build runs as its own process in its own temporary home, differing in
time zone, umask, locale, hash seed, working directory, parallelism and
the download cache (cold for the first, warm for the second). Both use the
same lock file and epoch. (Catalogue order cannot leak: the parser sorts
packages by name, which a unit test proves on a reversed catalogue.)
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from builder.common.log import Log
from builder.errors import BuildError
from builder.oci.layout import Layout
from builder.prove.diff import Difference, Source, diff, diff_sources
from builder.runs.context import Context, RunOptions
from builder.runs.images import ImageOptions, build_release

PERTURBATIONS = (
    {"TZ": "UTC", "LC_ALL": "C", "PYTHONHASHSEED": "1", "umask": "022", "jobs": "1"},
    {"TZ": "Asia/Kathmandu", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "271828", "umask": "077", "jobs": "2"},
)


@dataclass
class VerifyResult:
    layouts: tuple[Path, Path]
    differences: list[Difference]


@dataclass(frozen=True)
class VerifyRequest:
    """What both builds are given: everything that may shape output bytes, and nothing else."""
    project: Path
    release: str
    lock: Path
    flavours: tuple[str, ...] = ()          # empty: every flavour
    arches: tuple[str, ...] = ()            # empty: every arch of the release
    mirror: Optional[str] = None
    keys: Optional[Path] = None
    zstd: bool = False
    squash: bool = False
    family: Optional[str] = None            # None: the default family
    allow_writer_drift: bool = False

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, doc: dict) -> "VerifyRequest":
        paths = {"project", "lock", "keys"}
        return cls(**{f.name: (Path(doc[f.name]) if f.name in paths and doc[f.name] is not None
                               else tuple(doc[f.name]) if isinstance(doc[f.name], list) else doc[f.name])
                      for f in dataclasses.fields(cls)})


def build_one(req: VerifyRequest, out: Path, jobs: int) -> None:
    """One of the two builds, in the process verify started: the request's inputs, no others."""
    ctx = Context.open(RunOptions(project=req.project, arches=req.arches, mirror=req.mirror, keys=req.keys,
                                  lock=Path(req.lock).resolve(), family=req.family), req.release)
    lock = ctx.ensure_lock(check=False)
    build_release(ctx, lock, out, ImageOptions(flavours=req.flavours, compression="zstd" if req.zstd else "gzip",
                                               squash=req.squash, jobs=jobs,
                                               allow_writer_drift=req.allow_writer_drift), Log(-1))


def verify(req: VerifyRequest, work: Optional[Path] = None) -> VerifyResult:
    root = Path(work or tempfile.mkdtemp(prefix="freebsd-images-verify.")).resolve()
    # the builds run in directories of their own: a path relative to ours would name another file there
    request = json.dumps(replace(req, **{k: Path(getattr(req, k)).resolve() for k in ("project", "lock", "keys")
                                         if getattr(req, k) is not None}).to_json())
    release = req.release
    layouts = []
    first_cache = root / "home0" / "cache"
    for i, p in enumerate(PERTURBATIONS):
        home = root / f"home{i}"
        (home / "cwd").mkdir(parents=True, exist_ok=True)
        out = home / "out"
        env = dict(os.environ, HOME=str(home), TZ=p["TZ"], LC_ALL=p["LC_ALL"], PYTHONHASHSEED=p["PYTHONHASHSEED"],
                   XDG_CACHE_HOME=str(first_cache),
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2])]
                                              + [x for x in [os.environ.get("PYTHONPATH")] if x]))
        argv = [sys.executable, "-m", "builder.runs.verify", request, str(out), p["jobs"]]
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
        r = subprocess.run(["sh", "-c", f"umask {p['umask']}; exec {quoted}"], cwd=home / "cwd", env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"verify: build {i + 1} of 2 failed:\n{r.stderr}")
        layouts.append(out / release)
    return VerifyResult((layouts[0], layouts[1]), diff(str(layouts[0]), str(layouts[1])))


def against(published: Path, refs: Optional[list[str]], independent: Path) -> list[Difference]:
    """Where the layout about to be published differs, ref by ref, from an independent build of the same inputs.

    The defence that holds when a cache is poisoned in a way no local check sees: verify's first
    build starts from empty caches, so whatever the published build took from a cache, it must
    have the bytes this one made without."""
    mine, theirs = Layout(published), Layout(independent)
    ours, have = mine.refs(), theirs.refs()
    if refs is None:        # every ref both hold: the published layout may hold other families' and flavours'
        refs = [r for r in ours if r in have]
    out: list[Difference] = []
    for ref in sorted(refs):
        if ref not in have:
            out.append(Difference(ref, "ref", field="not built by the independent build"))
        elif ours[ref].digest != have[ref].digest:
            out += diff_sources(Source(str(published), mine, ref), Source(str(independent), theirs, ref))
    return out


if __name__ == "__main__":
    # the builds verify runs: ``python -m builder.runs.verify REQUEST-JSON OUT JOBS``
    try:
        build_one(VerifyRequest.from_json(json.loads(sys.argv[1])), Path(sys.argv[2]), int(sys.argv[3]))
    except BuildError as exc:
        sys.exit(f"error: {exc}")
