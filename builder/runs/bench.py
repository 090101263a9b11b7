"""Benchmarks (``make bench``): the family build against its own compression floor and an official-style baseline.

Runs, each in a child process so its peak RSS is its own:

- **family**: every flavour, both arches, from a warm download cache (the lock
  made and the packages fetched first, untimed) and a cold layer cache, at a
  mirror scale whose ``small`` image is ~150 MB uncompressed;
- **no-op**: the same build again (every layer from the layer cache);
- **bump**: one package (FreeBSD-utilities) moved, re-locked and fetched
  (untimed, like the family's download cache), and rebuilt; its share of
  the full build is shown whole and with the no-op's time (start-up, cache
  checks, image summary: what every run pays) taken from both;
- **large**: one ~1.2 GB ``small`` image (the official toolchain's size), amd64.

The family, no-op and bump are measured in rounds (``--repeat``, 3 by
default) and their medians reported, with the bump's share of the full build
taken within each round: a shared machine's speed can move by half
from one minute to the next. CPU seconds (the build and its workers) are shown beside
wall seconds. Two ratios are measured in the same run: the first family build against
single-threaded zlib level 6 over the same uncompressed layer bytes (the
compression floor of a one-core gzip pipeline), and against an official-style
pipeline (per flavour: extract the parent's rootfs tarball and the flavour's
own files into a directory, then ``tar -c | gzip -6`` the whole tree with
Debian's tar and gzip; it leaves out pkg's install time, so it flatters the
official pipeline). Prints a table and writes JSON (``--json-out``).
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
import zlib
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from builder.config.release import load_release
from builder.gen.repo import GenOptions, generate, scale_for
from builder.oci.layout import Layout

ROOT = Path(__file__).resolve().parent.parent.parent
FLAVOURS = ("static", "base", "minimal", "small")


def _tree_rss_kb(root: int) -> int:
    """Resident KB of a process and all its descendants (its compression workers), from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            pass
    return total


@dataclass(frozen=True)
class Run:
    seconds: float      # wall
    cpu: float          # user + system seconds of the build and its compression workers
    peak_mb: float      # peak RSS of the build with its workers
    stderr: str


@dataclass(frozen=True)
class Round:
    full: Run
    noop: Run
    bump: Run
    relock: float       # seconds of the untimed re-lock and fetch before the bump


def _run(cmd: list[str], env: dict) -> Run:
    """One builder run in a child process: its wall and CPU seconds, peak RSS and stderr.

    The build reports its own VmHWM as it exits (ru_maxrss would carry the parent's mark, and a
    child's ru_maxrss the RSS of the process it was forked from); the whole process tree is
    sampled every 50 ms for the workers, and the larger of the two is the peak. CPU time is
    what the run's reaped process tree used (RUSAGE_CHILDREN before and after): less moved than
    wall time by other load on the machine.
    """
    wrapper = ("import runpy, sys, atexit; "
               "atexit.register(lambda: print('peak-rss-kb', [l.split()[1] for l in open('/proc/self/status') "
               "if l.startswith('VmHWM')][0], file=sys.stderr)); "
               "sys.argv = ['builder'] + sys.argv[1:]; runpy.run_module('builder', run_name='__main__')")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", wrapper, *cmd], env=env, stdout=subprocess.DEVNULL, stderr=err,
                                text=True)
        tree = 0
        while proc.poll() is None:
            tree = max(tree, _tree_rss_kb(proc.pid))
            time.sleep(0.05)
        secs = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"benchmark build failed:\n{stderr[-4000:]}")
    own = next((int(l.split()[1]) for l in reversed(stderr.splitlines()) if l.startswith("peak-rss-kb ")), 0)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(secs, cpu, max(own, tree) / 1024, stderr)


def _manifests(layout: Layout, release: str, arches: list[str]) -> dict[tuple[str, str], dict]:
    out = {}
    for f in FLAVOURS:
        for a in arches:
            ref = f"freebsd{release}-{f}:{release}-{a}"
            if ref in layout.refs():
                out[(f, a)] = layout.read_json(layout.refs()[ref].digest)
    return out


def _layer_bytes(layout: Layout, digests: list[str]) -> int:
    n = 0
    for d in digests:
        with gzip.open(layout.blob_path(d)) as fh:
            while chunk := fh.read(1 << 20):
                n += len(chunk)
    return n


def zlib6_seconds(layout: Layout, digests: list[str]) -> float:
    """Single-threaded zlib level 6 over the uncompressed bytes of these layers (compression time only)."""
    total = 0.0
    for d in digests:
        with gzip.open(layout.blob_path(d)) as fh:
            z = zlib.compressobj(6, zlib.DEFLATED, 31)
            while chunk := fh.read(1 << 20):
                t0 = time.perf_counter()
                z.compress(chunk)
                total += time.perf_counter() - t0
            t0 = time.perf_counter()
            z.flush()
            total += time.perf_counter() - t0
    return total


def official_style_seconds(layout: Layout, mans: dict, arches: list[str], work: Path) -> float:
    """Per flavour and arch: extract the parent's rootfs tarball and the flavour's own layer, tar -c | gzip -6."""
    total = 0.0
    for a in arches:
        parent_tgz = None
        for f in FLAVOURS:
            man = mans.get((f, a))
            if man is None:
                continue
            tree = work / f"tree-{f}-{a}"
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir(parents=True)
            own = layout.blob_path(man["layers"][-1]["digest"])
            out = work / f"{f}-{a}.tar.gz"
            t0 = time.perf_counter()
            if parent_tgz is not None:
                subprocess.run(["tar", "-xzf", str(parent_tgz), "-C", str(tree)], check=True)
            subprocess.run(["tar", "-xzf", str(own), "-C", str(tree)], check=True)
            with open(out, "wb") as fh:
                tar = subprocess.Popen(["tar", "-c", "-C", str(tree), "."], stdout=subprocess.PIPE)
                subprocess.run(["gzip", "-6"], stdin=tar.stdout, stdout=fh, check=True)
                tar.wait()
            total += time.perf_counter() - t0
            shutil.rmtree(tree, ignore_errors=True)
            parent_tgz = out
    return total


@dataclass(frozen=True)
class Baselines:
    """What the family's first cold build is measured against, and the sizes it is measured in."""
    layout: Layout
    raw: int          # uncompressed bytes of every flavour's own layer, both arches
    small: int        # uncompressed bytes of the small image (amd64)
    z6: float         # one-core zlib -6 over ``raw``
    official: float   # the official-style build of the same trees


def _family_rounds(args, rel, mirror: Path, work: Path, env: dict, build: list[str], fetch: list[str],
                   where: list[str], arches: list[str]) -> tuple[list[Round], Baselines]:
    """Family (cold layers), no-op and one-package bump, ``args.repeat`` times from the same start."""
    rounds = []
    for n in range(args.repeat):
        if n:
            # back to the unbumped mirror and cold layer, scan and lock state
            generate(rel, mirror, arches, GenOptions(scale=scale_for(args.target_mb)))
            for d in ("cache", "out", "locks"):
                shutil.rmtree(work / d, ignore_errors=True)
        _run(fetch, env)   # the download cache, warm
        full = _run(build, env)
        if not n:
            base = _baselines(Layout(work / "out" / args.release), args.release, work)
        noop = _run(build, env)
        generate(rel, mirror, arches, GenOptions(scale=scale_for(args.target_mb),
                                                 bumps=(("FreeBSD-utilities", f"{args.release}p2"),)))
        # re-lock and fetch untimed, as for the family: the build starts from a warm download cache
        relock = _run(["--project", str(ROOT), "lock", args.release, *where], env).seconds + _run(fetch, env).seconds
        bump = _run(build, env)
        rounds.append(Round(full, noop, bump, relock))
    return rounds, base


def _baselines(layout: Layout, release: str, work: Path) -> Baselines:
    mans = _manifests(layout, release, ["amd64", "arm64"])
    own = sorted({m["layers"][-1]["digest"] for m in mans.values()})
    return Baselines(layout, _layer_bytes(layout, own),
                     _layer_bytes(layout, [l["digest"] for l in mans[("small", "amd64")]["layers"]]),
                     zlib6_seconds(layout, own),
                     official_style_seconds(layout, {(f, a): m for (f, a), m in mans.items()}, ["amd64", "arm64"],
                                            work / "official"))


def _rows(rounds: list[Round], base: Baselines, release: str) -> list[dict]:
    layout, raw, z6, official = base.layout, base.raw, base.z6, base.official
    built = [l for l in rounds[-1].bump.stderr.splitlines() if " layer sha256:" in l and " built (" in l]
    bump_own = sorted({m["layers"][-1]["digest"] for (f, a), m in
                       _manifests(layout, release, ["amd64", "arm64"]).items() if f == "small"})
    bump_mb = _layer_bytes(layout, bump_own) / 1e6

    def med(f) -> float:
        return median(map(f, rounds))

    shares = [r.bump.seconds / r.full.seconds for r in rounds]
    first = rounds[0].full.seconds   # the ratios: against the baselines timed right after it, in the same run
    rows = [{"run": "family (cold layers)", "seconds": med(lambda r: r.full.seconds),
             "cpu_s": med(lambda r: r.full.cpu), "mb": raw / 1e6,
             "peak_rss_mb": max(r.full.peak_mb for r in rounds), "vs_zlib6": first / z6,
             "official_style_over_ours": official / first},
            {"run": "no-op rebuild", "seconds": med(lambda r: r.noop.seconds), "cpu_s": med(lambda r: r.noop.cpu),
             "mb": raw / 1e6, "peak_rss_mb": max(r.noop.peak_mb for r in rounds)},
            {"run": "one package bump", "seconds": med(lambda r: r.bump.seconds), "cpu_s": med(lambda r: r.bump.cpu),
             "mb": bump_mb, "peak_rss_mb": max(r.bump.peak_mb for r in rounds), "layers_built": len(built),
             "byte_share": bump_mb * 1e6 / raw,
             # each round's own ratios (the machine's speed moves between rounds), then their median
             "share_of_full": median(shares), "share_of_full_range": [min(shares), max(shares)],
             "cpu_share_of_full": med(lambda r: r.bump.cpu / r.full.cpu),
             "above_noop_share": med(lambda r: (r.bump.seconds - r.noop.seconds)
                                     / (r.full.seconds - r.noop.seconds)),
             "relock_fetch_s": med(lambda r: r.relock)}]
    return rows


def _large(args, rel, work: Path, env: dict) -> dict:
    """The ~1.2 GB small image: peak memory must stay flat as images grow."""
    big = work / "mirror-large"
    shutil.rmtree(big, ignore_errors=True)
    generate(rel, big, ["amd64"], GenOptions(scale=scale_for(args.large_mb)))
    for d in ("cache-large", "out-large", "locks-large"):
        shutil.rmtree(work / d, ignore_errors=True)
    where = ["--arch", "amd64", "--mirror", f"file://{big}", "--keys", str(big / "keys"),
             "--lock-dir", str(work / "locks-large"), "--cache-dir", str(work / "cache-large")]
    large = ["--project", str(ROOT), "build", f"freebsd{args.release}-small", "--out", str(work / "out-large"),
             *where]
    _run(["--project", str(ROOT), "fetch", args.release, *where], env)
    big_run = _run(large, env)
    lay = Layout(work / "out-large" / args.release)
    man = _manifests(lay, args.release, ["amd64"])[("small", "amd64")]
    size = _layer_bytes(lay, [l["digest"] for l in man["layers"]])
    return {"run": "large small image", "seconds": big_run.seconds, "cpu_s": big_run.cpu, "mb": size / 1e6,
            "peak_rss_mb": big_run.peak_mb}


def _report(args, rows: list[dict], base: Baselines, gen_secs: float) -> None:
    small, raw, z6, official = base.small, base.raw, base.z6, base.official
    result = {"release": args.release, "cores": os.cpu_count(), "rounds": args.repeat, "generate_s": round(gen_secs, 2),
              "family_small_image_mb": round(small / 1e6, 1), "family_layer_mb": round(raw / 1e6, 1),
              "zlib6_single_thread_s": round(z6, 2), "official_style_s": round(official, 2),
              "runs": [{k: (round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v] if isinstance(v, list)
                        else v) for k, v in r.items()} for r in rows]}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"family: small image {result['family_small_image_mb']} MB; {result['family_layer_mb']} MB of layers "
          f"(both arches); zlib -6 one core {z6:.2f} s; official-style {official:.2f} s; {os.cpu_count()} cores")
    print(f"{'run':20} {'seconds':>8} {'CPU s':>8} {'MB':>8} {'MB/s':>8} {'peak RSS':>9}  notes "
          f"(seconds: median of {args.repeat} rounds)")
    for r in rows:
        notes = []
        if "vs_zlib6" in r:
            notes.append(f"{r['vs_zlib6']:.2f}x zlib-6 time; official-style takes {r['official_style_over_ours']:.1f}x "
                         "ours (round 1)")
        if "layers_built" in r:
            low, high = r["share_of_full_range"]
            notes.append(f"{r['layers_built']} layers built holding {r['byte_share']:.0%} of the bytes: "
                         f"{r['share_of_full']:.0%} of the full build ({low:.0%}-{high:.0%}; CPU "
                         f"{r['cpu_share_of_full']:.0%}; {r['above_noop_share']:.0%} with the no-op's time taken "
                         f"from both); re-lock and fetch {r['relock_fetch_s']:.2f} s before it")
        print(f"{r['run']:20} {r['seconds']:8.2f} {r['cpu_s']:8.2f} {r['mb']:8.1f} {r['mb'] / r['seconds']:8.1f} "
              f"{r['peak_rss_mb']:7.1f}MB  {'; '.join(notes)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m builder.runs.bench", description=__doc__.splitlines()[0])
    p.add_argument("--target-mb", type=float, default=150.0, help="uncompressed size of the family's small image")
    p.add_argument("--large-mb", type=float, default=1200.0, help="size of the large image (0: skip it)")
    p.add_argument("--release", default="14.2")
    p.add_argument("--work", type=Path, default=None, help="keep mirrors and outputs here")
    p.add_argument("--json-out", type=Path, default=Path("build/bench.json"))
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds of family, no-op and bump (medians are reported: the machine's speed moves)")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="freebsd-images-bench."))
    work.mkdir(parents=True, exist_ok=True)
    arches = ["amd64", "aarch64"]
    try:
        rel = load_release(ROOT / "releases" / f"{args.release}.yaml", ROOT)
        mirror = work / "mirror"
        shutil.rmtree(mirror, ignore_errors=True)
        t0 = time.perf_counter()
        generate(rel, mirror, arches, GenOptions(scale=scale_for(args.target_mb)))
        gen_secs = time.perf_counter() - t0
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
        env["PYTHONPATH"] = str(ROOT)
        env.pop("PYTHONDONTWRITEBYTECODE", None)   # a rebuild's time is not spent compiling Python
        for d in ("cache", "out", "locks"):
            shutil.rmtree(work / d, ignore_errors=True)
        where = ["--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"), "--lock-dir", str(work / "locks"),
                 "--cache-dir", str(work / "cache")]
        build = ["--project", str(ROOT), "build", "--release", args.release, "--all", "--out", str(work / "out"),
                 *where]
        fetch = ["--project", str(ROOT), "fetch", args.release, *where]
        rounds, base = _family_rounds(args, rel, mirror, work, env, build, fetch, where, arches)
        rows = _rows(rounds, base, args.release)
        if args.large_mb:
            rows.append(_large(args, rel, work, env))
        _report(args, rows, base, gen_secs)
        print(f"wrote {args.json_out}")
        return 1 if max(r["peak_rss_mb"] for r in rows) > 250 else 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
