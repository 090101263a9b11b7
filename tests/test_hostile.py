"""Hostile inputs: servers, repositories, packages, registries and project files that
try to exhaust memory, disk or time, steal credentials, or crash the builder.

Scenarios that would exhaust the machine when their rule is broken run in a child
process under RLIMIT_AS / RLIMIT_FSIZE (tests/bounded.py); servers stream made-up
data from a generator and never allocate it.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
import requests
import zstandard

from builder.cli import main
from builder.common.http import CHUNK, RetryPolicy, Transport
from builder.config.release import Repository
from builder.errors import BuildError
from builder.gen.repo import _sign_archive
from builder.oci.layout import INDEX_MT, MANIFEST_MT, Layout
from builder.oci.registry import Registry
from builder.resolve.cache import Cache
from builder.resolve.catalogue import RemotePackage
from builder.resolve.client import META_LIMIT, fetch_catalogue, fetch_package
from tests import bounded
from tests.buildutil import read_members
from tests.httpfaults import ScriptedServer, endless, reply

ABI = "FreeBSD:14:amd64"


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


def report(path: Path) -> dict:
    return json.loads(path.read_text())


# --- 3a: meta.conf and catalogues are read with a bound -----------------------------------

@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "chunked"])
def test_huge_meta_conf_refused_while_streaming(server, tmp_path, announce):
    # 3 GiB of meta.conf: 6.3 GB peak before the size check, when the whole body was read first
    server.route(f"/{ABI}/r/meta.conf", endless(3 << 30, announce=announce, server=server))
    res = bounded.run("tests.bounded:fetch_catalogue_from", f"{server.url}/${{ABI}}/r", str(tmp_path / "r.json"))
    assert "error" in res, res
    assert f"{server.url}/{ABI}/r/meta.conf" in res["error"] and f"limit of {META_LIMIT} bytes" in res["error"]
    got = report(tmp_path / "r.json")
    assert got["bytes"] <= (0 if announce else META_LIMIT + CHUNK)
    assert got["requests"] == 1   # a refusal is not retried


def test_huge_catalogue_refused_while_streaming(server, tmp_path, monkeypatch):
    import builder.resolve.client as client
    monkeypatch.setattr(client, "CATALOGUE_LIMIT", 4 << 20)
    server.route(f"/{ABI}/r/meta.conf", reply(200, b'version = 2;\npacking_format = "tzst";\n'))
    server.route(f"/{ABI}/r/data.pkg", endless(64 << 20, announce=False, byte=b"\x28", server=server))
    t = Transport(retries=1, sleep=lambda s: None)
    with pytest.raises(BuildError, match=rf"{server.url}/{ABI}/r/data.pkg: server sent more than the limit of "
                                         rf"{4 << 20} bytes; refusing"):
        fetch_catalogue(t, Repository("base", "b", f"{server.url}/${{ABI}}/r", "none"), ABI)
    assert t.stats.bytes <= (4 << 20) + CHUNK + 100


# --- 3b: a package body is bounded by the catalogue's pkgsize ---------------------------

@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "chunked"])
def test_package_larger_than_pkgsize_refused_while_streaming(server, tmp_path, announce):
    server.route(f"/{ABI}/r/big.pkg", endless(2 << 30, announce=announce, server=server))
    cache = tmp_path / "cache"
    res = bounded.run("tests.bounded:fetch_package_from", f"{server.url}/${{ABI}}/r", "big.pkg", 270_000,
                      str(cache), str(tmp_path / "r.json"))
    assert "error" in res, res
    assert res["error"].startswith(f"package FreeBSD-clibs-14.2p1 ({server.url}/{ABI}/r/big.pkg, 270000 bytes")
    assert ("announces 2147483648 bytes" if announce else "sent more than the limit of 270000 bytes") in res["error"]
    got = report(tmp_path / "r.json")
    assert got["bytes"] <= (0 if announce else 270_000 + CHUNK)
    assert got["requests"] == 1 and len(server.requests) == 1   # not fetched a second time either
    assert [p for p in cache.rglob("*") if p.is_file()] == []     # the partial download is gone


# --- 3c: a total deadline per download ------------------------------------------------------

@pytest.mark.parametrize("kind", ["catalogue", "package"])
def test_trickling_server_hits_the_download_deadline(server, tmp_path, kind):
    # one byte every 50 ms: never a read timeout (0.5 s), but 300 bytes would take 15 s
    trickle = endless(300, chunk=1, every=0.05)
    server.route(f"/{ABI}/r/meta.conf", trickle)
    server.route(f"/{ABI}/r/x.pkg", trickle)
    t = Transport(retries=2, timeout=(2, 0.5), sleep=lambda s: None, catalogue_deadline=1.0, package_deadline=1.0)
    repo = Repository("base", "b", f"{server.url}/${{ABI}}/r", "none")
    start = time.monotonic()
    with pytest.raises(BuildError, match=r"no complete download within the 1s deadline \(\d+\.\ds elapsed") as exc:
        if kind == "catalogue":
            fetch_catalogue(t, repo, ABI)
        else:
            pkg = RemotePackage(name="x", origin="o", version="1", abi=ABI, arch="", repopath="x.pkg", sum="0" * 64,
                                pkgsize=300, flatsize=0, deps=(), shlibs_required=(), shlibs_provided=(),
                                annotations=(), raw={})
            fetch_package(t, Cache(tmp_path / "cache"), repo, ABI, pkg)
    assert time.monotonic() - start < 4   # not the 15 s the body would take
    assert f"{server.url}/{ABI}/r/" in str(exc.value)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_retry_waits_stop_at_the_deadline(server):
    # a server asking to come back later may not stretch a download past its deadline either
    server.route("/f", reply(503, headers={"Retry-After": "20"}))
    sleeps: list[float] = []
    t = Transport(retries=4, sleep=sleeps.append, catalogue_deadline=1.0)
    with pytest.raises(BuildError):
        t.fetch_bytes(f"{server.url}/f", 100)
    assert sleeps and all(s <= 1.0 for s in sleeps)


# --- 3d: package manifests are read with a bound ---------------------------------------

def _manifest_bomb(path: Path, member: str, size: int = 3 << 29) -> None:
    """A ~50 KB package whose member is `size` bytes of valid JSON (mostly blanks)."""
    head = b'{"name":"FreeBSD-bomb","origin":"base/bomb","version":"1"'
    with open(path, "wb") as fh:
        w = zstandard.ZstdCompressor(level=1).stream_writer(fh, closefd=False)
        ti = tarfile.TarInfo(member)
        ti.size = size
        w.write(ti.tobuf(format=tarfile.PAX_FORMAT))
        w.write(head)
        left = size - len(head) - 1
        blanks = b" " * (4 << 20)
        while left > 0:
            w.write(blanks[:min(left, len(blanks))])
            left -= min(left, len(blanks))
        w.write(b"}" + b"\0" * ((512 - size % 512) % 512) + b"\0" * 1024)
        w.flush(zstandard.FLUSH_FRAME)


@pytest.mark.parametrize("member", ["+COMPACT_MANIFEST", "+MANIFEST"])
def test_manifest_bomb_refused_unread(tmp_path, member):
    pkg = tmp_path / "FreeBSD-bomb-1.pkg"
    _manifest_bomb(pkg, member)
    assert pkg.stat().st_size < 200_000
    res = bounded.run("tests.bounded:scan", str(pkg), "FreeBSD-bomb")
    assert res.get("error") == (f"package FreeBSD-bomb (FreeBSD-bomb-1.pkg): {member} is {3 << 29} bytes, over the "
                                f"limit of {16 << 20} bytes for a manifest; refusing"), res


# --- 3e: YAML alias bombs ---------------------------------------------------------------------

LAUGHS = 'lol: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"lol{i}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9))


@pytest.mark.parametrize("where", ["families.yaml", "releases/14.2.yaml"])
def test_yaml_alias_bomb_refused_with_location(project_copy, where):
    path = project_copy / where
    lines = path.read_text().count("\n")
    path.write_text(path.read_text() + LAUGHS)
    start = time.monotonic()
    res = bounded.run("tests.bounded:cli", "--project", str(project_copy), "check")
    assert time.monotonic() - start < 5
    assert res.get("ok", {}).get("code") == 2, res
    assert res["ok"]["stderr"] == (f"{path}:{lines + 2}:11: error: YAML aliases (*a) are not allowed in project "
                                   "files; write the value out\n")


# --- 8: registry ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["86400", "Fri, 31 Dec 9999 23:59:59 GMT", "inf", "nan", "-inf", "1e999",
                                   "-5", "soon", "", "Sun, 06 Nov 1994 08:49:37 GMT"])
def test_registry_retry_after_neither_sleeps_long_nor_crashes(server, value):
    server.route("/v2/", reply(503, b"busy", {"Retry-After": value}))
    sleeps: list[float] = []
    reg = Registry(server.host, insecure=True, retries=3, sleep=sleeps.append)
    with pytest.raises(BuildError, match=r"GET /v2/: HTTP 503 busy"):
        reg.request("GET", "/v2/")
    assert len(sleeps) == 3 and all(0 <= s <= RetryPolicy().max_wait for s in sleeps), sleeps
    assert len(server.requests) == 4


class FakeHosts(requests.adapters.BaseAdapter):
    """Answers for hosts a test may not reach (no network): records each request, answers with fn."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.seen = fn, []

    def send(self, request, **kw):
        self.seen.append(request)
        status, headers, body = self.fn(request)
        r = requests.Response()
        r.status_code, r.url, r.request = status, request.url, request
        r.headers.update(headers)
        r.raw = io.BytesIO(body)
        return r

    def close(self):
        pass


USER, PASSWORD = "relng", "s3cret-Pa55"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.mark.parametrize("realm,insecure,sent", [
    ("http://auth.example.test/token", False, False),        # plain HTTP, another host: refused
    ("https://auth.example.test/token", False, True),        # TLS
    ("http://registry.example.test:5001/token", False, True),  # the registry's own host
    ("http://auth.example.test/token", True, True),          # --insecure asked for plain HTTP
])
def test_password_goes_to_a_token_realm_only_over_tls_or_on_the_registry_host(realm, insecure, sent):
    def answer(req):
        if "/token" in req.url:
            return 200, {"Content-Type": "application/json"}, b'{"token": "tok"}'
        if req.headers.get("Authorization") == "Bearer tok":
            return 200, {}, b"{}"
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="r"'}, b""
    fake = FakeHosts(answer)
    reg = Registry("registry.example.test", insecure=insecure, auth=(USER, PASSWORD), sleep=lambda s: None)
    for prefix in ("http://", "https://"):
        reg.session.mount(prefix, fake)
    if sent:
        reg.request("GET", "/v2/x/manifests/t", "repository:x:pull")
    else:
        with pytest.raises(BuildError, match=r"token realm http://auth.example.test/token is plain HTTP on another "
                                             r"host; not sending the password there"):
            reg.request("GET", "/v2/x/manifests/t", "repository:x:pull")
    to_realm = [r for r in fake.seen if r.url.startswith(realm)]
    assert [r.headers.get("Authorization") for r in to_realm] == ([BASIC] if sent else [])


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"[1, 2]", b"{}", b'{"token": 5}', b'{"token": ""}',
                                  b'{"token": "a\\r\\nX-Evil: 1"}', b"[" * 200_000 + b"]" * 200_000, b"null"])
def test_token_server_garbage_is_a_refusal(server, body):
    server.route("/v2/x/manifests/t", reply(401, headers={"WWW-Authenticate": f'Bearer realm="{server.url}/token"'}))
    server.route("/token", reply(200, body, {"Content-Type": "application/json"}))
    reg = Registry(server.host, insecure=True, auth=(USER, PASSWORD), sleep=lambda s: None)
    with pytest.raises(BuildError, match=rf"registry {server.host}: token server {server.url}/token "
                                         r"(answered .* not JSON|gave no usable token)"):
        reg.request("GET", "/v2/x/manifests/t", "repository:x:pull")


def _echo_headers(status):
    """A 4xx whose body quotes the request back, Authorization included, and the decoded password."""
    def answer(h):
        if not h.headers.get("Authorization"):
            return reply(401, headers={"WWW-Authenticate": 'Basic realm="r"'})(h)
        echo = json.dumps({"error": "denied", "request": dict(h.headers)}).encode()
        echo += f"\nAuthorization: {h.headers['Authorization']}\nuser {USER}:{PASSWORD} password={PASSWORD}".encode()
        return reply(status, echo, {"Content-Type": "application/json"})(h)
    return answer


def _tiny_layout(root: Path) -> Path:
    layout = Layout(root).init()
    cfg = layout.put_json({"architecture": "amd64", "os": "freebsd"}, "application/vnd.oci.image.config.v1+json")
    man = layout.put_json({"schemaVersion": 2, "mediaType": MANIFEST_MT, "config": cfg.to_json(), "layers": []},
                          MANIFEST_MT)
    index = layout.put_json({"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": [man.to_json()]}, INDEX_MT)
    layout.set_refs({"img:1": index})
    return root


def test_error_messages_never_hold_credentials(server, tmp_path, monkeypatch, capsys):
    for path in ("/v2/ns/img/blobs/uploads/",):
        server.route(path, _echo_headers(403))
    monkeypatch.setenv("FREEBSD_IMAGES_REGISTRY_PASSWORD", PASSWORD)
    layout = _tiny_layout(tmp_path / "layout")
    code = main(["-v", "publish", str(layout), "--to", f"{server.host}/ns", "--insecure", "--user", USER])
    err = capsys.readouterr().err
    assert code == 2 and "HTTP 403" in err and "denied" in err
    b64 = BASIC.split()[1]
    for secret in (PASSWORD, b64, f"{USER}:{PASSWORD}"):
        assert secret not in err
    assert "Authorization: <redacted>" in err
    # the request did carry the credentials: the redaction, not their absence, keeps them out
    assert any(h.get("Authorization") == BASIC for _, _, h in server.requests)


def test_bearer_token_echoed_back_is_redacted(server):
    server.route("/token", reply(200, b'{"token": "tok-SECRET-123"}', {"Content-Type": "application/json"}))

    def echo(h):
        if h.headers.get("Authorization") != "Bearer tok-SECRET-123":
            return reply(401, headers={"WWW-Authenticate": f'Bearer realm="{server.url}/token"'})(h)
        return reply(400, f"bad request from {h.headers['Authorization']} (token tok-SECRET-123)".encode())(h)
    server.route("/v2/x/manifests/t", echo)
    reg = Registry(server.host, insecure=True, auth=(USER, PASSWORD), sleep=lambda s: None)
    with pytest.raises(BuildError) as exc:
        reg.request("GET", "/v2/x/manifests/t", "repository:x:pull")
    assert "HTTP 400" in str(exc.value) and "tok-SECRET-123" not in str(exc.value)


# --- 9: hostile inputs end in a refusal (exit 2), one line, no traceback -------------------

def _resign_data(repo: Path, data: bytes, mode: str = "fingerprints") -> None:
    """Replace a generated repository's catalogue, signed with the demo key: a compromised-but-valid repository."""
    (repo / "data.pkg").write_bytes(_sign_archive("data", data, mode, 3, 1731456000))
    (repo / "packagesite.pkg").unlink()


def _retype_manifest(repo: Path, name: str, field: str, value) -> None:
    """Give one package's +MANIFEST a wrong-typed field, and re-sign the catalogue to match."""
    doc = json.loads(read_members(repo / "data.pkg", "data.pkg", {"data"})["data"])
    entry = next(e for e in doc["packages"] if e["name"] == name)
    path = repo / entry["repopath"]
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes())).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tin, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.name == "+MANIFEST":
                manifest = json.loads(data)
                manifest[field] = value
                data = json.dumps(manifest).encode()
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    pkg = zstandard.ZstdCompressor().compress(out.getvalue())
    path.write_bytes(pkg)
    entry["sum"], entry["pkgsize"] = hashlib.sha256(pkg).hexdigest(), len(pkg)
    _resign_data(repo, json.dumps(doc).encode())




def _one_line_refusal(code: int, err: str) -> None:
    """Exit 2 with one error line (progress lines aside), no traceback, no internal error."""
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len([l for l in err.splitlines() if l.startswith("error: ")]) == 1, err
    assert not [l for l in err.splitlines() if l.startswith(" ")], err


def test_wrong_typed_manifest_field_is_a_refusal(hostile_mirror, tmp_path, capsys):
    m, proj = hostile_mirror
    _retype_manifest(m / ABI / "base_release_2", "FreeBSD-zoneinfo", "flatsize", "lots")
    code = main(["--project", str(proj), "build", "--release", "14.2", "--all", "--arch", "amd64",
                 "--mirror", f"file://{m}", "--keys", str(m / "keys"), "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    _one_line_refusal(code, err)
    assert "package FreeBSD-zoneinfo" in err and "+MANIFEST: field 'flatsize' is a string, expected an integer" in err


def test_deeply_nested_catalogue_is_a_refusal(hostile_mirror, capsys):
    m, proj = hostile_mirror
    _resign_data(m / ABI / "base_release_2", b"[" * 200_000 + b"]" * 200_000)
    code = main(["--project", str(proj), "lock", "14.2", "--arch", "amd64", "--mirror", f"file://{m}",
                 "--keys", str(m / "keys")])
    err = capsys.readouterr().err
    _one_line_refusal(code, err)
    assert "base_release_2: data: JSON nested too deeply; refusing" in err


def _good_manifest() -> tuple[bytes, str]:
    data = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_MT,
                       "config": {"digest": "sha256:" + "a" * 64, "size": 2}, "layers": []}).encode()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("case", ["not-json", "json-list", "deep", "manifests-not-list", "layers-wrong-type",
                                  "bad-digest", "blob-not-matching"])
def test_registry_garbage_is_a_refusal(server, tmp_path, monkeypatch, capsys, case):
    good, good_digest = _good_manifest()
    bodies = {
        "not-json": b"<html>teapot</html>",
        "json-list": b"[1, 2, 3]",
        "deep": b"[" * 200_000 + b"]" * 200_000,
        "manifests-not-list": json.dumps({"mediaType": INDEX_MT, "manifests": "all of them"}).encode(),
        "layers-wrong-type": json.dumps({"mediaType": MANIFEST_MT, "config": {"digest": "sha256:" + "a" * 64},
                                         "layers": {"digest": 1}}).encode(),
        "bad-digest": json.dumps({"mediaType": INDEX_MT, "manifests": [{"digest": "sha256:../../../etc"}]}).encode(),
        "blob-not-matching": good,
    }
    server.route("/v2/x/manifests/t", reply(200, bodies[case], {"Content-Type": MANIFEST_MT}))
    server.route(f"/v2/x/blobs/sha256:{'a' * 64}", reply(200, b"not what the digest says"))
    import tempfile
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    code = main(["diff", f"docker://{server.host}/x:t", f"docker://{server.host}/x:t", "--insecure"])
    err = capsys.readouterr().err
    _one_line_refusal(code, err)
    assert f"docker://{server.host}/x:t" in err and "refusing" in err
    assert list((tmp_path / "tmp").iterdir()) == []   # its temp layout is removed


def test_unexpected_errors_are_one_line_without_debug(monkeypatch, capsys):
    # the backstop for what no parsing site caught: exit 3, one line; the traceback only with --debug
    import builder.cli as cli

    def boom(args):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setitem(cli.COMMANDS, "gc", (cli.COMMANDS["gc"][0], boom, "x"))
    assert main(["gc", "x"]) == 3
    err = capsys.readouterr().err
    assert err == "internal error: RecursionError: maximum recursion depth exceeded (run with --debug for the traceback)\n"
    assert main(["--debug", "gc", "x"]) == 3
    assert "Traceback" in capsys.readouterr().err
