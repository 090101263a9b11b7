"""Build the pinned writers from their sdists, as a host without wheels does (FreeBSD, macOS on a Python
without a wheel), into a scratch venv: tests/test_from_source.py and the nightly's from-source job.

deflate (libdeflate bundled) and zstandard (libzstd 1.5.6 bundled) build from their sdists with
`pip wheel --no-binary`. apsw's sdist ships no SQLite: its setup.apsw says `fetch = True`, so even
pip's metadata step downloads sqlite-autoconf-NNNNNNN.tar.gz from sqlite.org, checks it against the
sdist's `checksums` file and runs its ./configure. Here that tarball is supplied offline instead
(FREEBSD_IMAGES_SOURCES: a directory holding it), checked against the same `checksums` line, and
laid out as apsw's fetch lays it out (sqlite3/ next to setup.py, configured); only `fetch = True` is
dropped from setup.apsw, so the build options are those of the PyPI wheels.

    python -m tests.from_source fetch-sqlite DIR   download that tarball into DIR (needs sqlite.org)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import urljoin
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
WRITERS = ("apsw", "deflate", "zstandard")
SOURCES_ENV = "FREEBSD_IMAGES_SOURCES"
INDEX = "https://pypi.org/simple"


class SourceError(RuntimeError):
    """Something the from-source build needs is missing or not what it must be."""


def pinned(name: str) -> str:
    """The version constraints.txt pins for a distribution (markers and comments ignored)."""
    for line in CONSTRAINTS.read_text().splitlines():
        m = re.match(rf"\s*{re.escape(name)}\s*==\s*([^\s;#]+)", line, re.I)
        if m:
            return m.group(1)
    raise SourceError(f"constraints.txt pins no {name}")


def sqlite_tarball_name(apsw_version: str) -> str:
    """apsw A.B.C.D bundles SQLite A.B.C, which sqlite.org ships as sqlite-autoconf-ABBCC00.tar.gz."""
    a, b, c = (int(x) for x in apsw_version.split(".")[:3])
    return f"sqlite-autoconf-{a}{b:02d}{c:02d}00.tar.gz"


def run(argv: list[str], cwd: Optional[Path] = None, env: Optional[dict] = None, what: str = "") -> str:
    r = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SourceError(f"{what or argv[0]} failed ({' '.join(map(str, argv))}):\n"
                          f"{(r.stdout + r.stderr)[-6000:]}")
    return r.stdout


def pip_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


# --- the toolchain ----------------------------------------------------------------------------

def missing_toolchain() -> list[str]:
    """What a C extension build with this interpreter lacks, as Debian package names."""
    missing = []
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not (shutil.which(cc) or shutil.which("cc")):
        missing.append(f"a C compiler ({cc}: build-essential)")
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        missing.append(f"the Python headers ({include}/Python.h: python3-dev)")
    return missing


# --- sdists and the SQLite tarball --------------------------------------------------------------

def index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or INDEX).rstrip("/")


def sdist_link(name: str, version: str) -> tuple[str, str]:
    """(url, sha256) of a distribution's sdist from the package index's simple API (PEP 691, else PEP 503)."""
    import requests
    page = f"{index_url()}/{re.sub(r'[-_.]+', '-', name).lower()}/"
    r = requests.get(page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}, timeout=60)
    r.raise_for_status()
    wanted = {f"{name}-{version}.tar.gz", f"{name.replace('-', '_')}-{version}.tar.gz"}
    if r.headers.get("content-type", "").startswith("application/vnd.pypi.simple.v1+json"):
        for f in r.json()["files"]:
            if f["filename"] in wanted:
                return urljoin(page, f["url"]), f["hashes"]["sha256"]
    else:
        for href, text in re.findall(r'<a[^>]+href="([^"]+)"[^>]*>([^<]+)</a>', r.text):
            if text.strip() in wanted and "#sha256=" in href:
                url, digest = href.split("#sha256=")
                return urljoin(page, url.replace("&amp;", "&")), digest
    raise SourceError(f"{page} lists no sdist {sorted(wanted)[0]}")


def download_sdist(name: str, version: str, dest: Path) -> Path:
    """The sdist, checked against the sha256 the index publishes (as pip checks it)."""
    import requests
    url, digest = sdist_link(name, version)
    r = requests.get(url, timeout=300)
    r.raise_for_status()
    if hashlib.sha256(r.content).hexdigest() != digest:
        raise SourceError(f"{url}: sha256 is not the index's {digest}")
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / url.rsplit("/", 1)[-1]
    out.write_bytes(r.content)
    return out


def extract(archive: Path, into: Path) -> Path:
    """Unpack a .tar.gz; returns its top directory."""
    with tarfile.open(archive) as tar:
        tops = {m.name.split("/")[0] for m in tar.getmembers()}
        if len(tops) != 1:
            raise SourceError(f"{archive.name}: not one top directory ({sorted(tops)[:5]})")
        kw = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
        tar.extractall(into, **kw)
    return into / tops.pop()


def checksum_line(checksums: Path, tarball_name: str) -> tuple[str, int, str, str]:
    """apsw's own record of the tarball its fetch downloads: (url, length, sha256, sha3_256)."""
    for line in checksums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and not line.lstrip().startswith("#") and parts[0].endswith("/" + tarball_name):
            return parts[0], int(parts[1]), parts[2], parts[3]
    raise SourceError(f"{checksums} has no line for {tarball_name}")


def verify_tarball(tarball: Path, expected: tuple[str, int, str, str]) -> None:
    data = tarball.read_bytes()
    got = (len(data), hashlib.sha256(data).hexdigest(), hashlib.sha3_256(data).hexdigest())
    if got != expected[1:]:
        raise SourceError(f"{tarball} is not the file apsw's checksums record for {expected[0]}: "
                          f"length/sha256/sha3_256 {got}, want {expected[1:]}")


def find_sqlite_tarball(apsw_version: str) -> tuple[Optional[Path], str]:
    """(the supplied tarball or None, a sentence naming what is missing)."""
    name = sqlite_tarball_name(apsw_version)
    where = os.environ.get(SOURCES_ENV, "")
    why = (f"{name} (SQLite {'.'.join(apsw_version.split('.')[:3])}, which apsw {apsw_version}'s sdist downloads "
           f"from sqlite.org at build time; no PyPI, npm or Debian package ships that release): download it where "
           f"sqlite.org is reachable (python -m tests.from_source fetch-sqlite DIR) and set {SOURCES_ENV}=DIR")
    if not where:
        return None, f"not available offline: {why}"
    path = Path(where) / name
    if not path.is_file():
        return None, f"{SOURCES_ENV}={where} holds no {why}"
    return path, ""


def prepare_apsw(sdist: Path, tarball: Path, work: Path) -> Path:
    """apsw's source tree laid out as its `fetch` leaves it, from the supplied tarball, ready to build offline."""
    tree = extract(sdist, work)
    verify_tarball(tarball, checksum_line(tree / "checksums", tarball.name))
    top = extract(tarball, tree)
    if not (top / "configure").is_file() or not (top / "sqlite3.c").is_file():
        raise SourceError(f"{tarball.name}: no configure and sqlite3.c at its top")
    top.rename(tree / "sqlite3")
    run(["sh", "./configure"], cwd=tree / "sqlite3", what="SQLite's configure")   # as apsw's fetch does
    cfg = tree / "setup.apsw"
    lines = cfg.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if not re.fullmatch(r"\s*fetch\s*=\s*True\s*", ln)]
    if len(kept) != len(lines) - 1:
        raise SourceError(f"{cfg}: no single `fetch = True` line to drop; apsw's build changed, look again")
    cfg.write_text("".join(kept))
    return tree


def fetch_sqlite(dest: Path) -> Path:
    """Download the tarball the pinned apsw's fetch would, checked against that sdist's checksums file."""
    import requests
    version = pinned("apsw")
    with tempfile.TemporaryDirectory() as tmp:
        tree = extract(download_sdist("apsw", version, Path(tmp)), Path(tmp))
        line = checksum_line(tree / "checksums", sqlite_tarball_name(version))
    r = requests.get(line[0], timeout=300)
    r.raise_for_status()
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / sqlite_tarball_name(version)
    out.write_bytes(r.content)
    verify_tarball(out, line)
    return out


# --- wheels and the scratch venv -------------------------------------------------------------

def make_venv(path: Path) -> list[str]:
    """A fresh venv of this interpreter's base Python; returns the argv prefix that runs its pip."""
    py = path / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "venv", str(path)], capture_output=True, text=True)
    if r.returncode == 0 and subprocess.run([py, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [str(py), "-m", "pip"]
    # no ensurepip (Debian's python3 without python3-venv): this interpreter's pip installs into it
    shutil.rmtree(path, ignore_errors=True)
    run([sys.executable, "-m", "venv", "--without-pip", path], what="python -m venv")
    return [sys.executable, "-m", "pip", "--python", str(py)]


def build_wheels(pip: list[str], names: tuple[str, ...], wheelhouse: Path) -> dict[str, Path]:
    """Wheels of the pinned versions built here from their sdists (no pip cache: a real compile)."""
    run(pip + ["wheel", "--no-deps", "--no-cache-dir", "--no-binary", ",".join(names), "-w", wheelhouse]
        + [f"{n}=={pinned(n)}" for n in names], env=pip_env(), what=f"building {', '.join(names)} from source")
    return {n: wheel_of(wheelhouse, n) for n in names}


def build_apsw_wheel(pip: list[str], tree: Path, wheelhouse: Path) -> Path:
    run(pip + ["wheel", "--no-deps", "--no-cache-dir", "-w", wheelhouse, tree], env=pip_env(),
        what="building apsw from source")
    return wheel_of(wheelhouse, "apsw")


def wheel_of(wheelhouse: Path, name: str) -> Path:
    found = sorted(wheelhouse.glob(f"{name}-{pinned(name)}-*.whl"))
    if len(found) != 1:
        raise SourceError(f"{wheelhouse}: not one wheel of {name} {pinned(name)}: {[p.name for p in found]}")
    return found[0]


def dependencies() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def install(pip: list[str], wheels: list[Path]) -> None:
    """The given wheels, and every other dependency of the project as a wheel at its pinned version."""
    run(pip + ["install", "--no-cache-dir", "--only-binary", ":all:", "-c", CONSTRAINTS] + wheels + dependencies(),
        env=pip_env(), what="installing into the scratch venv")


PROBE = """
import json, apsw, deflate, zstandard
from importlib import metadata
from builder.common import writers
print(json.dumps({
    "sqlite": apsw.sqlite_lib_version(), "amalgamation": bool(apsw.using_amalgamation),
    "zstd": ".".join(map(str, zstandard.ZSTD_VERSION)), "zstandard_backend": zstandard.backend,
    "versions": {d: metadata.version(d) for d in %r},
    "from": {d: json.loads(metadata.distribution(d).read_text("direct_url.json") or "{}").get("url", "")
             for d in %r},
    "drift": writers.drift(writers.running()),
}))
""" % (WRITERS, WRITERS)


def what_runs(python: str) -> dict:
    """In the venv: the writers' versions, where each was installed from, and any drift from the pins."""
    env = dict(pip_env(), PYTHONPATH=str(ROOT))
    return json.loads(run([python, "-c", PROBE], env=env, what="probing the scratch venv"))


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "fetch-sqlite":
        print(fetch_sqlite(Path(argv[1])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
