"""Building the family from the generated mirror: layers, sharing, whiteouts, and
reproducibility under perturbation of the host."""
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from builder.cli import main
from builder.layers.writer import IdMap
from builder.oci.layout import Layout
from tests.buildutil import demo_project, reachable_by_hand
from tests.conftest import ETC, ROOT

RELEASE = "14.2"


def build_args(project: Path, mirror: Path, out: Path, *extra: str) -> list[str]:
    return ["--project", str(project), "build", "--release", RELEASE, "--all", "--out", str(out),
            "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"), "--lock-dir", str(out.parent / "locks"),
            *extra]


@pytest.fixture(scope="module")
def built(demo_mirror, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("built")
    project = demo_project(tmp)
    out = tmp / "out"
    assert main(build_args(project, demo_mirror, out, "--json")) == 0
    return project, Layout(out / RELEASE)


def manifests(layout: Layout, image: str, arch: str = "amd64") -> dict:
    return layout.read_json(layout.refs()[f"{image}:{RELEASE}-{arch}"].digest)


def layer_members(layout: Layout, digest: str) -> list[tarfile.TarInfo]:
    # gzip.GzipFile reads every member of a multi-member layer; tarfile's own "r|gz" stops after the first.
    with layout.open_blob(digest) as fh, gzip.GzipFile(fileobj=fh) as gz:
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            return [m for m in tar]


def test_family_shares_layers(built):
    _, layout = built
    for arch in ("amd64", "arm64"):
        chain = [manifests(layout, f"freebsd{RELEASE}-{f}", arch)["layers"] for f in ("static", "base", "minimal", "small")]
        for i, layers in enumerate(chain):
            assert len(layers) == i + 1
            if i:
                assert layers[:i] == chain[i - 1], "each flavour reuses all of its parent's layers"
    # and both arches differ (ELF machine)
    assert manifests(layout, f"freebsd{RELEASE}-base", "amd64")["layers"][1] != manifests(layout, f"freebsd{RELEASE}-base", "arm64")["layers"][1]


def test_layer_tar_is_normalised(built):
    _, layout = built
    man = manifests(layout, f"freebsd{RELEASE}-minimal")
    below: set[str] = set()
    for desc in man["layers"]:
        with layout.open_blob(desc["digest"]) as fh:
            head = fh.read(10)
        assert head == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", "gzip header: no name, mtime 0, OS 3"
        members = layer_members(layout, desc["digest"])
        names = [m.name for m in members]
        keys = [tuple(n.split("/")) for n in names]
        assert keys == sorted(keys), "sorted component-wise"
        seen = set()
        for m in members:
            parent = m.name.rsplit("/", 1)[0] if "/" in m.name else None
            assert parent is None or parent in seen or parent in below, f"{m.name} before its parent"
            seen.add(m.name)
            assert m.mtime <= 1731456000
            assert "atime" not in m.pax_headers and "ctime" not in m.pax_headers
            assert m.type in (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
            assert not m.issparse()
        below |= seen
    # parents first within the bottom layer (the whole tree)
    first = layer_members(layout, man["layers"][0]["digest"])
    seen = set()
    for m in first:
        if "/" in m.name:
            assert m.name.rsplit("/", 1)[0] in seen, m.name
        seen.add(m.name)


def test_image_contents(built):
    _, layout = built
    allm = {}
    for d in manifests(layout, f"freebsd{RELEASE}-small")["layers"]:
        for m in layer_members(layout, d["digest"]):
            allm[m.name] = m
    assert allm["etc/master.passwd"].mode == 0o600
    assert allm["etc/spwd.db"].mode == 0o600
    assert allm["tmp"].mode == 0o1777
    assert allm["usr/bin/su"].mode & 0o4000
    assert allm["bin/sh"].uid == 0 and allm["bin/sh"].uname == "root"
    assert "var/db/pkg/local.sqlite" in allm and "var/db/services.db" in allm
    assert any(n.startswith("etc/ssl/certs/") for n in allm)
    assert "usr/local/etc/pkg/repos/FreeBSD-base.conf" in allm
    hard = [m for m in allm.values() if m.type == tarfile.LNKTYPE]
    assert hard, "the generator ships hard links; they stay links"
    # the static layer has the skeleton and no libc
    static = {m.name for m in layer_members(layout, manifests(layout, f"freebsd{RELEASE}-static")["layers"][0]["digest"])}
    assert "usr/share/zoneinfo" in static and "etc/pwd.db" in static and "lib/libc.so.7" not in static
    assert "var/db/pkg/local.sqlite" in static


def _ids_by_name(text: str) -> dict[str, int]:
    """name -> id (third field) of a master.passwd or group file, parsed here, not by the builder."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            f = line.split(":")
            out.setdefault(f[0], int(f[2]))
    return out


def test_idmap_uses_the_images_own_passwd_and_group():
    passwd = (b"# $FreeBSD$\nroot:*:0:0::0:0:Charlie &:/root:/bin/csh\n"
              b"ntpd:*:123:123::0:0:NTP Daemon:/var/db/ntp:/usr/sbin/nologin\n"
              b"builder:*:1234:4321::0:0:Builder:/home/builder:/bin/sh\n")
    group = b"# $FreeBSD$\nwheel:*:0:root\noperator:*:5:root\nntpd:*:123:\nbuilders:*:4321:builder\n"
    ids = IdMap(passwd, group)
    assert [ids.uid(n, "test") for n in ("root", "ntpd", "builder")] == [0, 123, 1234]
    assert [ids.gid(n, "test") for n in ("wheel", "operator", "ntpd", "builders")] == [0, 5, 123, 4321]
    # a name the image does not know installs as 0, like pkg
    assert ids.uid("nosuchuser", "test") == 0 and ids.gid("nosuchgroup", "test") == 0
    # and the real FreeBSD files: every user and group gets its own id
    users, groups = (ETC / "master.passwd").read_text(), (ETC / "group").read_text()
    real = IdMap(users.encode(), groups.encode())
    want_u, want_g = _ids_by_name(users), _ids_by_name(groups)
    assert sum(1 for v in want_u.values() if v) > 20 and sum(1 for v in want_g.values() if v) > 20
    assert {n: real.uid(n, "test") for n in want_u} == want_u
    assert {n: real.gid(n, "test") for n in want_g} == want_g


def test_layer_owners_get_ids_from_the_images_passwd(built):
    """Entries owned by users other than root carry the numeric ids of the image's own
    /etc/master.passwd and /etc/group (read back from the same layers)."""
    _, layout = built
    for arch in ("amd64", "arm64"):
        allm, data = {}, {}
        for d in manifests(layout, f"freebsd{RELEASE}-small", arch)["layers"]:
            with layout.open_blob(d["digest"]) as fh, gzip.GzipFile(fileobj=fh) as gz, \
                    tarfile.open(fileobj=gz, mode="r|") as tar:
                for m in tar:
                    allm[m.name] = m
                    if m.name in ("etc/master.passwd", "etc/group"):
                        data[m.name] = tar.extractfile(m).read().decode()
        users, groups = _ids_by_name(data["etc/master.passwd"]), _ids_by_name(data["etc/group"])
        non_root = [m for m in allm.values() if m.uname != "root" or m.gname != "wheel"]
        assert len([m for m in non_root if users.get(m.uname, 0)]) >= 5, "the generator ships non-root-owned paths"
        assert len([m for m in non_root if groups.get(m.gname, 0)]) >= 5
        wrong = [(m.name, m.uname, m.uid, m.gname, m.gid) for m in allm.values()
                 if (m.uid, m.gid) != (users.get(m.uname, 0), groups.get(m.gname, 0))]
        assert wrong == []
        ntp = allm["var/db/ntp"]
        assert (ntp.uname, ntp.uid, ntp.gname, ntp.gid) == ("ntpd", users["ntpd"], "ntpd", groups["ntpd"])
        assert users["ntpd"] == 123 and groups["ntpd"] == 123
        lock = allm["var/spool/lock"]
        assert (lock.uid, lock.gid) == (users["uucp"], groups["dialer"]) == (66, 68)


def test_config_and_annotations(built):
    _, layout = built
    idx = layout.read_json(layout.refs()[f"freebsd{RELEASE}-minimal:{RELEASE}"].digest)
    plats = {m["platform"]["architecture"]: m["platform"] for m in idx["manifests"]}
    assert plats["amd64"] == {"architecture": "amd64", "os": "freebsd"}
    assert plats["arm64"] == {"architecture": "arm64", "os": "freebsd", "variant": "v8"}
    man = manifests(layout, f"freebsd{RELEASE}-minimal")
    cfg = layout.read_json(man["config"]["digest"])
    assert cfg["os"] == "freebsd" and cfg["architecture"] == "amd64"
    assert cfg["created"] == "2024-11-13T00:00:00Z"
    assert cfg["config"]["Cmd"] == ["/bin/sh"]
    assert any(e.startswith("PATH=/sbin:/bin") for e in cfg["config"]["Env"])
    assert len(cfg["rootfs"]["diff_ids"]) == len(man["layers"]) == len(cfg["history"]) == 3
    assert "FreeBSD-runtime" in cfg["history"][2]["created_by"]
    ann = man["annotations"]
    base = manifests(layout, f"freebsd{RELEASE}-base")
    assert ann["org.opencontainers.image.base.digest"] == layout.refs()[f"freebsd{RELEASE}-base:{RELEASE}-amd64"].digest
    # fully qualified, in the release file's publish namespace (image-spec: base.name is a full reference)
    assert ann["org.opencontainers.image.base.name"] == f"ghcr.io/freebsd/freebsd{RELEASE}-base:{RELEASE}"
    assert ann["org.freebsd.version"] == "14.2p1" and ann["org.opencontainers.image.version"] == "14.2p1"
    for k in ("created", "title", "description", "licenses", "vendor", "url", "source"):
        assert ann[f"org.opencontainers.image.{k}"]
    assert base["annotations"]["org.opencontainers.image.base.name"] == f"ghcr.io/freebsd/freebsd{RELEASE}-static:{RELEASE}"
    # no revision configured in the release file: none in the images (the checkout's goes on the refs only)
    assert "org.opencontainers.image.revision" not in ann
    refs = layout.refs()
    assert f"freebsd{RELEASE}-minimal:14.2p1" in refs


def test_rebuild_writes_nothing_new(built, demo_mirror):
    project, layout = built
    before = {p.name: p.stat().st_mtime_ns for p in layout.blobs.iterdir()}
    index = (layout.root / "index.json").read_bytes()
    out = layout.root.parent
    assert main(build_args(project, demo_mirror, out)) == 0
    after = {p.name: p.stat().st_mtime_ns for p in layout.blobs.iterdir()}
    assert after == before
    assert (layout.root / "index.json").read_bytes() == index


def test_remove_gives_whiteout_and_squash_gives_one_layer(demo_mirror, tmp_path):
    project = demo_project(tmp_path)
    fam = yaml.safe_load((project / "families.yaml").read_text())
    fam["flavours"]["small"]["remove"] = ["/usr/share/zoneinfo", "/etc/termcap.small"]
    (project / "families.yaml").write_text(yaml.safe_dump(fam))
    out = tmp_path / "out"
    narrowed = [a for a in build_args(project, demo_mirror, out) if a != "--all"] + ["--flavour", "small", "--arch", "amd64"]
    assert "--all" not in narrowed
    assert main(narrowed) == 0
    layout = Layout(out / RELEASE)
    # the narrowing took: small and the flavours it is built on, for amd64 only
    refs = layout.refs()
    assert set(refs) == {f"freebsd{RELEASE}-{f}:{t}" for f in ("static", "base", "minimal", "small")
                         for t in (RELEASE, "14.2p1", f"{RELEASE}-amd64")}
    for name, desc in refs.items():
        if desc.media_type.endswith("index.v1+json"):
            assert [m["platform"]["architecture"] for m in layout.read_json(desc.digest)["manifests"]] == ["amd64"], name
    assert len(list(layout.blobs.iterdir())) == 4 + 4 + 4 + 4 + 4 * 3 * 2 + 1, \
        "indexes, manifests, configs and layers of one arch; an SBOM, a provenance and a recipe (manifest + " \
        "document) per platform manifest and their shared empty config"
    top = manifests(layout, f"freebsd{RELEASE}-small")["layers"][-1]
    names = {m.name for m in layer_members(layout, top["digest"])}
    assert "usr/share/.wh.zoneinfo" in names and "etc/.wh.termcap.small" in names
    assert not any(n.startswith("usr/share/zoneinfo/") for n in names)
    squashed = tmp_path / "sq" / "out"   # its own lock dir: the narrowed build locked amd64 only
    assert main(build_args(project, demo_mirror, squashed, "--squash", "--zstd")) == 0
    lay = Layout(squashed / RELEASE)
    man = manifests(lay, f"freebsd{RELEASE}-small")
    assert len(man["layers"]) == 1
    assert man["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"


def test_gc_removes_only_unreferenced(built, tmp_path):
    _, layout = built
    want = reachable_by_hand(layout.root)
    # 16 refs: 4 indexes (two tags each), 8 platform manifests (ref'd by name too) -> 8 configs, 4 layers per arch;
    # 16 referrers (SBOM and provenance of each platform manifest): manifest + document each, one empty config
    assert len(want) == 4 + 8 + 8 + 4 * 2 + 24 * 2 + 1
    assert {"sha256:" + p.name for p in layout.blobs.iterdir()} == want, "the build leaves no garbage"
    stray = layout.blobs / ("0" * 64)
    stray.write_bytes(b"stray")
    # an unreferenced manifest keeps nothing alive: neither itself nor the config and layer only it names
    orphan_layer, n = layout.put_bytes(b"orphan layer")
    orphan_cfg, m = layout.put_bytes(b'{"orphan": "config"}')
    orphan_man, _ = layout.put_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": orphan_cfg, "size": m},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": orphan_layer, "size": n}]}).encode())
    leftover = layout.blobs / ".blob.interrupted.tmp"
    leftover.write_bytes(b"half a blob")
    assert main(["gc", str(layout.root)]) == 0
    assert not stray.exists() and not leftover.exists()
    assert {"sha256:" + p.name for p in layout.blobs.iterdir()} == want


PERTURBATIONS = [
    {"TZ": "UTC", "LC_ALL": "C", "PYTHONHASHSEED": "0", "umask": "022", "jobs": "1"},
    {"TZ": "Pacific/Kiritimati", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "4242", "umask": "077", "jobs": "2"},
]


def _digests(layout_dir: Path) -> dict:
    layout = Layout(layout_dir)
    return {name: d.digest for name, d in layout.refs().items()}


def test_reproducible_under_perturbation(demo_mirror, tmp_path):
    """Two builds in different directories, time zones, locales, umasks, hash seeds,
    parallelism and a cold vs warm cache give the same digests, byte for byte."""
    project = demo_project(tmp_path)
    cache = tmp_path / "cache"
    results = []
    for i, p in enumerate(PERTURBATIONS):
        cwd = tmp_path / f"cwd{i}"
        cwd.mkdir()
        out = tmp_path / f"out{i}"
        env = dict(os.environ, TZ=p["TZ"], LC_ALL=p["LC_ALL"], PYTHONHASHSEED=p["PYTHONHASHSEED"],
                   XDG_CACHE_HOME=str(cache), PYTHONPATH=str(ROOT))
        env.pop("SOURCE_DATE_EPOCH", None)
        cmd = " ".join([f"umask {p['umask']};", "exec", sys.executable, "-m", "builder"]
                       + [f"'{a}'" for a in build_args(project, demo_mirror, out, "--jobs", p["jobs"])])
        r = subprocess.run(["sh", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        results.append(_digests(out / RELEASE))
        if i == 0:
            assert any(cache.rglob("*")), "first build filled the cache (the second runs warm)"
    assert results[0] == results[1]
    assert len(results[0]) == 16
    a, b = (sorted(p.name for p in (tmp_path / f"out{i}" / RELEASE / "blobs" / "sha256").iterdir()) for i in (0, 1))
    assert a == b


def test_flavours_may_share_an_image_name_with_other_tags(demo_mirror, tmp_path):
    """Refs and indexes are made per flavour: one name, tags that differ, every flavour keeps its refs."""
    project = demo_project(tmp_path)
    rel = project / "releases" / f"{RELEASE}.yaml"
    text = rel.read_text().replace('name: "freebsd{{ release }}-{{ flavour }}"', 'name: "freebsd{{ release }}"')
    rel.write_text(text.replace('immutable: ["{{ release }}", "{{ version }}"]', 'immutable: ["{{ flavour }}-{{ version }}"]'))
    out = tmp_path / "out"
    assert main(build_args(project, demo_mirror, out, "--arch", "amd64")) == 0
    refs = Layout(out / RELEASE).refs()
    assert {r for r in refs if not r.endswith("-amd64")} == {f"freebsd{RELEASE}:{f}-14.2p1"
                                                             for f in ("static", "base", "minimal", "small")}
