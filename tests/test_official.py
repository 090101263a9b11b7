"""The official family (families/official.yaml): FreeBSD's own images, their package sets, trust
roots, repository names and archive refs, built from generated 14.2 and 15.0 mirrors.

What each test catches:
- test_official_images_match_their_lines_definitions: a release line whose images, packages,
  parents, commands or static extras differ from FreeBSD's definitions on that line's branch
  (tests/fixtures/freebsd-oci/images.yaml, per line, with commit and branch), compared in the
  line's own package names: a release file's package-map cannot make a wrong name right.
- test_every_release_file_is_a_recorded_line / test_fixture_records_commit_and_branch: a release
  file without FreeBSD's facts for its line, or facts without a commit, branch or open questions.
- test_generated_lines_carry_their_names: a generated repository lacking a package its line's
  definitions name, or having a name that line does not (FreeBSD-krb5-lib on 15.0).
- test_release_keys_match_freebsd_fingerprints: trust roots in keys/ or release files that are
  not FreeBSD's (a missing pkgbase-15, a release naming keys/pkgbase-14).
- test_every_pkg_configuration_names_trust_the_image_has: an image whose pkg repository
  configuration names a fingerprints directory it lacks (read from the image layers, parsed here).
- test_archive_refs_are_unique_across_arches_and_flavours: release archives sharing a ref
  (podman load would leave all but one untagged), official refs not freebsd-<image>:<rev>-<branch>-<arch>.
- test_fifteen_repository_names_in_release_files_and_pkgdb: 15.x repositories named as 14's.
- test_base_name_is_fully_qualified_and_revision_outside_images / test_configured_revision_is_in_the_images.
"""
from __future__ import annotations

import fcntl
import json
import re
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from builder.cli import main
from builder.config.project import load_project
from builder.config.release import load_release, release_files
from builder.gen.repo import GenOptions, generate
from tests.conftest import FIXTURES, ROOT

OCI = yaml.safe_load((FIXTURES / "freebsd-oci" / "images.yaml").read_text())
DEFS, LINES = OCI["definitions"], OCI["lines"]
BUILDS = (("official", "15.0"), ("default", "15.0"), ("official", "14.2"), ("default", "14.2"))
MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
REF = "org.opencontainers.image.ref.name"
BUILT_LINES = [p.stem for p in release_files(ROOT / "releases")]


def _plan(release: str, family: str, capsys) -> dict:
    assert main(["plan", "--json", "--family", family, "--release", release, "--arch", "amd64"]) == 0
    return {t["flavour"]: t for t in json.loads(capsys.readouterr().out)["targets"]}


def line_images(line: str) -> dict[str, dict]:
    """FreeBSD's images on a line, in Makefile.oci's order: image -> its .conf's definition."""
    return {image: DEFS[key] for image, key in LINES[line]["images"].items()}


def test_every_release_file_is_a_recorded_line():
    project = load_project()
    for name, rel in project.releases.items():
        assert name in LINES, f"releases/{name}.yaml: no FreeBSD definitions recorded for line {name}"
        assert LINES[name]["branch"] == rel.branch, name
    for name, line in LINES.items():
        assert (name in project.releases) == line.get("release-file", True), name


def test_fixture_records_commit_and_branch():
    for key, d in DEFS.items():
        assert re.fullmatch(r"[0-9a-f]{40}", d["commit"]), key
        assert re.fullmatch(r"main|(releng|stable)/[0-9.]+|unknown", d["branch"]), key
    for name, line in LINES.items():
        assert re.fullmatch(r"main|(releng|stable)/[0-9.]+", line["branch"]), name
        used = [DEFS[k] for k in line["images"].values()] + [DEFS[line["names"]]] + (
            [DEFS[line["makefile"]]] if line["makefile"] else [])
        # a definition read on another branch (or on none the store can tell) is an open question
        if any(d["branch"] != line["branch"] for d in used) or not line["makefile"]:
            assert line["open"], f"line {name} uses evidence from other branches: say so under open:"
        if line["makefile"]:
            assert list(line["images"]) == DEFS[line["makefile"]]["images"], name
        images = line_images(name)
        for image, d in images.items():
            assert d["path"] == f"release/tools/oci-image-{image}.conf", (name, image)
            assert d["base"] is None or list(images).index(d["base"]) < list(images).index(image), (name, image)


@pytest.mark.parametrize("release", BUILT_LINES)
def test_official_images_match_their_lines_definitions(release, capsys):
    project = load_project()
    rel, fam = project.view(release, "official")
    want = line_images(release)
    plan = _plan(release, "official", capsys)
    assert list(plan) == list(want), (f"line {release} ({LINES[release]['branch']}): the official family builds "
                                      f"FreeBSD's images, in Makefile.oci's order")
    for image, conf in want.items():
        t = plan[image]
        # FreeBSD's list on this line, in this line's names: not through the release's package-map
        assert t["own_packages"] == conf["packages"], (release, image, conf["path"], conf["commit"])
        assert t["parent"] == conf["base"], (release, image)
        assert t["image"] == f"freebsd-{image}"
        assert fam.resolve(image).config.cmd == (tuple(conf["cmd"]) if conf["cmd"] else None), (release, image)
    static = want["static"]
    fl = fam.resolve("static")
    assert list(fl.skeleton.specs) == static["mtree"] and fl.static
    extracted = {p for ex in fl.extract for p in ex.paths} | {to for ex in fl.extract for _, to in ex.copies}
    for src, dests in static["copies"].items():
        assert set([dests] if isinstance(dests, str) else dests) <= extracted, src
    assert set(static["runs"]) <= set(fl.post_install)      # each named in the layer's history
    assert static["writes"] in {f.path for f in fl.files}
    assert "ports" in fl.trust and "base" in fl.trust


@pytest.mark.parametrize("release", BUILT_LINES)
def test_generated_lines_carry_their_names(release):
    """The generator's repository for a line has every package that line's definitions name, in
    that line's names, and none of the names that line does not have."""
    from builder.gen.packages import base_packages
    rel = load_project().release(release)
    names = {p.name for p in base_packages("amd64", "freebsd-images", "pkg+https://x/${ABI}/latest", rel.major)}
    line = LINES[release]
    wanted = {n for d in line_images(release).values() for n in d["packages"]}
    assert wanted <= names, (release, sorted(wanted - names))
    assert set(DEFS[line["names"]]["has"]) <= names, release
    assert not set(DEFS[line["names"]]["lacks"]) & names, release


def _fingerprint(path: Path) -> str:
    return re.search(r'fingerprint:\s*"([0-9a-f]{64})"', path.read_text()).group(1)


def test_release_keys_match_freebsd_fingerprints():
    for d, files in OCI["fingerprints"].items():
        trusted = ROOT / "keys" / d / "trusted"
        assert sorted(p.name for p in trusted.iterdir() if not p.name.startswith(".")) == sorted(files)
        for name, fp in files.items():
            assert _fingerprint(trusted / name) == fp, f"keys/{d}/trusted/{name}"
    project = load_project()
    for rel in project.releases.values():
        for repo in rel.repositories:
            assert repo.signature_type == "fingerprints" and (repo.fingerprints / "trusted").is_dir(), (rel.name, repo.key)
            assert repo.fingerprints.parent == ROOT / "keys"
        # as FreeBSD configures them: 15 signs base with pkgbase-15; 14 has no pkgbase-14 and uses pkg
        base = rel.repository("base")
        assert base.fingerprints.name == ("pkgbase-15" if rel.major == 15 else "pkg"), rel.name
        assert all(r.fingerprints.name == "pkg" for r in rel.repositories if r.key != "base")
        if rel.major == 15:
            assert {r.name: r.image_fingerprints for r in rel.repositories} == OCI["pkg-conf-15"]


def test_fifteen_repository_names_in_release_files(capsys):
    project = load_project()
    for rel in project.releases.values():
        names = {r.key: r.name for r in rel.repositories}
        if rel.major >= 15:
            assert names == {"base": "FreeBSD-base", "ports": "FreeBSD-ports", "kmods": "FreeBSD-ports-kmods"}
            assert "kmods_" in rel.repository("kmods").url
        else:
            assert names == {"base": "FreeBSD-base", "ports": "FreeBSD"}


# --- built from generated mirrors ----------------------------------------------------------

@pytest.fixture(scope="session")
def built(tmp_path_factory, worker_id):
    """Both families of 14.2 and 15.0, both arches, with release archives: built once for every
    xdist worker (under a lock in their shared temporary root), read-only afterwards."""
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    work = shared / "official-built"
    work.mkdir(exist_ok=True)
    with open(work / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (work / ".done").exists():
            _build_all(work)
            (work / ".done").touch()
    return work / "out"


def _build_all(work: Path) -> None:
    mirror = work / "mirror"
    for r in ("14.2", "15.0"):
        generate(load_release(ROOT / "releases" / f"{r}.yaml", ROOT), mirror, opts=GenOptions())
    out = work / "out"
    for family, release in BUILDS:
        assert main(["-q", "--project", str(ROOT), "build", "--family", family, "--release", release, "--all",
                     "--archives", "--out", str(out), "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"),
                     "--lock-dir", str(work / "locks"), "--cache-dir", str(work / "cache")]) == 0


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _refs(layout: Path) -> dict[str, dict]:
    # named refs only: referrers (SBOM, provenance) are unnamed entries
    return {m["annotations"][REF]: m for m in json.loads((layout / "index.json").read_text())["manifests"]
            if REF in (m.get("annotations") or {})}


def image_tree(layout: Path, manifest_digest: str) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """The image's filesystem as a consumer unpacks it: layers in order, whiteouts applied."""
    man = json.loads(_blob(layout, manifest_digest).read_bytes())
    tree: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    for layer in man["layers"]:
        with tarfile.open(_blob(layout, layer["digest"])) as t:
            for m in t.getmembers():
                path = "/" + m.name.lstrip("./").rstrip("/")
                base = path.rsplit("/", 1)[1]
                if base == ".wh..wh..opq":
                    d = path.rsplit("/", 1)[0]
                    tree = {p: v for p, v in tree.items() if not p.startswith(d + "/")}
                    continue
                if base.startswith(".wh."):
                    gone = path.rsplit("/", 1)[0] + "/" + base[4:]
                    tree = {p: v for p, v in tree.items() if p != gone and not p.startswith(gone + "/")}
                    continue
                data = t.extractfile(m).read() if m.isfile() and m.size < (1 << 20) else b""
                tree[path] = (m, data)
    return tree


def _read(tree, path: str, hops: int = 0) -> bytes | None:
    m, data = tree.get(path, (None, None))
    if m is None:
        return None
    if m.issym() and hops < 8:
        target = m.linkname if m.linkname.startswith("/") else path.rsplit("/", 1)[0] + "/" + m.linkname
        return _read(tree, "/" + "/".join(p for p in target.split("/") if p not in ("", ".")), hops + 1)
    if m.islnk():
        return _read(tree, "/" + m.linkname.lstrip("/"), hops + 1)
    return data if m.isfile() else None


def pkg_repositories(tree) -> dict[str, dict[str, str]]:
    """pkg's repository configuration, read the way pkg does: /etc/pkg/*.conf then
    /usr/local/etc/pkg/repos/*.conf, later settings of a repository overriding earlier ones."""
    repos: dict[str, dict[str, str]] = {}
    for d in ("/etc/pkg", "/usr/local/etc/pkg/repos"):
        for path in sorted(p for p in tree if p.rsplit("/", 1)[0] == d and p.endswith(".conf")):
            text = re.sub(r"#[^\n]*", "", (_read(tree, path) or b"").decode())
            # NAME: { ... } with braces inside quoted strings (${ABI}) left alone
            blocks = re.findall(r'([A-Za-z0-9_-]+)\s*:?\s*\{((?:[^{}"]|"[^"]*")*)\}', text)
            assert blocks or not text.strip(), f"{path}: cannot read {text!r}"
            for name, body in blocks:
                settings = dict((k, v1 or v2) for k, v1, v2 in
                                re.findall(r'([a-z_]+)\s*[:=]\s*(?:"([^"]*)"|([^\s,;"]+))', body))
                repos.setdefault(name, {"files": ""}).update(settings)
                repos[name]["files"] += path + " "
    return repos


def _images(out: Path):
    for release in ("14.2", "15.0"):
        layout = out / release
        for ref, desc in sorted(_refs(layout).items()):
            if desc["mediaType"] == MANIFEST_MT:
                yield release, layout, ref, desc["digest"]


def test_every_pkg_configuration_names_trust_the_image_has(built):
    published = {fp for files in OCI["fingerprints"].values() for fp in files.values()}
    checked = {}
    for release, layout, ref, digest in _images(built):
        tree = image_tree(layout, digest)
        repos = pkg_repositories(tree)
        for name, repo in repos.items():
            assert repo.get("signature_type") == "fingerprints", (ref, name, repo)
            fp = repo["fingerprints"]
            assert tree.get(fp, (None,))[0] is not None and tree[fp][0].isdir(), f"{ref}: {name} names {fp}, absent"
            keys = [p for p in tree if p.startswith(fp + "/trusted/") and _read(tree, p)]
            prints = {m.group(1) for p in keys
                      if (m := re.search(rb'fingerprint:\s*"([0-9a-f]{64})"', _read(tree, p)))}
            assert prints & {p.encode() for p in published}, f"{ref}: {name} ({repo['files']}) trusts {fp}: no key"
        checked[ref] = sorted(repos)
    # every image with pkg configured was looked at: the official images from static up, the
    # default family's from minimal up; FreeBSD 15's FreeBSD.conf declares ports, kmods and base
    assert checked["freebsd-static:15.0p1-amd64"] == ["FreeBSD-base"]
    assert checked["freebsd-runtime:15.0p1-arm64"] == ["FreeBSD-base", "FreeBSD-ports", "FreeBSD-ports-kmods"]
    assert checked["freebsd-minimal:14.2p1-amd64"] == ["FreeBSD", "FreeBSD-base"]
    assert checked["freebsd15.0-small:15.0-amd64"] == ["FreeBSD-base", "FreeBSD-ports", "FreeBSD-ports-kmods"]
    assert checked["freebsd14.2-static:14.2-amd64"] == []
    assert len([r for r in checked if r.startswith("freebsd-toolchain:")]) == 2


def test_official_family_builds_both_arches(built):
    refs = _refs(built / "15.0")
    for flavour in LINES["15.0"]["images"]:
        for tag in ("15.0p1", "15.0-RELEASE"):
            assert f"freebsd-{flavour}:{tag}" in refs
        for plat in ("amd64", "arm64"):
            assert refs[f"freebsd-{flavour}:15.0p1-{plat}"]["mediaType"] == MANIFEST_MT
    assert "freebsd-minimal:14.2-RELEASE" in _refs(built / "14.2")
    # every step named in the history, the static image's pwd_mkdb and certctl too
    static_man = json.loads(_blob(built / "15.0", refs["freebsd-static:15.0p1-amd64"]["digest"]).read_bytes())
    history = json.loads(_blob(built / "15.0", static_man["config"]["digest"]).read_bytes())["history"]
    assert {"pwd_mkdb", "certctl"} <= set(re.split(r"[\s,+:]+", history[-1]["created_by"])), history
    man = json.loads(_blob(built / "15.0", refs["freebsd-toolchain:15.0p1-amd64"]["digest"]).read_bytes())
    cfg = json.loads(_blob(built / "15.0", man["config"]["digest"]).read_bytes())
    assert cfg["config"]["Cmd"] == ["/bin/sh"]            # OCI's "Cmd", not make-oci-image.sh's "cmd"
    assert len(man["layers"]) == 5
    tree = image_tree(built / "15.0", refs["freebsd-toolchain:15.0p1-amd64"]["digest"])
    db = tree["/var/db/pkg/local.sqlite"][1]
    names = _pkgdb(db, "SELECT name FROM packages")
    # FreeBSD-set-devel resolved like any package, its -dev members included
    assert {"FreeBSD-set-devel", "FreeBSD-set-minimal", "FreeBSD-set-minimal-jail", "FreeBSD-clang", "FreeBSD-lld",
            "FreeBSD-clibs-dev", "FreeBSD-kerberos-lib", "FreeBSD-bmake", "FreeBSD-xz", "FreeBSD-ssh",
            "FreeBSD-zfs"} <= {n for (n,) in names}
    # FreeBSD 15's names: the Kerberos packages kept 14's (tests/fixtures/freebsd-oci, names-15)
    assert not {"FreeBSD-krb5-lib", "FreeBSD-krb5"} & {n for (n,) in names}
    static = image_tree(built / "15.0", refs["freebsd-static:15.0p1-amd64"]["digest"])
    # the official static's extras: BSD.debug.dist under /usr/lib, termcap twice, CA links, keys, base.conf
    assert static["/usr/lib/debug/bin"][0].isdir()
    assert _read(static, "/usr/share/misc/termcap") == _read(static, "/etc/termcap.small") != b""
    assert any(p.startswith("/etc/ssl/certs/") for p in static)
    assert static["/usr/share/keys/pkg/trusted/pkg.freebsd.org.2013102301"][0].isfile()
    assert b"/usr/share/keys/pkgbase-15" in _read(static, "/usr/local/etc/pkg/repos/base.conf")


def _pkgdb(data: bytes, sql: str) -> list:
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".sqlite") as fh:
        fh.write(data)
        fh.flush()
        con = sqlite3.connect(fh.name)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


def test_fifteen_repository_names_in_pkgdb(built):
    refs = _refs(built / "15.0")
    tree = image_tree(built / "15.0", refs["freebsd15.0-minimal:15.0-amd64"]["digest"])
    rows = _pkgdb(tree["/var/db/pkg/local.sqlite"][1], """
        SELECT p.name, v.annotation FROM packages p JOIN pkg_annotation pa ON pa.package_id = p.id
        JOIN annotation t ON t.annotation_id = pa.tag_id JOIN annotation v ON v.annotation_id = pa.value_id
        WHERE t.annotation = 'repository'""")
    repo = dict(rows)
    assert repo["pkg"] == "FreeBSD-ports"
    assert {v for n, v in repo.items() if n.startswith("FreeBSD-")} == {"FreeBSD-base"}
    tree14 = image_tree(built / "14.2", _refs(built / "14.2")["freebsd14.2-minimal:14.2-amd64"]["digest"])
    assert dict(_pkgdb(tree14["/var/db/pkg/local.sqlite"][1], """
        SELECT p.name, v.annotation FROM packages p JOIN pkg_annotation pa ON pa.package_id = p.id
        JOIN annotation t ON t.annotation_id = pa.tag_id JOIN annotation v ON v.annotation_id = pa.value_id
        WHERE t.annotation = 'repository'"""))["pkg"] == "FreeBSD"


def _archive_refs(path: Path) -> list[str]:
    with tarfile.open(path) as t:
        index = json.loads(t.extractfile("index.json").read())
    return [m["annotations"][REF] for m in index["manifests"]]


def test_archive_refs_are_unique_across_arches_and_flavours(built):
    seen: dict[str, str] = {}
    archives = sorted(built.glob("*/release*/*.txz"))
    assert len(archives) == 2 * (5 + 4 + 3 + 4)
    for arc in archives:
        for ref in _archive_refs(arc):
            assert ref not in seen, f"{arc.name} and {seen[ref]} both carry {ref}"
            seen[ref] = arc.name
        if arc.parent.name == "release-official":
            (ref,) = _archive_refs(arc)
            m = re.fullmatch(r"FreeBSD-(\d+\.\d+)-RELEASE-(amd64|arm64-aarch64)-container-image-(\w+)\.txz", arc.name)
            arch = "amd64" if m.group(2) == "amd64" else "aarch64"
            # make-oci-image.sh: freebsd-${image}:${rev}-${branch}-${arch}
            assert ref == f"freebsd-{m.group(3)}:{m.group(1)}-RELEASE-{arch}"
    assert len(seen) == len(archives)


def test_base_name_is_fully_qualified_and_revision_outside_images(built):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    for release, layout, ref, digest in _images(built):
        man = json.loads(_blob(layout, digest).read_bytes())
        ann = man["annotations"]
        assert "org.opencontainers.image.revision" not in ann
        if "org.opencontainers.image.base.name" not in ann:
            continue
        full = ann["org.opencontainers.image.base.name"]
        assert full.startswith("ghcr.io/freebsd/"), full
        parent = _refs(layout)[full[len("ghcr.io/freebsd/"):]]      # NAME:TAG names the parent's index
        index = json.loads(_blob(layout, parent["digest"]).read_bytes())
        assert ann["org.opencontainers.image.base.digest"] in {m["digest"] for m in index["manifests"]}
        if head.returncode == 0:   # the checkout's commit rides on the layout's refs, outside every digest
            assert _refs(layout)[ref]["annotations"]["org.opencontainers.image.revision"] == head.stdout.strip()


def test_configured_revision_is_in_the_images(project_copy, demo_mirror, tmp_path):
    path = project_copy / "releases" / "14.2.yaml"
    path.write_text(path.read_text().replace('  # revision: "..."', '  revision: "v1.2.3"'))
    out = tmp_path / "out"
    assert main(["-q", "--project", str(project_copy), "build", "--release", "14.2", "--flavour", "base",
                 "--arch", "amd64", "--out", str(out), "--mirror", f"file://{demo_mirror}", "--keys",
                 str(demo_mirror / "keys"), "--lock-dir", str(tmp_path / "locks"), "--archives"]) == 0
    refs = _refs(out / "14.2")
    for name in ("freebsd14.2-base:14.2-amd64", "freebsd14.2-base:14.2"):
        doc = json.loads(_blob(out / "14.2", refs[name]["digest"]).read_bytes())
        assert doc["annotations"]["org.opencontainers.image.revision"] == "v1.2.3"
        assert "org.opencontainers.image.revision" not in refs[name].get("annotations", {})


def test_generated_fifteen_repository_and_toolchain_scale(tmp_path):
    """15 names and sets; FreeBSD-set-devel's payload is ~10 MB at scale 1 and grows linearly,
    so --scale 100 makes a toolchain of about 1 GB (the benchmark's)."""
    from builder.gen.packages import base_packages
    from builder.gen.repo import _bulk
    pk = {p.name: p for p in base_packages("amd64", "freebsd-images", "pkg+https://x/${ABI}/latest", 15)}
    assert "FreeBSD-kerberos-lib" in pk and "FreeBSD-krb5-lib" not in pk
    # both notoolchain lists FreeBSD had resolve here; the runtime and jail sets are vital
    notool = set(line_images("15.0")["notoolchain"]["packages"])
    assert notool | set(DEFS["notoolchain-list"]["packages"]) <= set(pk)
    assert pk["FreeBSD-set-minimal-jail"].vital and "FreeBSD-kerberos-lib" in pk["FreeBSD-set-minimal-jail"].deps
    devel = pk["FreeBSD-set-devel"]
    assert "FreeBSD-set-minimal" in devel.deps and "FreeBSD-clibs-dev" in devel.deps and not devel.files

    def closure(names):
        out, todo = set(), list(names)
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo += pk[n].deps
        return out
    adds = closure(["FreeBSD-set-devel"]) - closure(notool)

    def size(scale):
        return sum(len(g.data) for n in adds for g in pk[n].files + _bulk(pk[n], "amd64", scale, "freebsd-images")
                   if g.kind == "file")
    one, two = size(1), size(2)
    assert 8e6 < one < 14e6
    assert 0.9e9 < one + 99 * (two - one) < 1.3e9


def test_trust_roots_come_from_inside_the_project(tmp_path):
    """A release file naming a fingerprints directory outside the project gets nothing copied from it."""
    from dataclasses import replace
    from builder.errors import BuildError
    from builder.install.fsmodel import FileSystem
    from builder.layers.build import _trust
    rel = load_project().release("15.0")
    base = rel.repository("base")
    hostile = replace(rel, repositories=tuple(replace(r, fingerprints=Path("/etc")) if r.key == "base" else r
                                              for r in rel.repositories))
    with pytest.raises(BuildError, match="outside the project"):
        _trust(FileSystem(), hostile, ("base",), 0, "flavour static")
    fs = FileSystem()
    _trust(fs, rel, ("base", "ports"), 0, "flavour static")
    assert sorted(p for p in fs.nodes if "/trusted/" in p) == sorted([
        f"{base.image_fingerprints}/trusted/awskms-15", f"{base.image_fingerprints}/trusted/backup-signing-15",
        "/usr/share/keys/pkg/trusted/pkg.freebsd.org.2013102301"])


def test_build_refuses_pkg_configuration_without_its_trust_roots():
    """The build's own check (builder/install/pkgconf.py): overrides merge in pkg's order, and a
    fingerprints directory without a fingerprint file in trusted/ is refused."""
    import hashlib
    from builder.install import pkgconf
    from builder.install.fsmodel import FileSystem, Node

    def put(fs, path, data):
        fs.add(Node(path, "file", 0o644, "root", "wheel", 0, len(data), hashlib.sha256(data).hexdigest(),
                    source="generated:test", data=data), "test")
    fs = FileSystem()
    put(fs, "/etc/pkg/FreeBSD.conf", b'FreeBSD-ports: {\n  url: "pkg+https://pkg.FreeBSD.org/${ABI}/quarterly",\n'
                                     b'  signature_type: "fingerprints", fingerprints: "/usr/share/keys/pkg", enabled: yes\n}\n'
                                     b'FreeBSD-base: { url: "pkg+https://x/${ABI}/base_release_0", signature_type: "none" }\n')
    put(fs, "/usr/local/etc/pkg/repos/base.conf", b'# enable it\nFreeBSD-base: {\n  signature_type = "fingerprints";\n'
                                                  b'  fingerprints = "/usr/share/keys/pkgbase-15"; enabled = yes;\n}\n')
    read = lambda paths: {p: fs.nodes[p].data for p in paths}
    assert {n: r["fingerprints"] for n, r in pkgconf.repositories(fs, read).items()
            if r.get("signature_type", "").lower() == "fingerprints"} == {"FreeBSD-ports": "/usr/share/keys/pkg",
                                              "FreeBSD-base": "/usr/share/keys/pkgbase-15"}
    found = pkgconf.problems(fs, read)
    assert len(found) == 2 and all("pkg would refuse" in p for p in found)
    put(fs, "/usr/share/keys/pkg/trusted/pkg.freebsd.org.2013102301",
        (ROOT / "keys/pkg/trusted/pkg.freebsd.org.2013102301").read_bytes())
    put(fs, "/usr/share/keys/pkgbase-15/trusted/README", b"not a fingerprint\n")
    (left,) = pkgconf.problems(fs, read)
    assert "FreeBSD-base" in left and "holds no fingerprint file" in left
    put(fs, "/usr/share/keys/pkgbase-15/trusted/awskms-15", (ROOT / "keys/pkgbase-15/trusted/awskms-15").read_bytes())
    assert pkgconf.problems(fs, read) == []


def test_makefile_selects_the_family(tmp_path):
    """make freebsd15.0-runtime FAMILY=official builds that release's flavour of the official family."""
    r = subprocess.run(["make", "-n", "-C", str(ROOT), "freebsd15.0-runtime", "FAMILY=official", "MIRROR=release",
                        f"VENV={tmp_path / 'venv'}", "ARCH=arm64"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmd = " ".join(r.stdout.replace("\\\n", " ").split())
    assert "-m builder build --release 15.0 --flavour runtime --family official --arch arm64" in cmd, cmd
    r = subprocess.run(["make", "-n", "-C", str(ROOT), "plan", "FAMILY=official", f"VENV={tmp_path / 'venv'}"],
                       capture_output=True, text=True)
    assert "-m builder plan --family official" in r.stdout


def test_plan_shows_each_line_s_runtime_image_as_freebsd_publishes_it(capsys):
    from builder.cli import main
    assert main(["plan", "--family", "official", "--release", "14.3", "--json"]) == 0
    got = {t["image"]: t for t in json.loads(capsys.readouterr().out)["targets"]}
    assert got["freebsd-runtime"]["cmd"] == ["/bin/sh"] and "freebsd-minimal" not in got
    assert main(["plan", "--family", "official", "--release", "14.2", "--json"]) == 0
    got = {t["image"]: t for t in json.loads(capsys.readouterr().out)["targets"]}
    assert "freebsd-minimal" in got and got["freebsd-minimal"]["cmd"] == [] and "freebsd-runtime" not in got
