"""Run a hostile-input scenario in a child process under memory and file-size limits.

A scenario that is not bounded must fail the test with a MemoryError (or a
refused write) in the child, not exhaust the machine running the suite.
``run("tests.bounded:NAME", args...)`` returns the child's report: {"ok": ...},
{"error": BuildError text}, {"memory_error": true} or {"exception": ...}.
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(target: str, *args, mem: int = 512 << 20, fsize: int = 64 << 20, timeout: float = 60) -> dict:
    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        # a write past RLIMIT_FSIZE then fails with EFBIG instead of killing the child
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.bounded", target, json.dumps(list(args))],
                          cwd=ROOT, env=env, preexec_fn=limits, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        return {"exception": f"child exited {proc.returncode}: {proc.stderr[-2000:]}"}
    return json.loads(lines[-1])


def _main() -> None:
    from builder.errors import BuildError
    module, name = sys.argv[1].split(":")
    args = json.loads(sys.argv[2])
    try:
        out = {"ok": getattr(importlib.import_module(module), name)(*args)}
    except MemoryError:
        out = {"memory_error": True}
    except BuildError as exc:
        out = {"error": str(exc)}
    except Exception as exc:  # reported to the test, which fails on it
        out = {"exception": f"{type(exc).__name__}: {str(exc)[:500]}"}
    print(json.dumps(out))


# --- scenarios ---------------------------------------------------------------------------

def fetch_catalogue_from(url: str, report: str) -> dict:
    from builder.common.http import Transport
    from builder.config.release import Repository
    from builder.resolve.client import fetch_catalogue
    t = Transport(retries=1, sleep=lambda s: None)
    try:
        fetch_catalogue(t, Repository("base", "b", url, "none"), "FreeBSD:14:amd64")
    finally:
        Path(report).write_text(json.dumps({"bytes": t.stats.bytes, "requests": t.stats.requests}))
    return {}


def fetch_package_from(url: str, name: str, pkgsize: int, cache: str, report: str) -> dict:
    from builder.common.http import Transport
    from builder.config.release import Repository
    from builder.resolve.cache import Cache
    from builder.resolve.catalogue import RemotePackage
    from builder.resolve.client import fetch_package
    pkg = RemotePackage(name="FreeBSD-clibs", origin="base/clibs", version="14.2p1", abi="FreeBSD:14:amd64", arch="",
                        repopath=name, sum="0" * 64, pkgsize=pkgsize, flatsize=0, deps=(), shlibs_required=(),
                        shlibs_provided=(), annotations=(), raw={})
    t = Transport(retries=1, sleep=lambda s: None)
    try:
        fetch_package(t, Cache(Path(cache)), Repository("base", "b", url, "none"), "FreeBSD:14:amd64", pkg)
    finally:
        Path(report).write_text(json.dumps({"bytes": t.stats.bytes, "requests": t.stats.requests}))
    return {}


def scan(path: str, name: str) -> dict:
    from builder.install.scan import scan_package
    scan_package(Path(path), name, "amd64", 1731456000)
    return {}


def scan_elves(path: str, name: str) -> dict:
    """Scan a package; how long it took and how many distinct DT_NEEDED string objects its files hold."""
    import time
    from builder.install.scan import scan_package
    start = time.monotonic()
    sp = scan_package(Path(path), name, "amd64", 1731456000)
    elves = [n.elf for n in sp.nodes if n.elf is not None]
    return {"seconds": time.monotonic() - start, "elf_files": len(elves),
            "needed": sum(len(e.needed) for e in elves),
            "needed_objects": len({id(s) for e in elves for s in e.needed})}


def closure_of(path: str, name: str) -> dict:
    """Scan a package and check the shared-library closure of it alone; the closure check's seconds."""
    import time
    from builder.errors import BuildError
    from builder.install import closure
    from builder.install.fsmodel import FileSystem
    from builder.install.scan import install, scan_package
    fs = FileSystem()
    install(fs, scan_package(Path(path), name, "amd64", 1731456000))
    start = time.monotonic()
    try:
        got, _ = closure.check(fs, "hostile image")
    except BuildError as exc:   # the refusal, and how long it took to come
        return {"seconds": time.monotonic() - start, "refused": str(exc)}
    return {"seconds": time.monotonic() - start, "needed": got.needed}


def cli(*argv: str) -> dict:
    import contextlib
    import io
    from builder.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    return {"code": code, "stderr": err.getvalue()}


def registry_read(host: str, kind: str, report: str) -> dict:
    """One registry read whose reply the test server makes huge: a manifest, the referrers API, a token."""
    from builder.oci.registry import Registry, remote_referrers
    reg = Registry(host, insecure=True, auth=("relng", "pw") if kind == "token" else None, retries=1,
                   sleep=lambda s: None)
    try:
        if kind == "referrers":
            remote_referrers(reg, "x", "sha256:" + "a" * 64)
        else:
            reg.get_manifest("x", "t")
    finally:
        Path(report).write_text(json.dumps({"bytes": reg.http.stats.bytes, "requests": reg.http.stats.requests}))
    return {}


def vuxml_load(spec: str) -> dict:
    """audit's vuln.xml reader on a file or URL (tests/test_audit.py: entity bombs, 2 GiB files and streams)."""
    from builder.common.http import Transport
    from builder.resolve.vuxml import load
    return load(spec, Transport(retries=1, sleep=lambda s: None)).summary()


if __name__ == "__main__":
    _main()
