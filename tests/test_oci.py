"""OCI output checked by independent tools (skopeo, umoci, oci-image-tool) and a real
registry: layouts, indexes, release archives, publishing, and interrupted builds."""
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from builder.layers.build import build_arch
from builder.layers.plan import LayerOptions
from builder.cli import main
from builder.errors import BuildError
from builder.oci.archive import archive_name, write_archives
from builder.oci.layout import Layout
from builder.oci.registry import Registry, publish, targets_in_layout
from tests.buildutil import build_demo_family, demo_project, reachable_by_hand, run, tree, walk_tree
from tests.conftest import ROOT
from tests.registry import AuthProxy
from tests.tools import TOOLS, have, require

RELEASE = "14.2"


@pytest.fixture
def needs_tools_fixture():
    require(*TOOLS)


def needs_tools(test):
    """Every OCI tool on PATH (skipped locally without them, a failure under CI), and marked tools."""
    return pytest.mark.tools(pytest.mark.usefixtures("needs_tools_fixture")(test))


@pytest.fixture(scope="module")
def family(demo_mirror, tmp_path_factory):
    """The demo family built in-process."""
    return build_demo_family(demo_mirror, tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="module")
def models(family, tmp_path_factory):
    """The filesystem models of the family's images, built again from the same lock (a release build
    keeps none: they are as large as the images' metadata), with the same layers as the family's."""
    rb, ctx, _ = family
    lock = ctx.ensure_lock()
    layout = Layout(tmp_path_factory.mktemp("models")).init()
    out = {}
    for arch in ctx.arches:
        out[arch] = build_arch(ctx.family, ctx.target.release, arch, lock.arches[arch], ctx.fetch_locked(lock, arch),
                               LayerOptions(epoch=rb.epoch), lambda write: layout.put_stream(write)[0])
        for img in rb.images:
            if img.arch == arch:
                assert [l.digest for l in out[arch][img.flavour].layers] == [l.digest for l in img.layers]
    return out


def skopeo(*args) -> subprocess.CompletedProcess:
    return run(["skopeo", "--override-os", "freebsd", *args])


@needs_tools
def test_skopeo_reads_our_indexes(family):
    rb, _, _ = family
    layout = Layout(rb.layout)
    for ref, desc in layout.refs().items():
        r = skopeo("inspect", "--raw", f"oci:{rb.layout}:{ref}")
        assert r.returncode == 0, r.stderr
        assert "sha256:" + hashlib.sha256(r.stdout.encode()).hexdigest() == desc.digest
    # and resolves each platform out of the index
    r = skopeo("--override-arch", "arm64", "inspect", f"oci:{rb.layout}:freebsd{RELEASE}-small:{RELEASE}")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["Architecture"] == "arm64" and doc["Os"] == "freebsd" and len(doc["Layers"]) == 4


@needs_tools
def test_oci_image_tool_validates_every_ref(family):
    rb, _, _ = family
    for ref in Layout(rb.layout).refs():
        # oci-image-tool 1.0.0-rc filters index.json in place while iterating and skips
        # the entry after each one it drops; repeating the filter converges on the one match.
        r = run(["oci-image-tool", "validate", "--type", "image"] + ["--ref", f"name={ref}"] * 8 + [str(rb.layout)])
        assert r.returncode == 0 and "Validation succeeded" in r.stdout, (ref, r.stdout, r.stderr)


@needs_tools
@pytest.mark.parametrize("flavour", ["static", "minimal", "small"])
def test_umoci_unpack_matches_filesystem_model(family, models, tmp_path, flavour):
    rb, _, _ = family
    for arch, platform in (("amd64", "amd64"), ("aarch64", "arm64")):
        dest = tmp_path / f"{flavour}-{arch}"
        cmd = ["umoci", "raw", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
        r = run(cmd + ["--image", f"{rb.layout}:freebsd{RELEASE}-{flavour}:{RELEASE}-{platform}", str(dest)])
        assert r.returncode == 0, r.stderr
        got = walk_tree(dest)
        want = {p: (k, m if k != "l" else 0o777, s, h) for p, k, m, s, h in tree(models[arch][flavour].fs)}
        assert set(got) == set(want)
        diffs = [(p, got[p], want[p]) for p in want if got[p] != want[p]]
        if os.geteuid() != 0:
            # rootless umoci cannot set setuid bits or give directories modes that lock it out
            diffs = [d for d in diffs if d[1][0] != "d" and not (d[2][1] & 0o6000)]
        assert diffs == []


def test_layout_index_and_refs(family):
    rb, _, _ = family
    layout = Layout(rb.layout)
    assert json.loads((rb.layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    refs = layout.refs()
    for fl in ("static", "base", "minimal", "small"):
        for tag in (RELEASE, "14.2p1"):
            assert refs[f"freebsd{RELEASE}-{fl}:{tag}"].media_type == "application/vnd.oci.image.index.v1+json"
        for plat in ("amd64", "arm64"):
            assert refs[f"freebsd{RELEASE}-{fl}:{RELEASE}-{plat}"].media_type == "application/vnd.oci.image.manifest.v1+json"
    # every blob's name is its digest
    for p in layout.blobs.iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name


@pytest.mark.tools   # skopeo reads the archive (under CI a missing skopeo fails it)
def test_release_archives_are_deterministic_and_loadable(family, tmp_path):
    rb, ctx, _ = family
    rel = ctx.project.release(RELEASE)
    a = write_archives(rb, rel, tmp_path / "a")
    b = write_archives(rb, rel, tmp_path / "b")
    names = sorted(p.name for p in a)
    assert "FreeBSD-14.2-RELEASE-amd64-container-image-minimal.txz" in names
    assert "FreeBSD-14.2-RELEASE-arm64-aarch64-container-image-small.txz" in names
    assert "CHECKSUM.SHA256" in names and "CHECKSUM.SHA512" in names
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    sums = (tmp_path / "a" / "CHECKSUM.SHA256").read_text().splitlines()
    assert len(sums) == 8
    first = sums[0]
    name = first[first.index("(") + 1:first.index(")")]
    assert first.endswith(hashlib.sha256((tmp_path / "a" / name).read_bytes()).hexdigest())
    arc = tmp_path / "a" / archive_name(rel, "amd64", "minimal")
    with tarfile.open(arc) as t:
        names = t.getnames()
        assert {"oci-layout", "index.json"} <= set(names)
        assert all(m.mtime == rb.epoch and m.uid == 0 for m in t.getmembers())
    if have("skopeo"):
        r = skopeo("inspect", "--raw", f"oci-archive:{arc}")
        assert r.returncode == 0, r.stderr
        img = next(i for i in rb.images if i.flavour == "minimal" and i.arch == "amd64")
        assert "sha256:" + hashlib.sha256(r.stdout.encode()).hexdigest() == img.manifest.digest


@needs_tools
def test_publish_matches_skopeo_copy_and_second_publish_uploads_nothing(family, registry):
    rb, _, _ = family
    layout = Layout(rb.layout)
    # skopeo as the independent client
    for t in targets_in_layout(layout):
        r = skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{rb.layout}:{t.name}:{t.tags[0]}",
                   f"docker://{registry.host}/skopeo/{t.name}:{t.tags[0]}")
        assert r.returncode == 0, r.stderr
    reg = Registry(registry.host, insecure=True, chunk_size=256 << 10, monolithic_max=256 << 10)
    stats = publish(layout, reg, "ours", targets_in_layout(layout))
    assert stats.uploaded > 0 and stats.mounted > 0, "shared lower layers are mounted, not uploaded again"
    assert stats.manifests == 4 * 2 + 4 + 4 * 2   # platform manifests, indexes by digest, two tags each
    for t in targets_in_layout(layout):
        for tag in t.tags:
            ours = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/ours/{t.name}:{tag}")
            assert ours.returncode == 0, ours.stderr
            assert "sha256:" + hashlib.sha256(ours.stdout.encode()).hexdigest() == t.index_digest
        theirs = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/skopeo/{t.name}:{t.tags[0]}")
        assert theirs.stdout == ours.stdout
    # large layers went up in PATCH chunks
    log = registry.requests_log()
    assert any(l.startswith("PATCH /v2/ours/") for l in log)
    # a second publish: no blob uploads at all (client stats and the registry's own log agree)
    before = len(log)
    again = publish(layout, Registry(registry.host, insecure=True), "ours", targets_in_layout(layout))
    assert (again.uploaded, again.mounted, again.manifests) == (0, 0, 0)
    new = registry.requests_log()[before:]
    assert not [l for l in new if l.startswith(("POST", "PATCH", "PUT"))]


@needs_tools
@pytest.mark.parametrize("mode", ["basic", "bearer"])
def test_publish_with_auth(family, registry, mode, monkeypatch, capsys):
    rb, _, _ = family
    proxy = AuthProxy(registry.host, mode)
    try:
        with pytest.raises(BuildError, match="wants a user name" if mode == "basic" else "token request"):
            publish(Layout(rb.layout), Registry(proxy.host, insecure=True), f"auth{mode}",
                    targets_in_layout(Layout(rb.layout), [f"freebsd{RELEASE}-static"]))
        monkeypatch.setenv("FREEBSD_IMAGES_REGISTRY_PASSWORD", proxy.password)
        assert main(["publish", str(rb.layout), "--to", f"{proxy.host}/auth{mode}", "--insecure",
                     "--user", proxy.user, "--image", f"freebsd{RELEASE}-static", "--json"]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["uploaded"] == 4 and stats["manifests"] == 5   # (config + layer) x 2 arches; 2 + index + 2 tags
        assert proxy.challenges >= 1
        if mode == "bearer":
            assert any(t["ok"] and t["scope"] for t in proxy.token_requests)
    finally:
        proxy.stop()


def test_publish_dry_run_pushes_nothing(family, capsys):
    rb, _, _ = family
    # nothing listens on port 9: a dry run must not even connect
    assert main(["publish", str(rb.layout), "--to", "127.0.0.1:9/x", "--insecure", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "would push" in err


def test_gc_dry_run_removes_nothing_and_reports(tmp_path, capsys):
    from builder.oci.layout import CONFIG_MT, INDEX_MT, MANIFEST_MT
    layout = Layout(tmp_path / "layout").init()
    layer, n = layout.put_bytes(b"layer")
    cfg = layout.put_json({"architecture": "amd64", "os": "freebsd"}, CONFIG_MT)
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": n}
    man = layout.put_json({"schemaVersion": 2, "mediaType": MANIFEST_MT, "config": cfg.to_json(), "layers": [layer_desc]},
                          MANIFEST_MT)
    idx = layout.put_json({"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": [man.to_json()]}, INDEX_MT)
    layout.set_refs({"img:1": idx})
    orphan, n2 = layout.put_bytes(b"orphan layer")
    orphan_man = layout.put_json({"schemaVersion": 2, "mediaType": MANIFEST_MT, "config": cfg.to_json(),
                                  "layers": [dict(layer_desc, digest=orphan, size=n2)]}, MANIFEST_MT)
    (layout.blobs / ".blob.killed.tmp").write_bytes(b"half a blob")
    garbage = sorted([orphan.split(":")[1], orphan_man.digest.split(":")[1], ".blob.killed.tmp"])

    def files():
        return {p.name: p.read_bytes() for p in layout.blobs.iterdir()}
    before = files()
    assert len(before) == 7
    assert sorted(layout.gc(dry_run=True)) == garbage
    assert files() == before
    assert main(["gc", "--dry-run", str(layout.root)]) == 0
    assert capsys.readouterr().out.strip() == f"would remove 3 blobs from {layout.root}"
    assert files() == before
    # the real thing removes exactly what the dry run listed
    assert main(["gc", str(layout.root)]) == 0
    assert capsys.readouterr().out.strip() == f"removed 3 blobs from {layout.root}"
    assert files() == {k: v for k, v in before.items() if k not in garbage}


@pytest.mark.tools   # skopeo reads the surviving layout (under CI a missing skopeo fails it)
def test_sigkill_mid_build_leaves_previous_layout_valid(demo_mirror, tmp_path):
    """Kill -9 a build while it writes layers: the old layout still reads, the next build succeeds."""
    from builder.config.release import load_release
    from builder.gen.repo import GenOptions, generate
    big = tmp_path / "bigmirror"
    generate(load_release(ROOT / "releases" / f"{RELEASE}.yaml", ROOT), big, ["amd64"], GenOptions(scale=40))
    project = demo_project(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"))
    base = [sys.executable, "-m", "builder", "--project", str(project), "build", "--release", RELEASE, "--all",
            "--arch", "amd64", "--out", str(out), "--mirror", f"file://{big}", "--keys", str(big / "keys"),
            "--lock-dir", str(tmp_path / "locks")]
    # a first, complete build of the small mirror's images
    small = [a if a != f"file://{big}" else f"file://{demo_mirror}" for a in base]
    small[small.index(str(big / "keys"))] = str(demo_mirror / "keys")
    small[small.index(str(tmp_path / "locks"))] = str(tmp_path / "locks-small")
    r = subprocess.run(small, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    layout = Layout(out / RELEASE)
    index_before = (layout.root / "index.json").read_bytes()
    reachable = reachable_by_hand(layout.root)
    assert len(reachable) > 10 and {"sha256:" + p.name for p in layout.blobs.iterdir()} == reachable
    # now a big build, killed while it is writing blobs: wait until a layer's temporary blob has data
    proc = subprocess.Popen(base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def writing() -> list[Path]:
        # a big layer well under way (small ones can finish between the look and the kill)
        out = []
        for p in layout.blobs.glob(".blob.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_size > 1 << 20:
                    out.append(p)
        return out
    deadline = time.time() + 120
    partial: list[Path] = []
    while time.time() < deadline and proc.poll() is None and not partial:
        partial = writing()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build was killed, not finished"
    assert partial, "no blob was being written when the build was killed"
    # the kill landed mid-write: the temporary blob it was writing is still there, under no digest name
    left = [p for p in partial if p.exists()]
    assert left, f"{[p.name for p in partial]} vanished: the blob was finished before the kill"
    assert (layout.root / "index.json").read_bytes() == index_before
    for d in reachable:
        assert layout.has_blob(d)
        assert hashlib.sha256(layout.blob_path(d).read_bytes()).hexdigest() == d.split(":")[1]
    if have("skopeo"):
        assert skopeo("inspect", "--raw", f"oci:{layout.root}:freebsd{RELEASE}-small:{RELEASE}").returncode == 0
    # the next build completes, and gc clears the dead temporary blob
    r = subprocess.run(base, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert any(p.exists() for p in left), "the dead temporary blob survives the next build"
    assert main(["gc", str(layout.root)]) == 0
    assert not any(p.name.startswith(".") for p in layout.blobs.iterdir())
    assert reachable_by_hand(layout.root) == {"sha256:" + p.name for p in layout.blobs.iterdir()}


@pytest.mark.tools
def test_a_second_publish_says_nothing_was_pushed(family, registry, capsys):
    rb, _, _ = family
    argv = ["publish", str(rb.layout), "--to", f"{registry.host}/twice", "--insecure", "--image", f"freebsd{RELEASE}-static"]
    assert main(argv) == 0
    assert f"pushed twice/freebsd{RELEASE}-static:" in capsys.readouterr().err
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"unchanged twice/freebsd{RELEASE}-static:" in err and "pushed " not in err


@pytest.mark.tools
def test_a_plain_http_registry_without_insecure_says_so_at_once(family, registry, capsys):
    rb, _, _ = family
    start = time.monotonic()
    assert main(["publish", str(rb.layout), "--to", f"{registry.host}/tls", "--image", f"freebsd{RELEASE}-static"]) == 2
    assert time.monotonic() - start < 3          # no retries of an answer that cannot change
    err = capsys.readouterr().err
    assert "does not speak TLS" in err and "needs --insecure" in err
