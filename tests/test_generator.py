"""The offline repository generator writes what FreeBSD's pkg writes.

Its output is read with the same reader that reads the fixture made by pkg,
and compared with it key by key and entry by entry."""
import hashlib
import json
from pathlib import Path

import pytest

from builder.config.release import load_release
from builder.gen.repo import GenOptions, generate
from builder.install.pkgfile import PackageReader
from builder.resolve import catalogue, checksum, signature
from tests.conftest import PKGREPO, ROOT
from tests.buildutil import read_members

OPTIONAL_EXTRA = {"shlibs_required", "shlibs_provided"}


def load_catalogue(repo: Path, mode: str, keys: Path, member_kind: str = "data"):
    meta = catalogue.Meta.parse((repo / "meta.conf").read_text(), str(repo / "meta.conf"))
    member = meta.data if member_kind == "data" else meta.manifests
    arc = "data.pkg" if member_kind == "data" else "packagesite.pkg"
    members = read_members(repo / arc, arc, {member, member + ".sig", member + ".pub", "signature"})
    signature.verify(members, member, mode, str(repo), fingerprints=keys, pubkey=keys / "repo.pub")
    return catalogue.parse_catalogue(member, members[member], "base", str(repo), meta), list(members)


def key_order(objs):
    """The union of keys in first-seen order, and the keys every object has."""
    order, common = [], None
    for o in objs:
        for k in o:
            if k not in order:
                order.append(k)
        common = set(o) if common is None else common & set(o)
    return order, common


def assert_same_shape(ours, theirs, what):
    their_order, their_common = key_order(theirs)
    our_order, our_common = key_order(ours)
    assert their_common <= our_common, f"{what}: keys pkg always writes are missing: {their_common - our_common}"
    assert set(our_order) - set(their_order) <= OPTIONAL_EXTRA, f"{what}: unexpected keys {set(our_order) - set(their_order)}"
    shared = [k for k in our_order if k in their_order]
    assert shared == [k for k in their_order if k in shared], f"{what}: key order differs"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    generate(load_release(ROOT / "releases/14.2.yaml", ROOT), out, opts=GenOptions(seed="test"))
    return out


def test_same_seed_gives_identical_bytes(generated, tmp_path):
    again = tmp_path / "again"
    generate(load_release(ROOT / "releases/14.2.yaml", ROOT), again, opts=GenOptions(seed="test"))
    a = {p.relative_to(generated): hashlib.sha256(p.read_bytes()).hexdigest() for p in generated.rglob("*") if p.is_file()}
    b = {p.relative_to(again): hashlib.sha256(p.read_bytes()).hexdigest() for p in again.rglob("*") if p.is_file()}
    assert a == b and len(a) > 40


def test_other_seed_differs(generated, tmp_path):
    other = tmp_path / "other"
    generate(load_release(ROOT / "releases/14.2.yaml", ROOT), other, arches=["amd64"], opts=GenOptions(seed="other"))
    rel = Path("FreeBSD:14:amd64/base_release_2/FreeBSD-clibs-14.2p1.pkg")
    assert (other / rel).read_bytes() != (generated / rel).read_bytes()


@pytest.mark.parametrize("kind", ["data", "packagesite"])
def test_catalogue_matches_pkg_shape(generated, kind):
    ours, our_members = load_catalogue(generated / "FreeBSD:14:amd64/base_release_2", "fingerprints", generated / "keys", kind)
    theirs, their_members = load_catalogue(PKGREPO / "FreeBSD:14:amd64/base_release_2", "fingerprints", PKGREPO / "keys", kind)
    assert our_members == their_members  # signature entries first, then the catalogue, as pkg writes them
    assert set(ours.packages) == set(theirs.packages)
    assert ours.kind == theirs.kind
    assert_same_shape([p.raw for p in ours.packages.values()], [p.raw for p in theirs.packages.values()], "catalogue")
    for name, p in ours.packages.items():
        t = theirs.packages[name]
        assert (p.origin, p.version, p.abi, p.arch, p.repopath) == (t.origin, t.version, t.abi, t.arch, t.repopath)
        assert [d.name for d in p.deps] == [d.name for d in t.deps], name


def test_ports_catalogue_signed_as_the_release_says(generated, tmp_path):
    # 14.2.yaml declares the ports repository with fingerprints, like pkg.FreeBSD.org
    ours, members = load_catalogue(generated / "FreeBSD:14:amd64/quarterly", "fingerprints", generated / "keys")
    assert members == ["data.sig", "data.pub", "data"]
    theirs, their_members = load_catalogue(PKGREPO / "FreeBSD:14:amd64/latest", "pubkey", PKGREPO / "keys")
    assert their_members == ["signature", "data"]
    # a release declaring pubkey gets a key-file signature, as pkg's rsa: signer writes it
    import dataclasses
    rel = load_release(ROOT / "releases/14.2.yaml", ROOT)
    rel = dataclasses.replace(rel, repositories=tuple(dataclasses.replace(r, signature_type="pubkey") if r.key == "ports" else r
                                                       for r in rel.repositories))
    generate(rel, tmp_path / "pk", arches=["amd64"], opts=GenOptions(seed="test"))
    _, pk_members = load_catalogue(tmp_path / "pk/FreeBSD:14:amd64/quarterly", "pubkey", tmp_path / "pk/keys")
    assert pk_members == their_members
    assert_same_shape([p.raw for p in ours.packages.values()], [p.raw for p in theirs.packages.values()], "ports catalogue")
    assert ours.packages["pkg"].raw["prefix"] == "/usr/local"


def read_pkg(path):
    with open(path, "rb") as fh:
        r = PackageReader(fh, str(path))
        entries = [(e, s.read() if s else None) for e, s in r.entries()]
    return r, entries


def expected_order(manifest):
    return ["+COMPACT_MANIFEST", "+MANIFEST"] + list(manifest["files"]) + list(manifest.get("directories") or {})


@pytest.mark.parametrize("name", ["FreeBSD-runtime", "FreeBSD-caroot", "FreeBSD-zoneinfo", "FreeBSD-utilities",
                                  "FreeBSD-pkg-bootstrap", "FreeBSD-clibs"])
def test_package_matches_pkg_shape(generated, name):
    ours, our_entries = read_pkg(generated / f"FreeBSD:14:amd64/base_release_2/{name}-14.2p1.pkg")
    theirs, their_entries = read_pkg(PKGREPO / f"FreeBSD:14:amd64/base_release_2/{name}-14.2p1.pkg")
    # Archive entry order: manifests, then files in manifest order, then directories -- in both.
    assert [n.rstrip("/") for n in theirs.order] == expected_order(theirs.manifest)
    assert [n.rstrip("/") for n in ours.order] == expected_order(ours.manifest)
    assert_same_shape([ours.manifest], [theirs.manifest], f"{name} +MANIFEST")
    assert_same_shape([ours.compact], [theirs.compact], f"{name} +COMPACT_MANIFEST")
    assert {k: v for k, v in ours.manifest.items() if k not in ("files",) and k not in OPTIONAL_EXTRA} .keys() == \
        {k: v for k, v in theirs.manifest.items() if k != "files"}.keys()
    assert ours.manifest.get("scripts", {}).keys() == theirs.manifest.get("scripts", {}).keys()
    # Sums in the manifest are those of the payload (symlinks: of the target string).
    data = {e.path: d for e, d in our_entries if e.kind == "file"}
    for e, d in our_entries:
        if e.kind == "dir":
            continue
        content = e.target.encode() if e.kind == "symlink" else data[e.target] if e.kind == "hardlink" else d
        assert e.sum == checksum.typed_sum(content, checksum.SHA256_HEX), e.path
    # Owners are names, as pkg writes them.
    assert {(e.uname, e.gname) for e, _ in our_entries} == {("root", "wheel")}


def test_hardlinks_symlinks_setuid_and_config(generated):
    _, entries = read_pkg(generated / "FreeBSD:14:amd64/base_release_2/FreeBSD-runtime-14.2p1.pkg")
    by = {e.path: e for e, _ in entries}
    assert by["/bin/["].kind == "hardlink" and by["/bin/["].target == "/bin/test"
    assert by["/usr/bin/chfn"].kind == "symlink" and by["/usr/bin/chfn"].target == "chpass"
    assert by["/usr/bin/su"].mode == 0o4555
    assert by["/tmp"].kind == "dir" and by["/tmp"].mode == 0o1777
    assert by["/etc/master.passwd"].config and by["/etc/master.passwd"].mode == 0o600


@pytest.mark.parametrize("arch,machine", [("amd64", 62), ("aarch64", 183)])
def test_elf_headers_match_the_arch(generated, arch, machine):
    _, entries = read_pkg(generated / f"FreeBSD:14:{arch}/base_release_2/FreeBSD-clibs-14.2p1.pkg")
    elves = [d for e, d in entries if d and d[:4] == b"\x7fELF"]
    assert len(elves) >= 9
    for d in elves:
        assert d[4] == 2 and d[7] == 9  # ELFCLASS64, ELFOSABI_FREEBSD
        assert int.from_bytes(d[18:20], "little") == machine


def test_catalogue_sums_and_sizes_match_files(generated):
    repo = generated / "FreeBSD:14:aarch64/base_release_2"
    cat, _ = load_catalogue(repo, "fingerprints", generated / "keys")
    for p in cat.packages.values():
        raw = (repo / p.repopath).read_bytes()
        assert p.sha256 == hashlib.sha256(raw).hexdigest() and p.pkgsize == len(raw)
        assert p.abi == "FreeBSD:14:aarch64" and p.arch == "freebsd:14:aarch64:64"


def test_scale_grows_payload(tmp_path):
    rel = load_release(ROOT / "releases/14.2.yaml", ROOT)
    generate(rel, tmp_path / "s1", arches=["amd64"], opts=GenOptions(scale=1))
    generate(rel, tmp_path / "s3", arches=["amd64"], opts=GenOptions(scale=3))
    flat = lambda d: sum(json.loads(l)["flatsize"] for l in read_members(
        d / "FreeBSD:14:amd64/base_release_2/packagesite.pkg", "x", {"packagesite.yaml"})["packagesite.yaml"].splitlines())
    from builder.gen.packages import base_packages
    bulk = sum(p.bulk_kb for p in base_packages("amd64", "x", "")) * 1024
    assert flat(tmp_path / "s3") - flat(tmp_path / "s1") >= 2 * bulk * 0.99


def test_bump_changes_one_package(tmp_path):
    rel = load_release(ROOT / "releases/14.2.yaml", ROOT)
    generate(rel, tmp_path / "a", arches=["amd64"], opts=GenOptions(bumps=(("FreeBSD-clibs", "14.2p2"),)))
    cat, _ = load_catalogue(tmp_path / "a/FreeBSD:14:amd64/base_release_2", "fingerprints", tmp_path / "a/keys")
    assert cat.packages["FreeBSD-clibs"].version == "14.2p2"
    assert cat.packages["FreeBSD-runtime"].version == "14.2p1"
    assert {d.version for d in cat.packages["FreeBSD-runtime"].deps} == {"14.2p2"}
