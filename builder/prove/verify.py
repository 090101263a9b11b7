"""Build twice under perturbation and diff: the reproducibility check.

Each build runs as its own process in its own temporary home, differing in
time zone, umask, locale, hash seed, working directory, parallelism and
the download cache (cold for the first, warm for the second). Both use the
same lock file and epoch. (Catalogue order cannot leak: the parser sorts
packages by name, which a unit test proves on a reversed catalogue.)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from builder.errors import BuildError
from builder.prove.diff import Difference, diff

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

    def build_argv(self) -> list[str]:
        argv = ["--release", self.release] + (["--family", self.family] if self.family else [])
        argv += [x for f in self.flavours for x in ("--flavour", f)] if self.flavours else ["--all"]
        argv += ["--lock", str(Path(self.lock).resolve())]
        argv += [x for a in self.arches for x in ("--arch", a)]
        if self.mirror:
            argv += ["--mirror", self.mirror]
        if self.keys:
            argv += ["--keys", str(Path(self.keys).resolve())]
        return argv + [f for f, on in (("--zstd", self.zstd), ("--squash", self.squash)) if on]


def verify(req: VerifyRequest, work: Optional[Path] = None) -> VerifyResult:
    root = Path(work or tempfile.mkdtemp(prefix="freebsd-images-verify."))
    build_argv = req.build_argv()
    project_args = ["--project", str(req.project)]
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
        argv = [sys.executable, "-m", "builder", *project_args, "build", *build_argv, "--out", str(out),
                "--jobs", p["jobs"]]
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
        r = subprocess.run(["sh", "-c", f"umask {p['umask']}; exec {quoted}"], cwd=home / "cwd", env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"verify: build {i + 1} of 2 failed:\n{r.stderr}")
        layouts.append(out / release)
    return VerifyResult((layouts[0], layouts[1]), diff(str(layouts[0]), str(layouts[1])))
