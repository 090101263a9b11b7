"""Build twice under perturbation and diff: the reproducibility check.

Each build runs as its own process in its own temporary home, differing in
time zone, umask, locale, hash seed, working directory, parallelism, the
order the catalogue lists packages in, and the download cache (cold for the
first, warm for the second). Both use the same lock file and epoch.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.diff import Difference, diff

PERTURBATIONS = (
    {"TZ": "UTC", "LC_ALL": "C", "PYTHONHASHSEED": "1", "umask": "022", "jobs": "1", "perturb": ""},
    {"TZ": "Asia/Kathmandu", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "271828", "umask": "077", "jobs": "2",
     "perturb": "reverse"},
)


@dataclass
class VerifyResult:
    layouts: tuple[Path, Path]
    differences: list[Difference]
    logs: tuple[str, str]


def verify(build_argv: list[str], release: str, work: Path | None = None, project: Path | None = None) -> VerifyResult:
    """build_argv: the `build` arguments after the command name (targets, mirror, keys, --lock ...)."""
    root = Path(work or tempfile.mkdtemp(prefix="freebsd-images-verify."))
    project_args = ["--project", str(project)] if project else []
    layouts, logs = [], []
    first_cache = root / "home0" / "cache"
    for i, p in enumerate(PERTURBATIONS):
        home = root / f"home{i}"
        (home / "cwd").mkdir(parents=True, exist_ok=True)
        out = home / "out"
        env = dict(os.environ, HOME=str(home), TZ=p["TZ"], LC_ALL=p["LC_ALL"], PYTHONHASHSEED=p["PYTHONHASHSEED"],
                   XDG_CACHE_HOME=str(first_cache), FREEBSD_IMAGES_PERTURB=p["perturb"],
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent)]
                                              + [x for x in [os.environ.get("PYTHONPATH")] if x]))
        argv = [sys.executable, "-m", "builder", *project_args, "build", *build_argv, "--out", str(out),
                "--jobs", p["jobs"]]
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
        r = subprocess.run(["sh", "-c", f"umask {p['umask']}; exec {quoted}"], cwd=home / "cwd", env=env,
                           capture_output=True, text=True)
        logs.append(r.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"build {i + 1} of 2 failed:\n{r.stderr}")
        layouts.append(out / release)
    return VerifyResult((layouts[0], layouts[1]), diff(str(layouts[0]), str(layouts[1])), (logs[0], logs[1]))
