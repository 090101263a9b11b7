"""SBOMs, provenance and signatures, checked by tools that are not ours: the SPDX project's
validator, SQLite on the image's own package database, a real registry, skopeo with a signedBy
policy, and gpg; then verify-image on good and tampered images."""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import requests

from builder.cli import main
from builder.oci.assemble import assemble
from builder.oci.attest import INTOTO_MT, SPDX_MT, license_expression
from builder.oci.layout import Layout, canonical
from builder.oci.registry import Registry, publish, referrers_tag, targets_in_layout
from builder.oci.sign import DSSE_MT, Signer, SigningPlan, Verifier, pae
from builder.runs.images import git_commit
from builder.oci.recipe import RECIPE_MT
from tests.buildutil import build_demo_family, demo_project, reachable_by_hand, run
from tests.conftest import ROOT
from tests.registry import LocalHttp
from tests.test_build import build_args
from tests.tools import TOOLS, require, under_ci

RELEASE = "14.2"
NAME = "org.opencontainers.image.ref.name"


# --- fixtures ------------------------------------------------------------------------------

def _gen_key(home: Path, uid: str) -> tuple[Path, Path]:
    """A fresh signing key in its own GNUPGHOME; (secret key file, public key file)."""
    home.mkdir(mode=0o700, parents=True)
    env = dict(os.environ, GNUPGHOME=str(home))
    r = run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"], env=env)
    assert r.returncode == 0, r.stderr
    secret, public = home / "secret.asc", home / "public.asc"
    for path, args in ((secret, ["--export-secret-keys"]), (public, ["--export"])):
        r = subprocess.run(["gpg", "--batch", "--armor", *args], env=env, capture_output=True)
        assert r.returncode == 0 and r.stdout, r.stderr
        path.write_bytes(r.stdout)
    return secret, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    require("gpg")
    tmp = tmp_path_factory.mktemp("keys")
    good = _gen_key(tmp / "good", "freebsd-images test <test@example.org>")
    other = _gen_key(tmp / "other", "someone else <other@example.org>")
    yield {"secret": good[0], "public": good[1], "home": tmp / "good", "other": other[1]}
    for h in ("good", "other"):
        subprocess.run(["gpgconf", "--homedir", str(tmp / h), "--kill", "all"], capture_output=True)


@pytest.fixture(scope="module")
def family(demo_mirror, tmp_path_factory):
    """The demo family, both arches, built in-process (its lock is the one verify-image checks against)."""
    return build_demo_family(demo_mirror, tmp_path_factory.mktemp("trust"))


def referrer_docs(layout: Layout) -> dict[tuple[str, str], tuple[dict, bytes]]:
    """(subject digest, artifactType) -> (artifact manifest, document bytes), read from index.json by hand."""
    out = {}
    for e in json.loads((layout.root / "index.json").read_text())["manifests"]:
        if NAME in (e.get("annotations") or {}):
            continue
        man = json.loads(layout.blob_path(e["digest"]).read_bytes())
        assert man["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                 "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()}
        assert layout.blob_path(man["config"]["digest"]).read_bytes() == b"{}"
        assert e["artifactType"] == man["artifactType"]
        out[(man["subject"]["digest"], man["artifactType"])] = (man, layout.blob_path(man["layers"][0]["digest"]).read_bytes())
    return out


def platform_manifests(layout: Layout) -> dict[str, tuple[str, str, dict]]:
    """digest -> (image name, platform, manifest) for every platform manifest of every index."""
    out = {}
    for ref, desc in layout.refs().items():
        if desc.media_type.endswith("index.v1+json"):
            for m in layout.read_json(desc.digest)["manifests"]:
                out[m["digest"]] = (ref.split(":")[0], m["platform"]["architecture"], layout.read_json(m["digest"]))
    return out


def pkgdb_rows(layout: Layout, manifest: dict, tmp: Path) -> tuple[set, set]:
    """(name, version) of packages and (package, dependency) of deps in the image's local.sqlite,
    the file taken from the topmost layer holding it (plain gzip + tarfile) and read with SQLite."""
    data = None
    for layer in manifest["layers"]:
        with layout.open_blob(layer["digest"]) as fh, gzip.GzipFile(fileobj=fh) as gz, tarfile.open(fileobj=gz, mode="r|") as t:
            for m in t:
                if m.name == "var/db/pkg/local.sqlite":
                    data = t.extractfile(m).read()
    assert data is not None
    path = tmp / f"{hashlib.sha256(data).hexdigest()}.sqlite"
    path.write_bytes(data)
    con = sqlite3.connect(path)
    try:
        pkgs = set(con.execute("SELECT name, version FROM packages"))
        deps = set(con.execute("SELECT p.name, d.name FROM deps d JOIN packages p ON p.id = d.package_id"))
    finally:
        con.close()
    return pkgs, deps


def pyspdxtools() -> list[str]:
    exe = Path(sys.executable).parent / "pyspdxtools"
    if exe.exists():
        return [str(exe)]
    if shutil.which("pyspdxtools"):
        return ["pyspdxtools"]
    msg = "pyspdxtools (PyPI spdx-tools, Python >= 3.10) is not installed: make venv installs it"
    (pytest.fail if under_ci() else pytest.skip)(msg)


# --- SBOM --------------------------------------------------------------------------------

def test_every_sbom_passes_the_spdx_validator(family, tmp_path):
    rb, _, _ = family
    docs = {k: v for k, v in referrer_docs(Layout(rb.layout)).items() if k[1] == SPDX_MT}
    assert len(docs) == 8
    tool = pyspdxtools()
    for (subject, _), (man, data) in docs.items():
        f = tmp_path / f"{subject[7:]}.spdx.json"
        f.write_bytes(data)
        r = run(tool + ["-i", str(f)])
        assert r.returncode == 0 and "ERROR" not in r.stdout + r.stderr, (subject, r.stdout, r.stderr)
    # the validator does reject what breaks the spec (a pkg+https download location, a LicenseRef not declared)
    doc = json.loads(data)
    doc["packages"][1]["downloadLocation"] = "pkg+https://pkg.FreeBSD.org/x.pkg"
    doc.pop("hasExtractedLicensingInfos", None)
    doc["packages"][1]["licenseDeclared"] = "LicenseRef-nowhere"
    bad = tmp_path / "bad.spdx.json"
    bad.write_text(json.dumps(doc))
    r = run(tool + ["-i", str(bad)])
    assert r.returncode != 0 and "LicenseRef-nowhere" in r.stdout + r.stderr


def test_sbom_lists_exactly_the_packages_in_the_images_own_database(family, tmp_path):
    rb, ctx, _ = family
    layout = Layout(rb.layout)
    docs = referrer_docs(layout)
    lock = ctx.ensure_lock()
    seen = 0
    for digest, (name, arch, man) in platform_manifests(layout).items():
        doc = json.loads(docs[(digest, SPDX_MT)][1])
        assert doc["spdxVersion"] == "SPDX-2.3" and digest[7:] in doc["documentNamespace"]
        image = [p for p in doc["packages"] if p.get("primaryPackagePurpose") == "CONTAINER"]
        assert [c["checksumValue"] for c in image[0]["checksums"]] == [digest[7:]]
        listed = {p["SPDXID"]: p for p in doc["packages"] if p.get("primaryPackagePurpose") != "CONTAINER"}
        pkgs, deps = pkgdb_rows(layout, man, tmp_path)
        assert {(p["name"], p["versionInfo"]) for p in listed.values()} == pkgs, (name, arch)
        # DEPENDS_ON: the manifest's dependencies that are installed, as pkg registered them
        by_id = {i: p["name"] for i, p in listed.items()}
        rel = {(by_id[r["spdxElementId"]], by_id[r["relatedSpdxElement"]]) for r in doc["relationships"]
               if r["relationshipType"] == "DEPENDS_ON"}
        names = {n for n, _ in pkgs}
        assert rel == {(p, d) for p, d in deps if d in names}
        flock = lock.arches[next(a for a in lock.arches if a == arch or (arch == "arm64" and a == "aarch64"))]
        for p in listed.values():
            lp = flock.packages[p["name"]]
            assert p["checksums"] == [{"algorithm": "SHA256", "checksumValue": lp.sum}]
            assert p["supplier"] == "Organization: The FreeBSD Project"
            assert p["downloadLocation"].endswith("/" + lp.path) and p["downloadLocation"].startswith("https://pkg.freebsd.org/")
            assert {"referenceCategory": "OTHER", "referenceType": "freebsd-pkg-origin",
                    "referenceLocator": lp.origin} == {k: v for k, v in p["externalRefs"][0].items() if k != "comment"}
        if "FreeBSD-caroot" in names:
            caroot = next(p for p in listed.values() if p["name"] == "FreeBSD-caroot")
            assert caroot["licenseDeclared"] == "MPL-2.0"
        seen += 1
    assert seen == 8


def test_license_names_map_to_spdx_or_a_declared_licenseref():
    assert license_expression(("BSD2CLAUSE",), "single") == ("BSD-2-Clause", {})
    assert license_expression(("GPLv2", "MIT"), "dual") == ("GPL-2.0-only OR MIT", {})
    assert license_expression(("ISCL", "BSD3CLAUSE"), "multi") == ("ISC AND BSD-3-Clause", {})
    assert license_expression(("PD",), "single") == ("LicenseRef-FreeBSD-PD", {"LicenseRef-FreeBSD-PD": "PD"})
    assert license_expression((), "single") == ("NOASSERTION", {})


# --- determinism, provenance ---------------------------------------------------------------

def test_sbom_and_provenance_are_byte_identical_across_builds(family, demo_mirror, tmp_path):
    """A second build, in another process, time zone, umask and hash seed, writes the same attestations."""
    rb, ctx, tmp = family
    out = tmp_path / "out"
    env = dict(os.environ, TZ="Asia/Kathmandu", PYTHONHASHSEED="31337", PYTHONPATH=str(ROOT),
               XDG_CACHE_HOME=str(tmp / "cache2"))
    env.pop("SOURCE_DATE_EPOCH", None)
    argv = [sys.executable, "-m", "builder", *build_args(ctx.project.root, demo_mirror, out, "--jobs", "1")]
    argv[argv.index("--lock-dir") + 1] = str(tmp / "locks")
    r = subprocess.run(["sh", "-c", "umask 077; exec \"$@\"", "sh", *argv], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = referrer_docs(Layout(rb.layout)), referrer_docs(Layout(out / RELEASE))
    assert len(a) == 24 and set(a) == set(b)     # SBOM, provenance and recipe of 8 platform manifests
    for k in a:
        assert a[k][1] == b[k][1], k
        assert canonical(a[k][0]) == canonical(b[k][0]), k
    # the provenance records the lock by digest, the catalogues, the parameters and the epoch
    lock_bytes = (tmp / "locks" / f"{RELEASE}.lock.json").read_bytes()
    lock = json.loads(lock_bytes)
    for (subject, kind), (_, data) in a.items():
        if kind != INTOTO_MT:
            continue
        st = json.loads(data)
        assert st["_type"] == "https://in-toto.io/Statement/v1" and st["predicateType"] == "https://slsa.dev/provenance/v1"
        assert st["subject"][0]["digest"] == {"sha256": subject[7:]}
        bd = st["predicate"]["buildDefinition"]
        params = bd["externalParameters"]
        assert params["source_date_epoch"] == lock["source-date-epoch"] == rb.epoch
        assert (params["release"], params["compression"], params["squash"]) == (RELEASE, "gzip", False)
        deps = {d["name"]: d for d in bd["resolvedDependencies"]}
        assert deps[f"{RELEASE}.lock.json"]["digest"]["sha256"] == hashlib.sha256(lock_bytes).hexdigest()
        assert deps[f"families.yaml#{params['flavour']}"]["digest"]["sha256"]      # its chain, by digest
        assert deps[f"releases/{RELEASE}.yaml"]["digest"]["sha256"] == hashlib.sha256(
            (ctx.project.root / "releases" / f"{RELEASE}.yaml").read_bytes()).hexdigest()
        cats = lock["arches"][params["arch"]]["catalogues"]
        assert {k: deps[f"catalogue:{k}"]["digest"]["sha256"] for k in cats} == cats
        # a project outside a git checkout says so, and that is the same in both builds
        assert bd["internalParameters"]["project_commit"] == "unknown" and "project" not in deps
        assert st["predicate"]["runDetails"]["builder"]["version"]["freebsd-images"]
    assert git_commit(tmp) is None
    if (ROOT / ".git").exists() and shutil.which("git"):
        head = run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).stdout.strip()
        assert git_commit(ROOT) == head


def test_gc_and_assemble_keep_referrers_and_drop_orphans(family, tmp_path):
    rb, _, _ = family
    src = tmp_path / "copy"
    shutil.copytree(rb.layout, src)
    lay = Layout(src)
    before = referrer_docs(lay)
    assert lay.gc() == []
    assert referrer_docs(lay) == before
    # assembled from per-image layouts (as CI's join does), every referrer comes along
    merged = tmp_path / "merged"
    assemble(merged, [src])
    assert referrer_docs(Layout(merged)) == before
    # an image whose refs are gone takes its SBOM and provenance with it
    index = json.loads((src / "index.json").read_text())
    index["manifests"] = [e for e in index["manifests"]
                          if not (e.get("annotations") or {}).get(NAME, "").startswith(f"freebsd{RELEASE}-small:")]
    (src / "index.json").write_text(json.dumps(index))
    gone = set(lay.gc())
    left = referrer_docs(lay)
    small = {d for d, (n, _, _) in platform_manifests(Layout(rb.layout)).items() if n.endswith("-small")}
    assert len(small) == 2 and {s for s, _ in left} == {s for s, _ in before} - small
    # the artifact manifests and documents of the gone image's referrers went with it
    assert {d[7:] for (s, _), (m, _) in before.items() if s in small
            for d in (Layout.digest_of(canonical(m)), m["layers"][0]["digest"])} <= gone
    assert {"sha256:" + p.name for p in lay.blobs.iterdir()} == reachable_by_hand(lay.root)


# --- publish, signatures ---------------------------------------------------------------------

def _policy(tmp: Path, host: str, key: Path, lookaside: Path) -> list[str]:
    keyring = tmp / f"{key.parent.name}.gpg"
    r = subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "-o", str(keyring), str(key)], capture_output=True)
    assert r.returncode == 0, r.stderr
    policy = tmp / f"policy-{key.parent.name}.json"
    policy.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {
        "docker": {host: [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(keyring)}]},
        "dir": {"": [{"type": "insecureAcceptAnything"}]}}}))
    regd = tmp / "registries.d"
    regd.mkdir(exist_ok=True)
    (regd / "test.yaml").write_text(f"docker:\n  {host}:\n    lookaside: file://{lookaside}\n")
    return ["skopeo", "--override-os", "freebsd", "--policy", str(policy), "--registries.d", str(regd)]


def _pull(skopeo: list[str], ref: str, dest: Path) -> subprocess.CompletedProcess:
    shutil.rmtree(dest, ignore_errors=True)
    return run(skopeo + ["copy", "--all", "--src-tls-verify=false", ref, f"dir:{dest}"])


@pytest.fixture(scope="module")
def published(family, registry, keys, tmp_path_factory):
    require(*TOOLS)
    rb, _, _ = family
    tmp = tmp_path_factory.mktemp("published")
    lookaside = tmp / "lookaside"
    layout = Layout(rb.layout)
    index_before = (layout.root / "index.json").read_bytes()
    blobs_before = sorted(p.name for p in layout.blobs.iterdir())
    with Signer.open(str(keys["secret"])) as signer, Verifier.of_signer(signer) as verifier:
        stats = publish(layout, Registry(registry.host, insecure=True), "signed", targets_in_layout(layout),
                        signing=SigningPlan(signer, verifier, lookaside))
    # the signatures live in the lookaside only: the layout is as the build left it
    assert (layout.root / "index.json").read_bytes() == index_before
    assert sorted(p.name for p in layout.blobs.iterdir()) == blobs_before
    return rb, layout, lookaside, stats, tmp


@pytest.mark.tools
def test_publish_lists_sbom_and_provenance_in_the_referrers_tag(published, registry):
    rb, layout, _, stats, _ = published
    # docker-registry 2.8 has no referrers API: the tag schema is what clients find
    assert stats.referrer_tags == 8 and stats.referrers == 8 * 4     # SBOM, provenance, recipe, the signed statement
    attached = referrer_docs(layout)
    for digest, (name, _, _) in platform_manifests(layout).items():
        r = requests.get(f"http://{registry.host}/v2/signed/{name}/manifests/{referrers_tag(digest)}",
                         headers={"Accept": "application/vnd.oci.image.index.v1+json"}, timeout=30)
        assert r.status_code == 200, r.text
        listed = r.json()["manifests"]
        by_type: dict[str, list[dict]] = {}
        for m in listed:
            by_type.setdefault(m["artifactType"], []).append(m)
            assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
            got = requests.get(f"http://{registry.host}/v2/signed/{name}/manifests/{m['digest']}",
                               headers={"Accept": m["mediaType"]}, timeout=30)
            assert got.status_code == 200 and json.loads(got.content)["subject"]["digest"] == digest
        assert len(by_type[SPDX_MT]) == 1 and len(by_type[INTOTO_MT]) == 2     # the statement, and it signed
        assert by_type[SPDX_MT][0]["digest"] == Layout.digest_of(canonical(attached[(digest, SPDX_MT)][0]))
        assert Layout.digest_of(canonical(attached[(digest, INTOTO_MT)][0])) in {m["digest"] for m in by_type[INTOTO_MT]}


@pytest.mark.tools
def test_skopeo_accepts_the_signed_images_and_refuses_other_keys_and_replaced_manifests(published, registry, keys,
                                                                                         capsys):
    rb, layout, lookaside, _, tmp = published
    good = _policy(tmp, registry.host, keys["public"], lookaside)
    for t in targets_in_layout(layout):
        for tag in t.tags:
            r = _pull(good, f"docker://{registry.host}/signed/{t.name}:{tag}", tmp / "pulled")
            assert r.returncode == 0, (t.name, tag, r.stderr)
    other = _policy(tmp, registry.host, keys["other"], lookaside)
    image = f"docker://{registry.host}/signed/freebsd{RELEASE}-small:{RELEASE}"
    r = _pull(other, image, tmp / "pulled")
    assert r.returncode != 0 and "rejected" in r.stderr
    reg = Registry(registry.host, insecure=True)
    repo = f"signed/freebsd{RELEASE}-small"
    signed_index = reg.get_manifest(repo, RELEASE)
    # only the index is replaced (same platform manifests): skopeo 1.9 checks the instances' signatures
    # and not the index's, verify-image checks both
    idx = json.loads(signed_index)
    idx["annotations"]["org.opencontainers.image.description"] = "not what was signed"
    reg.put_manifest(repo, RELEASE, canonical(idx), "application/vnd.oci.image.index.v1+json")
    capsys.readouterr()
    assert main(["verify-image", image, "--insecure", "--key", str(keys["public"]), "--lookaside", str(lookaside)]) == 1
    out = capsys.readouterr().out
    assert "FAIL signature [index]: no signature in" in out and "FAIL signature [freebsd/amd64]" not in out
    # a platform manifest behind the tag is replaced (one annotation more, same layers): refused
    idx = json.loads(signed_index)
    amd64 = next(m for m in idx["manifests"] if m["platform"]["architecture"] == "amd64")
    man = json.loads(reg.get_manifest(repo, amd64["digest"]))
    man["annotations"]["org.opencontainers.image.description"] = "not what was signed"
    raw = canonical(man)
    reg.put_manifest(repo, Layout.digest_of(raw), raw, "application/vnd.oci.image.manifest.v1+json")
    amd64.update(digest=Layout.digest_of(raw), size=len(raw))
    reg.put_manifest(repo, RELEASE, canonical(idx), "application/vnd.oci.image.index.v1+json")
    try:
        r = _pull(good, image, tmp / "pulled")
        assert r.returncode != 0 and "signature" in r.stderr.lower(), r.stderr
        assert main(["verify-image", image, "--insecure", "--key", str(keys["public"]),
                     "--lookaside", str(lookaside)]) == 1
    finally:
        reg.put_manifest(repo, RELEASE, layout.read_blob(layout.refs()[f"freebsd{RELEASE}-small:{RELEASE}"].digest),
                         "application/vnd.oci.image.index.v1+json")
    assert _pull(good, image, tmp / "pulled").returncode == 0


@pytest.mark.tools
def test_dsse_provenance_verifies_with_plain_gpg(published, registry, keys, tmp_path):
    _, layout, _, _, _ = published
    reg = Registry(registry.host, insecure=True)
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    assert run(["gpg", "--batch", "--import", str(keys["public"])], env=env).returncode == 0
    checked = 0
    for digest, (name, _, _) in platform_manifests(layout).items():
        listed = json.loads(reg.get_manifest(f"signed/{name}", referrers_tag(digest)))["manifests"]
        for m in listed:
            man = json.loads(reg.get_manifest(f"signed/{name}", m["digest"]))
            if man["layers"][0]["mediaType"] != DSSE_MT:
                continue
            with reg.open_blob(f"signed/{name}", man["layers"][0]["digest"]) as fh:
                env_doc = json.loads(fh.read())
            payload = base64.b64decode(env_doc["payload"])
            assert payload == referrer_docs(layout)[(digest, INTOTO_MT)][1], "the signed statement is the attached one"
            (tmp_path / "pae").write_bytes(pae(env_doc["payloadType"], payload))
            (tmp_path / "sig").write_bytes(base64.b64decode(env_doc["signatures"][0]["sig"]))
            r = run(["gpg", "--batch", "--verify", str(tmp_path / "sig"), str(tmp_path / "pae")], env=env)
            assert r.returncode == 0, r.stderr
            (tmp_path / "pae").write_bytes(pae(env_doc["payloadType"], payload + b" "))
            assert run(["gpg", "--batch", "--verify", str(tmp_path / "sig"), str(tmp_path / "pae")], env=env).returncode != 0
            checked += 1
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    assert checked == 8


@pytest.mark.tools
def test_second_signed_publish_writes_nothing(published, registry, keys, capsys):
    rb, layout, lookaside, _, _ = published
    files = sorted(str(p) for p in lookaside.rglob("signature-*"))
    assert len(files) == 4 * 3 * 2        # (index + 2 platform manifests) x 2 tags, per image
    before = len(registry.requests_log())
    # the key given by id from $GNUPGHOME this time; it must not be printed
    os.environ["GNUPGHOME"] = str(keys["home"])
    try:
        with Verifier(keys["public"]) as v:
            fpr = v.fingerprints
        assert main(["publish", str(rb.layout), "--to", f"{registry.host}/signed", "--insecure", "--json",
                     "--sign-key", "test@example.org", "--lookaside", str(lookaside)]) == 0
    finally:
        del os.environ["GNUPGHOME"]
    out = capsys.readouterr()
    assert not any(f in out.out + out.err or f[-16:] in out.out + out.err for f in fpr)
    assert "test@example.org" not in out.out + out.err
    stats = json.loads(out.out)
    assert (stats["uploaded"], stats["manifests"], stats["referrers"], stats["signatures"]) == (0, 0, 0, 0)
    assert stats["referrers_unchanged"] == 24
    assert not [l for l in registry.requests_log()[before:] if l.startswith(("POST", "PATCH", "PUT"))]
    assert sorted(str(p) for p in lookaside.rglob("signature-*")) == files


@pytest.mark.tools
def test_verify_image_on_the_published_image(published, registry, keys, family, capsys):
    rb, _, lookaside, _, _ = published
    _, _, tmp = family
    image = f"docker://{registry.host}/signed/freebsd{RELEASE}-minimal:14.2p1"
    lock = tmp / "locks" / f"{RELEASE}.lock.json"
    assert main(["verify-image", image, "--insecure", "--key", str(keys["public"]), "--lookaside", str(lookaside),
                 "--lock", str(lock)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok   signature") == 1 + 2 * 2 and "FAIL" not in out and "verified" in out
    assert main(["verify-image", image, "--insecure", "--key", str(keys["other"]), "--lookaside", str(lookaside)]) == 1
    out = capsys.readouterr().out
    assert "FAIL signature [index]" in out and "FAIL signature [freebsd/amd64]" in out


# --- a registry with the referrers API --------------------------------------------------------

class ReferrersProxy(LocalHttp):
    """In front of docker-registry: answers GET /v2/<repo>/referrers/<digest> from the manifests with a
    subject that went through it, as a distribution-spec 1.1 registry does."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.index: dict[tuple[str, str], list[dict]] = {}
        self.tag_writes: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, headers, body):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = self.path.split("?")[0].split("/")
                if "referrers" in parts and self.command == "GET":
                    i = parts.index("referrers")
                    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": proxy.index.get(("/".join(parts[2:i]), parts[i + 1]), [])}
                    return self._send(200, {"Content-Type": "application/vnd.oci.image.index.v1+json"},
                                      json.dumps(doc).encode())
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = requests.request(self.command, f"http://{proxy.upstream}{self.path}", data=body or None,
                                     headers=headers, allow_redirects=False, timeout=60)
                extra = {}
                if self.command == "PUT" and "manifests" in parts and r.status_code == 201:
                    i = parts.index("manifests")
                    if parts[i + 1].startswith("sha256-"):
                        proxy.tag_writes.append(self.path)
                    doc = json.loads(body)
                    if "subject" in doc:
                        repo = "/".join(parts[2:i])
                        desc = {"mediaType": doc["mediaType"], "digest": Layout.digest_of(body), "size": len(body),
                                "artifactType": doc.get("artifactType"), "annotations": doc.get("annotations", {})}
                        have = proxy.index.setdefault((repo, doc["subject"]["digest"]), [])
                        if desc["digest"] not in {d["digest"] for d in have}:
                            have.append(desc)
                        extra["OCI-Subject"] = doc["subject"]["digest"]
                keep = {k: v for k, v in r.headers.items()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
                self._send(r.status_code, dict(keep, **extra), r.content if self.command != "HEAD" else b"")

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.start(Handler)


@pytest.mark.tools
def test_the_referrers_api_is_used_when_the_registry_has_one(family, registry, tmp_path):
    require(*TOOLS)
    rb, _, tmp = family
    layout = Layout(rb.layout)
    proxy = ReferrersProxy(registry.host)
    try:
        stats = publish(layout, Registry(proxy.host, insecure=True), "api",
                        targets_in_layout(layout, [f"freebsd{RELEASE}-base"]))
        assert stats.referrers == 6 and stats.referrer_tags == 0 and proxy.tag_writes == []
        for digest, (name, _, _) in platform_manifests(layout).items():
            if name.endswith("-base"):
                assert {d["artifactType"] for d in proxy.index[(f"api/{name}", digest)]} == {SPDX_MT, INTOTO_MT, RECIPE_MT}
        assert main(["verify-image", f"docker://{proxy.host}/api/freebsd{RELEASE}-base:{RELEASE}", "--insecure",
                     "--lock", str(tmp / "locks" / f"{RELEASE}.lock.json")]) == 0
    finally:
        proxy.stop()


# --- release checksums ---------------------------------------------------------------------

def test_checksum_files_are_signed_and_gpg_checks_them(demo_mirror, keys, tmp_path):
    project = demo_project(tmp_path)
    out = tmp_path / "out"
    argv = [a for a in build_args(project, demo_mirror, out, "--archives", "--sign-key", str(keys["secret"]),
                                  "--flavour", "static") if a != "--all"]
    assert main(argv) == 0
    rel = out / RELEASE / "release"
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    assert run(["gpg", "--batch", "--import", str(keys["public"])], env=env).returncode == 0
    for name in ("CHECKSUM.SHA256", "CHECKSUM.SHA512"):
        asc = rel / f"{name}.asc"
        assert asc.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
        r = run(["gpg", "--batch", "--verify", str(asc), str(rel / name)], env=env)
        assert r.returncode == 0 and "Good signature" in r.stderr, r.stderr
    tampered = tmp_path / "CHECKSUM.SHA256"
    tampered.write_text((rel / "CHECKSUM.SHA256").read_text().replace("SHA256 (", "SHA256 (x", 1))
    r = run(["gpg", "--batch", "--verify", str(rel / "CHECKSUM.SHA256.asc"), str(tampered)], env=env)
    assert r.returncode != 0 and "BAD signature" in r.stderr
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    # nothing of the signing went into the layout: it holds no signature
    assert not [p for p in (out / RELEASE).rglob("*.asc") if "release" not in p.parts]


# --- verify-image on layouts ---------------------------------------------------------------

def _retarget_sbom(layout: Layout, digest: str, edit) -> None:
    """Replace the SBOM of one platform manifest with edit(doc), re-pointing its artifact manifest and index.json."""
    index = json.loads((layout.root / "index.json").read_text())
    for e in index["manifests"]:
        if e.get("artifactType") != SPDX_MT:
            continue
        man = layout.read_json(e["digest"])
        if man["subject"]["digest"] != digest:
            continue
        doc = edit(json.loads(layout.read_blob(man["layers"][0]["digest"])))
        d, n = layout.put_bytes(canonical(doc))
        man["layers"][0].update(digest=d, size=n)
        e["digest"], e["size"] = layout.put_bytes(canonical(man))
    (layout.root / "index.json").write_text(json.dumps(index))


def test_verify_image_passes_on_a_fresh_build_and_names_each_mismatch(family, tmp_path, capsys):
    rb, _, tmp = family
    lock = tmp / "locks" / f"{RELEASE}.lock.json"
    ref = f"{rb.layout}:freebsd{RELEASE}-minimal:{RELEASE}"
    assert main(["verify-image", ref, "--lock", str(lock)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok   sbom") == 2 and out.count("ok   lock") == 2 and "verified" in out

    # the SBOM loses one package and misstates another's version
    bad = tmp_path / "bad-sbom"
    shutil.copytree(rb.layout, bad)
    lay = Layout(bad)
    amd64 = lay.refs()[f"freebsd{RELEASE}-minimal:{RELEASE}-amd64"].digest

    def edit(doc):
        pkgs = [p for p in doc["packages"] if p["name"] != "FreeBSD-libarchive"]
        for p in pkgs:
            if p["name"] == "FreeBSD-runtime":
                p["versionInfo"] = "14.2p9"
        return dict(doc, packages=pkgs)
    original = {}
    _retarget_sbom(lay, amd64, lambda doc: original.setdefault("amd64", doc) and edit(json.loads(json.dumps(doc))))
    # and the arm64 manifest is given the amd64 one's (unaltered) SBOM
    arm64 = lay.refs()[f"freebsd{RELEASE}-minimal:{RELEASE}-arm64"].digest
    _retarget_sbom(lay, arm64, lambda doc: original["amd64"])
    assert main(["verify-image", f"{bad}:freebsd{RELEASE}-minimal:{RELEASE}", "--lock", str(lock)]) == 1
    out = capsys.readouterr().out
    assert "FAIL sbom [freebsd/amd64]: local.sqlite has FreeBSD-libarchive 14.2p1, the SBOM does not list it" in out
    assert "FAIL sbom [freebsd/amd64]: the SBOM lists FreeBSD-runtime 14.2p9, local.sqlite does not have it" in out
    assert "FAIL lock [freebsd/amd64]: FreeBSD-runtime: SBOM version 14.2p9, locked 14.2p1" in out
    assert f"FAIL sbom [freebsd/arm64/v8]: the SBOM describes {amd64[7:]}, not {arm64}" in out

    # the lock moved on: another catalogue, a package at another version
    doc = json.loads(lock.read_text())
    doc["arches"]["amd64"]["catalogues"]["base"] = "0" * 64
    doc["arches"]["aarch64"]["packages"]["FreeBSD-runtime"]["version"] = "14.2p2"
    moved = tmp_path / "moved.lock.json"
    moved.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    assert main(["verify-image", ref, "--lock", str(moved)]) == 1
    out = capsys.readouterr().out
    assert "FAIL lock [freebsd/amd64]: provenance names lock sha256:" in out
    assert f"FAIL lock [freebsd/amd64]: catalogue base: provenance sha256:" in out and f"the lock sha256:{'0' * 64}" in out
    assert "FAIL lock [freebsd/arm64/v8]: FreeBSD-runtime: SBOM version 14.2p1, locked 14.2p2" in out

    # errors are not mismatches: exit 2
    assert main(["verify-image", f"{rb.layout}:no-such-image:1"]) == 2
    assert main(["verify-image", ref, "--key", str(lock)]) == 2
    capsys.readouterr()


# --- nightly -------------------------------------------------------------------------------

@pytest.mark.tools
def test_nightly_signs_what_it_publishes_and_reports_referrers(demo_mirror, registry, keys, tmp_path):
    require(*TOOLS)
    project = demo_project(tmp_path)
    out = tmp_path / "nightly"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"),
               FREEBSD_IMAGES_PROJECT=str(project), FREEBSD_IMAGES_REGISTRY=f"{registry.host}/nightly-signed",
               FREEBSD_IMAGES_REGISTRY_INSECURE="1", FREEBSD_IMAGES_MIRROR=f"file://{demo_mirror}",
               FREEBSD_IMAGES_KEYS=str(demo_mirror / "keys"), FREEBSD_IMAGES_OUT=str(out),
               FREEBSD_IMAGES_SIGN_KEY=str(keys["secret"]))
    env.pop("SOURCE_DATE_EPOCH", None)
    r = subprocess.run([str(ROOT / "ci" / "nightly.sh"), RELEASE, "--no-verify"], env=env, capture_output=True,
                       text=True, cwd=project)
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(keys["secret"]) not in r.stdout + r.stderr
    report = json.loads((out / "report" / "report.json").read_text())["releases"][0]
    md = (out / "report" / "report.md").read_text()
    assert report["signed"] is True and report["push"]["signatures"] == 24 and report["push"]["referrer_tags"] == 8
    for img in report["images"]:
        assert img["action"] == "published" and Path(img["signatures"]).is_dir()
        for p in img["platforms"]:
            assert sorted(x["artifactType"] for x in p["referrers"]) == sorted([SPDX_MT, INTOTO_MT, RECIPE_MT])
            assert (Path(p["signatures"]) / "signature-1").is_file()
            for x in p["referrers"]:
                assert f"`{x['digest']}`" in md
    assert "Referrers (SBOM, provenance) attached to each platform manifest, and signatures" in md
    skopeo = _policy(tmp_path, registry.host, keys["public"], out / "lookaside")
    r = _pull(skopeo, f"docker://{registry.host}/nightly-signed/freebsd{RELEASE}-small:{RELEASE}", tmp_path / "pulled")
    assert r.returncode == 0, r.stderr
