"""Golden digests: the demo family built from the generator at its fixed seed, both arches, gzip and zstd.

The expected digests live in tests/fixtures/golden/demo-14.2.json, written by
this module's main (``make golden``) and committed. Any change to them is a
format change (README, "Golden digests"): a new Python's tarfile, a dependency
release or a refactor that changes output bytes shows up here first.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "demo-14.2.json"
RELEASE = "14.2"
COMPRESSIONS = ("gzip", "zstd")
REGENERATE = "make golden (then commit tests/fixtures/golden/; README: a format change)"


def generate_mirror(out: Path) -> Path:
    from builder.config.release import load_release
    from builder.gen.repo import GenOptions, generate
    generate(load_release(ROOT / "releases" / f"{RELEASE}.yaml", ROOT), out, opts=GenOptions())
    return out


def build_refs(mirror: Path, work: Path, compression: str, prefix: list[str] | None = None,
               env: dict | None = None, extra: tuple[str, ...] = (), tag: str = "") -> dict[str, str]:
    """Build the demo family in a child process; ref -> digest from the layout's index.json."""
    out = work / f"out-{compression}{tag}"
    argv = (prefix or [sys.executable, "-m", "builder"]) + [
        "--project", str(ROOT), "build", "--release", RELEASE, "--all", "--out", str(out),
        "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"), "--lock-dir", str(work / "locks"),
        "--cache-dir", str(work / "cache")] + (["--zstd"] if compression == "zstd" else []) + list(extra)
    child = dict(env) if env is not None else {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    child["PYTHONPATH"] = str(ROOT)
    r = subprocess.run(argv, env=child, capture_output=True, text=True, cwd=work)
    if r.returncode != 0:
        raise RuntimeError(f"build failed ({' '.join(argv)}):\n{r.stderr[-4000:]}")
    (work / f"stderr-{compression}{tag}").write_text(r.stderr)
    return index_refs(out / RELEASE)


def index_refs(layout: Path) -> dict[str, str]:
    """ref name -> digest from index.json as plain JSON; referrers (SBOM, provenance) are unnamed
    entries, left out here and checked in tests/test_trust.py."""
    index = json.loads((Path(layout) / "index.json").read_text())
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]
            if "org.opencontainers.image.ref.name" in (m.get("annotations") or {})}


def build_all(mirror: Path, work: Path, **kw) -> dict[str, dict[str, str]]:
    return {c: build_refs(mirror, work, c, **kw) for c in COMPRESSIONS}


def main() -> int:
    import tempfile
    with tempfile.TemporaryDirectory(prefix="golden.") as d:
        work = Path(d)
        mirror = generate_mirror(work / "mirror")
        doc = {"release": RELEASE, "regenerate": REGENERATE, "refs": build_all(mirror, work)}
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {sum(len(v) for v in doc['refs'].values())} refs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
