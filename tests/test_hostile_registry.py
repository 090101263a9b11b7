"""A hostile registry (and hostile names pointed at a registry): replies that are deep, wrongly
shaped, huge, trickled or never come; upload Locations and redirects that fish for credentials
or downgrade to plain HTTP; repository names and tags that climb out of the namespace.

Each ends in a refusal (exit 2, or a BuildError) within bounded memory and time. Servers are
tests.httpfaults.ScriptedServer on 127.0.0.1; the memory-bound case runs under RLIMIT_AS
(tests/bounded.py); deadlines are made small through ``Limits``, never waited out.
"""
from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest

from builder.cli import main
from builder.common.http import CHUNK
from builder.errors import BuildError
from builder.oci import attest
from builder.oci.layout import INDEX_MT, MANIFEST_MT, Layout
from builder.oci.registry import Limits, PushTarget, Registry, publish, sign_target, targets_in_layout
from tests import bounded
from tests.httpfaults import ScriptedServer, endless, reply, silent, trickle_head
from tests.registry import TlsStandIn

USER, PASSWORD = "relng", "s3cret-Pa55"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
REPLY_LIMIT = Limits().reply


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


@pytest.fixture
def other():
    """A second origin (another port): where a hostile registry points uploads and redirects."""
    s = ScriptedServer()
    yield s
    s.close()


def _layout(root: Path, refs: tuple[str, ...] = ("img:1",), referrer: bool = False) -> tuple[Path, str]:
    """A one-platform layout (optionally with an SBOM referrer): its path and the manifest digest."""
    layout = Layout(root).init()
    cfg = layout.put_json({"architecture": "amd64", "os": "freebsd"}, "application/vnd.oci.image.config.v1+json")
    man = layout.put_json({"schemaVersion": 2, "mediaType": MANIFEST_MT, "config": cfg.to_json(), "layers": []},
                          MANIFEST_MT)
    index = layout.put_json({"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": [man.to_json()]}, INDEX_MT)
    extra = None
    if referrer:
        extra = {man.digest: [attest.attach(layout, man, "application/spdx+json", "application/spdx+json",
                                            b"{}", 1731456000)]}
    layout.set_refs({r: index for r in refs}, referrers=extra)
    return root, man.digest


def fake_registry(blobs_there: bool = True, location: str = "/v2/ns/img/blobs/uploads/1", auth: str = ""):
    """Answers publish's requests like a registry would; with ``auth``, /v2/ wants that Authorization."""
    def answer(h):
        path = h.path.split("?")[0]
        if auth and h.headers.get("Authorization") != auth:
            return reply(401, headers={"WWW-Authenticate": 'Basic realm="r"'})(h)
        if h.command == "HEAD" and "/blobs/" in path:
            return reply(200 if blobs_there else 404)(h)
        if h.command == "POST" and path.endswith("/blobs/uploads/"):
            return reply(202, headers={"Location": location})(h)
        if h.command == "PUT":
            return reply(201)(h)
        return reply(404)(h)
    return answer


def wants_credentials(h):
    """Another origin fishing for credentials: 401 until it gets an Authorization header."""
    if not h.headers.get("Authorization"):
        return reply(401, b"log in here", {"WWW-Authenticate": 'Basic realm="fish"'})(h)
    return reply(201)(h)


def _publish(capsys, layout: Path, to: str, *extra: str) -> tuple[int, str]:
    code = main(["publish", str(layout), "--to", to, "--insecure", *extra])
    return code, capsys.readouterr().err


def _refusal(code: int, err: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert "refusing" in err or "HTTP 401" in err, err


# --- 3: replies read within limits: depth, shape, size, time ----------------------------------

REFERRERS = {
    "deep": b"[" * 200_000 + b"]" * 200_000,                       # json.loads' RecursionError
    "nested-40": b'{"manifests": [' + b"[" * 40 + b"]" * 40 + b"]}",  # parses, too deep to use
    "not-json": b"<html>teapot</html>",
    "list": b"[1, 2, 3]",
    "manifests-string": json.dumps({"manifests": "all of them"}).encode(),
    "descriptor-number": json.dumps({"manifests": [1]}).encode(),
    "digest-path": json.dumps({"manifests": [{"mediaType": MANIFEST_MT, "digest": "sha256:../../etc",
                                              "size": 1}]}).encode(),
    "size-string": json.dumps({"manifests": [{"mediaType": MANIFEST_MT, "digest": "sha256:" + "a" * 64,
                                              "size": "big"}]}).encode(),
    "no-media-type": json.dumps({"manifests": [{"digest": "sha256:" + "a" * 64, "size": 1}]}).encode(),
    "annotations-nested": json.dumps({"manifests": [{"mediaType": MANIFEST_MT, "digest": "sha256:" + "a" * 64,
                                                     "size": 1, "annotations": {"a": {"b": 1}}}]}).encode(),
}


@pytest.mark.parametrize("case", list(REFERRERS))
@pytest.mark.parametrize("via", ["api", "tag"])
def test_hostile_referrers_index_is_a_refusal(server, tmp_path, capsys, via, case):
    layout, digest = _layout(tmp_path / "l", referrer=True)
    server.route_prefix("/v2/", fake_registry())
    if via == "api":
        server.route(f"/v2/ns/img/referrers/{digest}", reply(200, REFERRERS[case], {"Content-Type": INDEX_MT}))
        where = f"registry {server.host}: referrers of ns/img@{digest}: "
    else:   # no referrers API: the sha256-<hex> tag's index
        server.route(f"/v2/ns/img/manifests/{digest.replace(':', '-')}",
                     reply(200, REFERRERS[case], {"Content-Type": INDEX_MT}))
        where = f"registry {server.host}: ns/img:{digest.replace(':', '-')}: "
    code, err = _publish(capsys, layout, f"{server.host}/ns")
    _refusal(code, err)
    assert where in err
    assert not [r for r in server.requests if r[0] == "PUT" and "/manifests/sha256-" in r[1]]   # nothing merged


@pytest.mark.parametrize("kind,announce", [("manifest", True), ("manifest", False), ("referrers", False),
                                           ("token", False)])
def test_huge_reply_refused_while_streaming(server, tmp_path, kind, announce):
    # 3 GiB: a client reading the whole reply first dies of MemoryError under the child's 512 MiB
    huge = endless(3 << 30, announce=announce, server=server)
    if kind == "token":
        server.route("/v2/x/manifests/t", reply(401, headers={"WWW-Authenticate": f'Bearer realm="{server.url}/token"'}))
        server.route("/token", huge)
    else:
        server.route("/v2/x/manifests/t" if kind == "manifest" else f"/v2/x/referrers/sha256:{'a' * 64}", huge)
    res = bounded.run("tests.bounded:registry_read", server.host, kind, str(tmp_path / "r.json"))
    assert "error" in res, res
    assert res["error"].startswith(f"registry {server.host}: ")
    assert (f"announces {3 << 30} bytes" if announce else f"sent more than the limit of {REPLY_LIMIT} bytes") \
        in res["error"]
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["bytes"] <= (0 if announce else REPLY_LIMIT + CHUNK)
    assert got["requests"] == (2 if kind == "token" else 1)   # a refusal is not retried


@pytest.mark.parametrize("kind", ["body", "headers", "silent"])
def test_slow_registry_ends_at_the_deadline(server, kind):
    # a body at a byte per 50 ms (15 s), headers at a byte per 50 ms (10 s; no read timeout ever
    # trips), and 8 s of silence per attempt: each must end at the 1 s deadline
    server.route("/v2/x/manifests/t", {"body": endless(300, chunk=1, every=0.05),
                                       "headers": trickle_head(0.05, total=200),
                                       "silent": silent(8)}[kind])
    reg = Registry(server.host, insecure=True, limits=Limits(deadline=1.0))
    start = time.monotonic()
    with pytest.raises(BuildError, match=rf"^registry {re.escape(server.host)}: GET /v2/x/manifests/t: no complete "
                                         r"answer within the 1s deadline \(\d+\.\ds elapsed"):
        reg.get_manifest("x", "t")
    assert time.monotonic() - start < 3


def test_silent_registry_stops_publish_at_the_deadline(server, tmp_path, capsys, monkeypatch):
    import builder.oci.registry as registry
    monkeypatch.setattr(registry, "LIMITS", Limits(deadline=1.0))
    server.route_prefix("/v2/", silent(8))
    layout, _ = _layout(tmp_path / "l")
    start = time.monotonic()
    code, err = _publish(capsys, layout, f"{server.host}/ns")
    _refusal(code, err)
    assert f"registry {server.host}: HEAD /v2/ns/img/blobs/sha256:" in err and "1s deadline" in err
    assert time.monotonic() - start < 4     # not 5 attempts x 300 s


# --- 4: credentials only to the registry's own origin, plain HTTP only with --insecure --------

def test_upload_location_on_another_origin_gets_no_credentials(server, other, tmp_path, capsys, monkeypatch):
    server.route_prefix("/v2/", fake_registry(blobs_there=False, location=f"http://{other.host}/upload/1",
                                              auth=BASIC))
    other.route("/upload/1", wants_credentials)
    monkeypatch.setenv("FREEBSD_IMAGES_REGISTRY_PASSWORD", PASSWORD)
    layout, _ = _layout(tmp_path / "l")
    code, err = _publish(capsys, layout, f"{server.host}/ns", "--user", USER)
    _refusal(code, err)
    assert f"http://{other.host}/upload/1: HTTP 401" in err
    assert other.requests, "the upload went there"
    assert [h.get("Authorization") for _, _, h in other.requests] == [None] * len(other.requests)
    assert any(h.get("Authorization") == BASIC for _, _, h in server.requests)   # the registry got them


def test_redirect_to_another_origin_gets_no_credentials(server, other):
    server.route_prefix("/v2/", fake_registry(auth=BASIC))
    server.route("/v2/x/manifests/t", lambda h: (reply(307, headers={"Location": f"http://{other.host}/m"})(h)
                                                 if h.headers.get("Authorization") == BASIC else
                                                 reply(401, headers={"WWW-Authenticate": 'Basic realm="r"'})(h)))
    other.route("/m", wants_credentials)
    reg = Registry(server.host, insecure=True, auth=(USER, PASSWORD), sleep=lambda s: None)
    with pytest.raises(BuildError, match=rf"registry {re.escape(server.host)}: GET http://{re.escape(other.host)}/m: "
                                         r"HTTP 401 log in here"):
        reg.get_manifest("x", "t")
    assert other.requests and all("Authorization" not in h for _, _, h in other.requests)


def _https_registry(server) -> Registry:
    """A client that believes server is an https registry (TlsStandIn plays the TLS part)."""
    reg = Registry(server.host, insecure=False, auth=(USER, PASSWORD), sleep=lambda s: None)
    reg.session.mount(f"https://{server.host}", TlsStandIn())
    return reg


def test_https_registry_cannot_send_uploads_to_plain_http(server, other, tmp_path):
    server.route_prefix("/v2/", fake_registry(blobs_there=False, location=f"http://{other.host}/upload/1",
                                              auth=BASIC))
    other.route("/upload/1", wants_credentials)
    layout = Layout(_layout(tmp_path / "l")[0])
    reg = _https_registry(server)
    with pytest.raises(BuildError, match=rf"^registry {re.escape(server.host)}: upload Location "
                                         rf"http://{re.escape(other.host)}/upload/1 is plain HTTP and the registry "
                                         r"is https \(plain HTTP only with --insecure\); refusing"):
        publish(layout, reg, "ns", targets_in_layout(layout))
    assert other.requests == []
    assert server.requests and all(p.startswith("/v2/") for _, p, _ in server.requests)


def test_https_registry_cannot_redirect_to_plain_http(server, other):
    server.route("/v2/x/manifests/t", reply(302, headers={"Location": f"http://{other.host}/m"}))
    other.route("/m", reply(200, b"{}"))
    with pytest.raises(BuildError, match=rf"redirect to http://{re.escape(other.host)}/m is plain HTTP"):
        _https_registry(server).get_manifest("x", "t")
    assert other.requests == []


# --- 7: names and tags in the distribution-spec grammar, checked before any request -----------

@pytest.mark.parametrize("ref", ["../evil/img:14.2", "a/../../../../../tmp/img:1", "./img:1", "img/:1", "Img:1",
                                 "img:.hidden", "img:-x", "img:" + "a" * 129, "a" * 256 + ":1"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_hostile_layout_names_refused_before_any_request(server, tmp_path, capsys, ref, dry_run):
    server.route_prefix("/v2/", fake_registry())
    layout, _ = _layout(tmp_path / "l", refs=(ref, "good:1"))
    code, err = _publish(capsys, layout, f"{server.host}/freebsd", *(["--dry-run"] if dry_run else []))
    _refusal(code, err)
    assert "is not a repository name" in err or "is not a tag" in err
    assert server.requests == []
    assert "would push" not in err   # the good image was not pushed (or planned) either


@pytest.mark.parametrize("ns", ["../evil", "ns/..", "Free", "a//b", "ns/./x"])
def test_hostile_namespace_refused_before_any_request(server, tmp_path, capsys, ns):
    layout, _ = _layout(tmp_path / "l")
    code, err = _publish(capsys, layout, f"{server.host}/{ns}")
    _refusal(code, err)
    assert server.requests == []


@pytest.mark.parametrize("spec", ["{host}/../x:t", "{host}/x/../../y:t", "{host}/x:../../t", "{host}/x@sha256:.."])
def test_hostile_registry_refs_refused_before_any_request(server, capsys, spec):
    ref = "docker://" + spec.format(host=server.host)
    code = main(["diff", ref, ref, "--insecure"])
    _refusal(code, capsys.readouterr().err)
    assert server.requests == []


def test_signing_refuses_a_repository_outside_the_grammar(tmp_path):
    # the lookaside directory is made from the repository: nothing is signed or written for ../evil
    target = PushTarget("img", ("1",), "sha256:" + "a" * 64)
    with pytest.raises(BuildError, match=r"'\.\./evil/img' is not a repository name"):
        sign_target("registry.example.test", "../evil/img", target, {"manifests": []}, signing=None)
    with pytest.raises(BuildError, match=r"'\.\./evil' is not a repository name"):
        PushTarget("../evil", ("1",), "sha256:" + "a" * 64)
    with pytest.raises(BuildError, match=r"'\.\.' is not a tag"):
        PushTarget("img", ("..",), "sha256:" + "a" * 64)


def test_trickled_headers_end_a_download_at_its_deadline(server):
    # the watchdog is common/http.py's: repository downloads get it too
    from builder.common.http import Transport
    server.route("/f", trickle_head(0.05, total=200))
    t = Transport(retries=2, sleep=lambda s: None, catalogue_deadline=1.0)
    start = time.monotonic()
    with pytest.raises(BuildError, match=rf"{re.escape(server.url)}/f: no complete download within the 1s deadline"):
        t.fetch_bytes(f"{server.url}/f", 100)
    assert time.monotonic() - start < 3
