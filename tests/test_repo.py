"""Repository client against the fixture made by FreeBSD's pkg, and against a
local HTTP server that injects faults."""
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard

from builder.cli import main
from builder.config.family import PackageRef
from builder.config.release import Repository
from builder.errors import BuildError
from builder.config.project import load_project
from builder.resolve.cache import Cache
from builder.resolve.catalogue import RemotePackage
from builder.resolve.client import fetch_catalogue, fetch_package
from builder.common.http import Transport
from builder.resolve.resolver import resolve
from tests.conftest import PKGREPO, ROOT
from tests.buildutil import fixture_release_yaml
from tests.httpfaults import FaultServer

KEYS = PKGREPO / "keys"


def repo(path: str, sig: str = "fingerprints", key: str = "base", fingerprints=KEYS, pubkey=KEYS / "repo.pub") -> Repository:
    return Repository(key=key, name=key, url=f"file://{PKGREPO}/${{ABI}}/{path}", signature_type=sig,
                      fingerprints=fingerprints, pubkey=pubkey)


@pytest.mark.parametrize("abi,path,sig,count", [
    ("FreeBSD:14:amd64", "base_release_2", "fingerprints", 20),
    ("FreeBSD:14:aarch64", "base_release_2", "fingerprints", 20),
    ("FreeBSD:14:amd64", "base_release_2-14.2p2", "fingerprints", 20),
    ("FreeBSD:14:amd64", "latest", "pubkey", 1),
    ("FreeBSD:15:amd64", "base_latest", "pubkey", 20),
])
def test_reads_every_fixture_catalogue(abi, path, sig, count):
    cat = fetch_catalogue(Transport(), repo(path, sig), abi)
    assert len(cat.packages) == count
    assert cat.kind == "data" and cat.built > 0
    assert all(p.abi == abi for p in cat.packages.values())


def test_packagesite_used_when_data_missing(tmp_path):
    d = tmp_path / "FreeBSD:14:amd64/r"
    shutil.copytree(PKGREPO / "FreeBSD:14:amd64/base_release_2", d)
    (d / "data.pkg").unlink()
    (d / "data.tzst").unlink()
    r = Repository("base", "b", f"file://{tmp_path}/${{ABI}}/r", "fingerprints", fingerprints=KEYS)
    cat = fetch_catalogue(Transport(), r, "FreeBSD:14:amd64")
    assert cat.kind == "packagesite" and len(cat.packages) == 20


def _repack(src: Path, dst: Path, edit):
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(src.read_bytes())).read()
    tin = tarfile.open(fileobj=io.BytesIO(raw))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = edit(m.name, tin.extractfile(m).read())
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    dst.write_bytes(zstandard.ZstdCompressor().compress(out.getvalue()))


@pytest.fixture
def tampered(tmp_path):
    d = tmp_path / "FreeBSD:14:amd64/base_release_2"
    shutil.copytree(PKGREPO / "FreeBSD:14:amd64/base_release_2", d)

    def edit(name, data):
        if name == "data":
            doc = json.loads(data)
            doc["packages"][0]["version"] = "99.0"
            return json.dumps(doc).encode()
        return data
    _repack(PKGREPO / "FreeBSD:14:amd64/base_release_2/data.pkg", d / "data.pkg", edit)
    return tmp_path


def test_tampered_catalogue_refused(tampered):
    r = Repository("base", "b", f"file://{tampered}/${{ABI}}/base_release_2", "fingerprints", fingerprints=KEYS)
    with pytest.raises(BuildError, match=r"repository base .*data.pkg: BAD SIGNATURE with key fixture.shared"):
        fetch_catalogue(Transport(), r, "FreeBSD:14:amd64")


def test_wrong_pubkey_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "other.pub").write_bytes(other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(BuildError, match=r"repository ports .*BAD SIGNATURE with key .*other.pub"):
        fetch_catalogue(Transport(), repo("latest", "pubkey", "ports", pubkey=tmp_path / "other.pub"), "FreeBSD:14:amd64")


def test_untrusted_fingerprint_refused(tmp_path):
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted/someone").write_text('function: "sha256"\nfingerprint: "' + "0" * 64 + '"\n')
    with pytest.raises(BuildError, match="is not trusted"):
        fetch_catalogue(Transport(), repo("base_release_2", fingerprints=tmp_path), "FreeBSD:14:amd64")


def test_revoked_fingerprint_refused(tmp_path):
    shutil.copytree(KEYS, tmp_path / "keys")
    (tmp_path / "keys/revoked").mkdir()
    shutil.copy(KEYS / "trusted/fixture.shared", tmp_path / "keys/revoked/fixture.shared")
    with pytest.raises(BuildError, match=r"REVOKED .*revoked/fixture.shared"):
        fetch_catalogue(Transport(), repo("base_release_2", fingerprints=tmp_path / "keys"), "FreeBSD:14:amd64")


def test_missing_signature_refused():
    # The pubkey repo has no data.sig/.pub: checking it as a fingerprints repo must fail, not pass.
    with pytest.raises(BuildError, match="no signature"):
        fetch_catalogue(Transport(), repo("latest", "fingerprints", "ports"), "FreeBSD:14:amd64")


def _reference_names():
    rows = (PKGREPO / "reference/FreeBSD:14:amd64/local.sqlite.sql").read_text().splitlines()
    return {r.split(",")[2].strip("'") for r in rows if r.startswith("INSERT INTO packages VALUES")}


def test_minimal_resolution_matches_reference_install():
    cats = [fetch_catalogue(Transport(), repo("base_release_2"), "FreeBSD:14:amd64"),
            fetch_catalogue(Transport(), repo("latest", "pubkey", "ports"), "FreeBSD:14:amd64")]
    family = load_project(ROOT).family
    res = resolve(cats, list(family.resolve("minimal").packages), "FreeBSD:14:amd64")
    reference = _reference_names()
    assert reference == {"FreeBSD-clibs", "FreeBSD-openssl-lib", "FreeBSD-openssl", "FreeBSD-caroot",
                         "FreeBSD-runtime", "FreeBSD-utilities", "FreeBSD-zoneinfo", "pkg"}
    assert reference - {"FreeBSD-utilities"} <= set(res.names)
    assert not any(n.endswith(("-dbg", "-dev", "-man")) for n in res.names)
    assert "FreeBSD-openssl" in res.automatic and "FreeBSD-runtime" not in res.automatic
    assert next(p for p in res.packages if p.name == "pkg").repository == "ports"
    # the install reference itself: its five named packages close over exactly the reference set
    named = ["FreeBSD-runtime", "FreeBSD-caroot", "FreeBSD-zoneinfo", "FreeBSD-utilities", "pkg"]
    assert set(resolve(cats, [PackageRef(n) for n in named], "FreeBSD:14:amd64").names) == reference


def test_resolver_errors_name_the_problem():
    cats = [fetch_catalogue(Transport(), repo("base_release_2"), "FreeBSD:14:amd64")]
    with pytest.raises(BuildError, match="unknown package FreeBSD-runtme .*did you mean FreeBSD-runtime"):
        resolve(cats, [PackageRef("FreeBSD-runtme")], "FreeBSD:14:amd64")
    with pytest.raises(BuildError, match="is for FreeBSD:14:amd64, not FreeBSD:14:aarch64"):
        resolve(cats, [PackageRef("FreeBSD-clibs")], "FreeBSD:14:aarch64")
    del cats[0].packages["FreeBSD-clibs"]
    with pytest.raises(BuildError, match="missing dependency FreeBSD-clibs, needed by FreeBSD-openssl-lib <- FreeBSD-openssl <- FreeBSD-caroot"):
        resolve(cats, [PackageRef("FreeBSD-caroot")], "FreeBSD:14:amd64")


def _catalogue(repository: str, packages: list[dict]):
    """A catalogue parsed from a hand-written pkg ``data`` document."""
    from builder.resolve.catalogue import Meta, parse_catalogue
    objs = []
    for p in packages:
        deps = {d: {"origin": "base/" + d.lower(), "version": "14.2"} for d in p.get("deps", ())}
        objs.append({"name": p["name"], "origin": "base/" + p["name"].lower(), "version": "14.2",
                     "abi": "FreeBSD:14:amd64", "path": f"{p['name']}-14.2.pkg", "sum": "0" * 64,
                     "deps": deps, **({"conflicts": p["conflicts"]} if "conflicts" in p else {})})
    meta = Meta.parse('version = 2;\npacking_format = "tzst";\n', f"{repository}/meta.conf")
    return parse_catalogue("data", json.dumps({"packages": objs}).encode(), repository, f"file:///{repository}", meta)


def test_conflicting_packages_refused_naming_both():
    base = _catalogue("base", [
        {"name": "FreeBSD-runtime", "deps": ["FreeBSD-clibs"]},
        {"name": "FreeBSD-clibs"},
        {"name": "FreeBSD-ssh", "deps": ["FreeBSD-clibs"]},
        {"name": "FreeBSD-sshd", "deps": ["FreeBSD-ssh"]},
        {"name": "FreeBSD-telnet", "conflicts": ["FreeBSD-rsh"]},
    ])
    ports = _catalogue("ports", [
        {"name": "openssh-portable", "conflicts": ["FreeBSD-ssh"]},
        {"name": "sshwrapper", "deps": ["openssh-portable"]},
    ])
    cats = [base, ports]
    abi = "FreeBSD:14:amd64"
    # a conflict with a package that is not in the set is no conflict
    ok = resolve(cats, [PackageRef("FreeBSD-runtime"), PackageRef("FreeBSD-telnet"), PackageRef("openssh-portable")], abi)
    assert ok.names == ["FreeBSD-clibs", "FreeBSD-runtime", "FreeBSD-telnet", "openssh-portable"]
    # both named directly
    with pytest.raises(BuildError, match="conflict") as e:
        resolve(cats, [PackageRef("FreeBSD-ssh"), PackageRef("openssh-portable", "ports")], abi)
    assert "openssh-portable" in str(e.value) and "FreeBSD-ssh" in str(e.value)
    # one of them only pulled in as a dependency: the one declaring the conflict, or the other
    for refs in ([PackageRef("FreeBSD-runtime"), PackageRef("FreeBSD-ssh"), PackageRef("sshwrapper")],
                 [PackageRef("openssh-portable"), PackageRef("FreeBSD-sshd")]):
        with pytest.raises(BuildError, match="conflict") as e:
            resolve(cats, refs, abi)
        assert "openssh-portable" in str(e.value) and "FreeBSD-ssh" in str(e.value)


def test_shlib_warnings(demo_mirror):
    r = Repository("base", "b", f"file://{demo_mirror}/${{ABI}}/base_release_2", "fingerprints", fingerprints=demo_mirror / "keys")
    cat = fetch_catalogue(Transport(), r, "FreeBSD:14:amd64")
    res = resolve([cat], [PackageRef("FreeBSD-libarchive")], "FreeBSD:14:amd64")
    assert any("FreeBSD-libarchive requires shared library libcrypto.so.30" in w for w in res.warnings)
    full = resolve([cat], [PackageRef("FreeBSD-libarchive"), PackageRef("FreeBSD-openssl-lib")], "FreeBSD:14:amd64")
    assert not full.warnings


def write_fixture_release(project: Path, base: str = "base_release_2"):
    (project / "releases").mkdir(exist_ok=True)
    for p in (project / "releases").glob("*.yaml"):
        p.unlink()
    (project / "releases/14.2.yaml").write_text(fixture_release_yaml(base))


def test_lock_is_stable_and_outdated_lists_moves(project_copy, capsys):
    write_fixture_release(project_copy)
    args = ["--project", str(project_copy), "lock", "14.2"]
    assert main(args) == 0
    lock_path = project_copy / "releases/14.2.lock.json"
    first = lock_path.read_bytes()
    assert main(args) == 0 and lock_path.read_bytes() == first
    doc = json.loads(first)
    pkgs = doc["arches"]["amd64"]["packages"]
    assert pkgs["FreeBSD-clibs"] == {"origin": "base/clibs", "version": "14.2p1", "repository": "base",
                                     "path": "FreeBSD-clibs-14.2p1.pkg", "size": 1329217,
                                     "sum": hashlib.sha256((PKGREPO / "FreeBSD:14:amd64/base_release_2/FreeBSD-clibs-14.2p1.pkg").read_bytes()).hexdigest()}
    assert doc["source-date-epoch"] > 1700000000
    assert main(["--project", str(project_copy), "outdated", "14.2"]) == 0
    capsys.readouterr()
    write_fixture_release(project_copy, "base_release_2-14.2p2")
    assert main(["--project", str(project_copy), "outdated", "14.2"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["FreeBSD-clibs 14.2p1 \u2192 14.2p2 (amd64)", "FreeBSD-openssl-lib 14.2p1 \u2192 14.2p2 (amd64)"]


def test_build_refuses_catalogue_that_lost_a_locked_package(project_copy):
    from builder.runs.context import Context, RunOptions
    write_fixture_release(project_copy)
    assert main(["--project", str(project_copy), "lock", "14.2"]) == 0
    write_fixture_release(project_copy, "base_release_2-14.2p2")
    where = RunOptions(project=project_copy)
    with pytest.raises(BuildError, match="FreeBSD-clibs is locked at 14.2p1 but the catalogue has 14.2p2"):
        Context.open(where, "14.2").ensure_lock()
    Context.open(where, "14.2").ensure_lock(update=True)


# --- transport, cache and faults -------------------------------------------------------------

PKG_DIR = PKGREPO / "FreeBSD:14:amd64/base_release_2"
PKG_NAME = "FreeBSD-clibs-14.2p1.pkg"


@pytest.fixture
def server():
    s = FaultServer(PKGREPO)
    yield s
    s.close()


def remote(server, name=PKG_NAME):
    raw = (PKG_DIR / name).read_bytes()
    return RemotePackage(name="FreeBSD-clibs", origin="base/clibs", version="14.2p1", abi="FreeBSD:14:amd64", arch="",
                         repopath=name, sum=hashlib.sha256(raw).hexdigest(), pkgsize=len(raw), flatsize=0, deps=(),
                         shlibs_required=(), shlibs_provided=(), annotations=(), raw={}), raw


def http_repo(server):
    return Repository("base", "b", f"pkg+{server.url}/${{ABI}}/base_release_2", "fingerprints", fingerprints=KEYS)


def fetch(server, tmp_path, transport=None):
    pkg, raw = remote(server)
    t = transport or Transport(sleep=lambda s: None)
    path = fetch_package(t, Cache(tmp_path / "cache"), http_repo(server), "FreeBSD:14:amd64", pkg)
    return path, raw, t


def assert_cache_clean(root: Path):
    for f in (root / "sha256").rglob("*"):
        if f.is_file():
            assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name


URL_PATH = f"/FreeBSD:14:amd64/base_release_2/{PKG_NAME}"


@pytest.mark.parametrize("faults,resumed", [
    (["reset"], 1), (["500", "500"], 0), (["truncate"], 1), (["429"], 0), (["slow:0.3"], 0),
    (["reset", "ignore-range"], 0),
])
def test_recovers_from_transient_faults(server, tmp_path, faults, resumed):
    server.plan(URL_PATH, faults)
    path, raw, t = fetch(server, tmp_path)
    assert path.read_bytes() == raw
    assert t.stats.resumed == resumed
    if "reset" in faults[0] or "truncate" in faults[0]:
        assert any(r.startswith("bytes=") for p, b, r in server.log if p == URL_PATH)
    assert_cache_clean(tmp_path / "cache")


def test_wrong_content_fails_cleanly(server, tmp_path):
    server.plan(URL_PATH, ["wrong", "wrong"])
    with pytest.raises(BuildError, match=r"package FreeBSD-clibs-14.2p1 .*checksum mismatch"):
        fetch(server, tmp_path)
    assert not list((tmp_path / "cache/sha256").rglob("*")) if (tmp_path / "cache/sha256").exists() else True
    assert not list((tmp_path / "cache/tmp").iterdir())


def test_wrong_content_once_is_refetched(server, tmp_path):
    server.plan(URL_PATH, ["wrong"])
    path, raw, _ = fetch(server, tmp_path)
    assert path.read_bytes() == raw


def test_persistent_errors_give_up_naming_the_url(server, tmp_path):
    server.plan(URL_PATH, ["500"] * 10)
    with pytest.raises(BuildError, match=r"http://127.0.0.1:\d+/FreeBSD:14:amd64/base_release_2/FreeBSD-clibs-14.2p1.pkg: giving up after 5 attempts \(HTTP 500\)"):
        fetch(server, tmp_path)
    assert_cache_clean(tmp_path / "cache")


def test_slow_first_byte_beyond_timeout_fails_cleanly(server, tmp_path):
    server.plan(URL_PATH, ["slow:1.0"] * 3)
    t = Transport(retries=2, timeout=(2, 0.3), sleep=lambda s: None)
    with pytest.raises(BuildError, match="giving up after 3 attempts .*Timeout"):
        fetch(server, tmp_path, t)


def test_not_found_is_not_retried(server, tmp_path):
    pkg, _ = remote(server)
    pkg = RemotePackage(**{**pkg.__dict__, "repopath": "nope.pkg"})
    t = Transport(sleep=lambda s: None)
    with pytest.raises(BuildError, match="nope.pkg: HTTP 404"):
        fetch_package(t, Cache(tmp_path / "c"), http_repo(server), "FreeBSD:14:amd64", pkg)
    assert t.stats.requests == 1


def test_catalogue_over_http_with_faults(server):
    server.plan("/FreeBSD:14:amd64/base_release_2/data.pkg", ["reset", "500"])
    cat = fetch_catalogue(Transport(sleep=lambda s: None), http_repo(server), "FreeBSD:14:amd64")
    assert len(cat.packages) == 20


def test_corrupt_cache_entry_is_refetched(server, tmp_path):
    path, raw, _ = fetch(server, tmp_path)
    path.chmod(0o644)
    path.write_bytes(raw[:100])  # a partial file under the final name
    again, _, t = fetch(server, tmp_path)
    assert again.read_bytes() == raw and t.stats.requests == 1
    # and a warm cache makes no request at all
    _, _, t2 = fetch(server, tmp_path)
    assert t2.stats.requests == 0


def test_typed_blake2_sums_pkg28(tmp_path):
    r = repo("base_latest", "pubkey")
    cat = fetch_catalogue(Transport(), r, "FreeBSD:15:amd64")
    pkg = cat.packages["FreeBSD-runtime"]
    assert pkg.sum.startswith("2$") and pkg.sha256 is None
    cache = Cache(tmp_path / "c")
    path = fetch_package(Transport(), cache, r, "FreeBSD:15:amd64", pkg)
    assert cache.lookup(pkg.sum) == path
    assert_cache_clean(tmp_path / "c")
    bad = RemotePackage(**{**pkg.__dict__, "sum": "2$" + "y" * 103})
    with pytest.raises(BuildError, match="checksum mismatch"):
        fetch_package(Transport(), Cache(tmp_path / "d"), r, "FreeBSD:15:amd64", bad)


def test_mirror_command_makes_an_offline_tree(project_copy, tmp_path, capsys):
    write_fixture_release(project_copy)
    dest = tmp_path / "mirror"
    assert main(["--project", str(project_copy), "mirror", "14.2", str(dest)]) == 0
    base = dest / "FreeBSD:14:amd64/base_release_2"
    assert (base / "meta.conf").exists() and (base / "data.pkg").exists()
    assert (base / "FreeBSD-runtime-14.2p1.pkg").read_bytes() == (PKG_DIR / "FreeBSD-runtime-14.2p1.pkg").read_bytes()
    assert not (base / "FreeBSD-runtime-dbg-14.2p1.pkg").exists()
    assert main(["--project", str(project_copy), "fetch", "14.2", "--mirror", f"file://{dest}"]) == 0
