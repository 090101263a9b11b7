"""Benchmark (``make bench``): build a ~150 MB ``small`` image from the generator.

Prints seconds, MB/s (uncompressed image bytes per second) and the build
process's peak RSS, for a cold build (empty cache, empty layout) and a warm
rebuild. The build runs in a child process so its peak RSS is its own.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from builder.config.release import load_release
from builder.gen.repo import GenOptions, generate, scale_for, tree_size
from builder.oci.layout import Layout

ROOT = Path(__file__).resolve().parents[2]   # the project root: builder/runs/bench.py


def _image_bytes(layout: Layout, ref: str) -> tuple[int, int]:
    man = layout.read_json(layout.refs()[ref].digest)
    cfg = layout.read_json(man["config"]["digest"])
    compressed = sum(l["size"] for l in man["layers"])
    raw = 0
    for l in man["layers"]:
        with gzip.open(layout.blob_path(l["digest"])) as fh:
            while chunk := fh.read(1 << 20):
                raw += len(chunk)
    assert len(cfg["rootfs"]["diff_ids"]) == len(man["layers"])
    return raw, compressed


def _run(cmd: list[str], env: dict) -> tuple[float, int, str]:
    """Wall seconds, the child's own peak RSS (kB) and its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"benchmark build failed:\n{err}")
    return secs, _last_peak(err), out


def _last_peak(stderr: str) -> int:
    for line in reversed(stderr.splitlines()):
        if line.startswith("peak-rss-kb "):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m builder.runs.bench", description=__doc__.splitlines()[0])
    p.add_argument("--target-mb", type=float, default=150.0, help="uncompressed size of the small image")
    p.add_argument("--release", default="14.2")
    p.add_argument("--work", type=Path, default=None, help="keep the mirror and outputs here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="freebsd-images-bench."))
    try:
        rel = load_release(ROOT / "releases" / f"{args.release}.yaml", ROOT)
        mirror = work / "mirror"
        t0 = time.perf_counter()
        if not (mirror / "keys").exists():
            generate(rel, mirror, ["amd64"], GenOptions(scale=scale_for(args.target_mb)))
        gen_secs = time.perf_counter() - t0
        env = dict(os.environ, XDG_CACHE_HOME=str(work / "cache"), PYTHONPATH=str(ROOT))
        shutil.rmtree(work / "cache", ignore_errors=True)
        shutil.rmtree(work / "out", ignore_errors=True)
        image = f"freebsd{args.release}-small"
        # The child reports its own peak RSS when it exits: VmHWM, because ru_maxrss
        # carries the (generator-sized) parent's high-water mark over fork and exec.
        wrapper = ("import runpy, sys, atexit; "
                   "atexit.register(lambda: print('peak-rss-kb', [l.split()[1] for l in open('/proc/self/status') "
                   "if l.startswith('VmHWM')][0], file=sys.stderr)); "
                   "sys.argv = ['builder'] + sys.argv[1:]; runpy.run_module('builder', run_name='__main__')")
        cmd = [sys.executable, "-c", wrapper, "--project", str(ROOT), "build", image, "--arch", "amd64",
               "--out", str(work / "out"), "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"),
               "--lock-dir", str(work / "locks"), "--jobs", "1"]
        rows = []
        for label in ("cold", "warm"):
            secs, peak_kb, _ = _run(cmd, env)
            rows.append((label, secs, peak_kb))
        layout = Layout(work / "out" / args.release)
        raw, compressed = _image_bytes(layout, f"{image}:{args.release}-amd64")
        result = {
            "image": image, "mirror_mb": round(tree_size(mirror) / 1e6, 1), "generate_s": round(gen_secs, 2),
            "image_mb": round(raw / 1e6, 1), "compressed_mb": round(compressed / 1e6, 1),
            "runs": [{"run": label, "seconds": round(s, 2), "mb_per_s": round(raw / 1e6 / s, 1),
                      "peak_rss_mb": round(kb / 1024, 1)} for label, s, kb in rows],
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{image} (amd64): {result['image_mb']} MB uncompressed, {result['compressed_mb']} MB gzip; "
                  f"mirror {result['mirror_mb']} MB generated in {result['generate_s']} s")
            for r in result["runs"]:
                print(f"  {r['run']:5} build: {r['seconds']:6.2f} s  {r['mb_per_s']:6.1f} MB/s  "
                      f"peak RSS {r['peak_rss_mb']:6.1f} MB")
        limit = 250
        if max(r["peak_rss_mb"] for r in result["runs"]) > limit:
            print(f"peak RSS above {limit} MB", file=sys.stderr)
            return 1
        return 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
