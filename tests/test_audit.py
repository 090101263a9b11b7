"""audit: installed packages, freshness against the release's catalogues, and FreeBSD's VuXML matched as
pkg audit matches it; on the demo family at two patch levels, from a layout, a release archive and a registry;
and vuln.xml as hostile input."""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from builder.cli import main
from builder.common.http import Transport
from builder.config.release import load_release
from builder.errors import BuildError
from builder.gen.repo import GenOptions, generate
from builder.prove.audit import _epoch, audit_layout, audit_packages, release_of
from builder.resolve.catalogue import Catalogue, Meta, RemotePackage
from builder.resolve.lock import fetch_catalogues
from builder.resolve.vuxml import (Bound, Range, VuXML, _glob, base_version, load, parse, pkgbase_version)
from tests import bounded
from tests.conftest import FIXTURES, ROOT, demo_project
from tests.test_version import EQUAL, LESS

VULN_XML = FIXTURES / "vuxml" / "vuln.xml"
RELEASE = "14.2"
IMAGE = f"freebsd{RELEASE}-minimal"
USERLAND = "11a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a71"     # the fixture's base-system SA, fixed in 14.2_2
KERNEL = "22a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a72"       # its kernel SA
PKG = "33a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a73"          # its ports entry for pkg, fixed in 2.0.7
OTHER_NAMES = "44a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a74"
BUMPED = 1731456000 + 60 * 86400                         # the second mirror's catalogues: 60 days later


@pytest.fixture(scope="module")
def fixture_db() -> VuXML:
    return load(str(VULN_XML), Transport())


def vids(matches) -> list[str]:
    return [m.vuln.vid for m in matches]


def doc(body: str) -> bytes:
    return f'<?xml version="1.0"?>\n<vuxml xmlns="http://www.vuxml.org/apps/vuxml-1">{body}</vuxml>'.encode()


def entry(names: str, ranges: str, vid: str = "v1") -> str:
    return (f'<vuln vid="{vid}"><topic>t</topic><affects><package>{names}{ranges}</package></affects>'
            "<references><cvename>CVE-1</cvename></references></vuln>")


# --- matching, as pkg audit matches ---------------------------------------------------------

def test_the_fixture_matches_exactly_the_entries_whose_ranges_hold(fixture_db):
    assert len(fixture_db.vulns) == 9
    # 14.2p1 with pkg 2.0.6: the userland SA, the pkg entry; the kernel SA only for FreeBSD-kernel
    assert vids(fixture_db.matches("FreeBSD", "14.2_1")) == [USERLAND]
    assert vids(fixture_db.matches("FreeBSD-kernel", "14.2_1")) == [KERNEL]
    assert vids(fixture_db.matches("pkg", "2.0.6")) == [PKG]
    for name, version in [("FreeBSD-runtime", "14.2p1"), ("FreeBSD-clibs", "14.2p1"), ("FreeBSD", "14.2_3"),
                          ("pkg", "2.0.7"), ("FreeBSD-kernel", "14.2_3")]:
        assert fixture_db.matches(name, version) == (), (name, version)
    # the same entries do match where their ranges say: the entries left out are left out for their reason
    assert vids(fixture_db.matches("pkg-devel", "2.0.6")) == [PKG]          # the second <name>
    assert vids(fixture_db.matches("pkgconf", "1.0")) == [OTHER_NAMES]
    assert vids(fixture_db.matches("pkgX", "1.0")) == [OTHER_NAMES]         # the glob pkg? needs a fourth character
    assert vids(fixture_db.matches("FreeBSD", "14.3_1"))[0].startswith("66")
    assert vids(fixture_db.matches("FreeBSD", "14.1_7")) == [USERLAND, "55a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a75"]
    assert vids(fixture_db.matches("pkg", "1.0,1")) == ["88a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a78"]   # an epoch


def test_the_base_system_is_audited_as_release_underscore_patch(fixture_db):
    assert base_version("14.2p1") == "14.2_1"
    assert base_version("14.2") == "14.2" and base_version("14.2p0") == "14.2"
    assert base_version("15.snap20261120") is None and base_version("14.2-STABLE") is None
    assert pkgbase_version("14.2_2") == "14.2p2" and pkgbase_version("2.0.7") == "2.0.7"
    # spelled as pkgbase spells it, 14.2p1 is above 14.2_2 to pkg: the SA would be missed (and the entry
    # written with pkgbase's spelling would be hit)
    assert vids(fixture_db.matches("FreeBSD", "14.2p1")) == ["77a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a77"]


@pytest.mark.parametrize("a,b", LESS)
def test_ranges_order_versions_as_pkg_does(a, b):
    """Every edge case of pkg's version order that tests/test_version.py checks, through range bounds."""
    assert Bound("lt", b).holds(a) and Bound("le", b).holds(a) and not Bound("ge", b).holds(a)
    assert Bound("gt", a).holds(b) and not Bound("eq", a).holds(b)
    assert Range((Bound("ge", a), Bound("lt", b))).contains(a)
    assert not Range((Bound("gt", a), Bound("lt", b))).contains(a)


@pytest.mark.parametrize("a,b", EQUAL)
def test_equal_versions_are_inside_inclusive_bounds_only(a, b):
    assert Bound("eq", b).holds(a) and Bound("le", b).holds(a) and Bound("ge", b).holds(a)
    assert not Bound("lt", b).holds(a) and not Bound("gt", b).holds(a)


def test_names_are_fnmatch_patterns():
    for pattern, yes, no in [("pkg", ["pkg"], ["pkg-devel", "Pkg", "xpkg"]),
                             ("py3*-django", ["py311-django"], ["py3-djangox"]),
                             ("pkg?", ["pkgX"], ["pkg", "pkgXY"]), ("php[78]?", ["php81"], ["php91"]),
                             ("lib[!a]z", ["libbz"], ["libaz"]), ("a\\*b", ["a*b"], ["axb"]), ("a[b", ["a[b"], ["ab"])]:
        rx = _glob(pattern)
        assert all(rx.fullmatch(n) for n in yes) and not any(rx.fullmatch(n) for n in no), pattern


def test_what_pkg_does_not_read_covers_nothing():
    db = parse(io.BytesIO(doc(
        '<vuln vid="a"><topic>t</topic><affects><system><name>x</name><range><ge>0</ge></range></system>'
        '<package><name>y</name></package></affects>'
        '<description><body xmlns="http://www.w3.org/1999/xhtml"><p><name>z</name></p></body></description></vuln>')),
        "t.xml")
    assert db.matches("x", "1") == () and db.matches("y", "1") == () and db.matches("z", "1") == ()
    # one match per entry, even when two of its packages cover the version
    two = parse(io.BytesIO(doc(entry("<name>x</name>", "<range><lt>2</lt></range></package><package><name>x</name>"
                                      "<range><lt>3</lt></range>"))), "t.xml")
    assert [m.range.fixed for m in two.matches("x", "1")] == ["2"]


@pytest.mark.parametrize("body,why", [
    (entry("<name>x</name>", "<range><ge>1</ge><lt>2</lt><lt>3</lt></range>"), "3 bounds"),
    (entry("<name>x</name>", "<range></range>"), "0 bounds"),
    (entry("<name></name>", "<range><lt>1</lt></range>"), "an empty <name>"),
    ('<vuln><topic>t</topic></vuln>', "without a vid"),
    (entry("<name>" + "x" * 5000 + "</name>", ""), "over 4096 characters"),
    ("<a>" * 70 + "</a>" * 70, "nested over 64 deep"),
])
def test_a_malformed_entry_is_refused_naming_the_line(body, why):
    with pytest.raises(BuildError, match=f"t.xml:\\d+: .*{why}.*refusing"):
        parse(io.BytesIO(doc(body)), "t.xml")


@pytest.mark.parametrize("data,why", [
    (b"<vuxml><vuln vid='a'></vuxml>", "not well-formed"),
    (b"<rss/>", "not <vuxml>"),
    (b"", "not well-formed"),
    (b'<!DOCTYPE v [<!ENTITY e SYSTEM "file:///etc/passwd">]><vuxml>&e;</vuxml>', "entities"),
    (b'<!DOCTYPE v [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p.dtd"> %p;]><vuxml/>', "entities"),
    (b"\xfd7zXZ\x00broken", "cannot decompress"),
])
def test_what_is_not_a_vuxml_document_is_refused(data, why):
    with pytest.raises(BuildError, match=why):
        parse(io.BytesIO(data), "t.xml")


def test_the_dtd_vuln_xml_names_is_never_read():
    body = doc(entry("<name>x</name>", "<range><lt>2</lt></range>")).split(b"\n", 1)[1]
    db = parse(io.BytesIO(b'<?xml version="1.0"?>\n<!DOCTYPE vuxml PUBLIC "-//vuxml.org//DTD VuXML 1.1//EN" '
                          b'"http://127.0.0.1:1/vuxml-11.dtd">\n' + body), "t.xml")
    assert vids(db.matches("x", "1")) == ["v1"]


def test_compressed_databases_are_read(tmp_path):
    data = VULN_XML.read_bytes()
    (tmp_path / "vuln.xml.gz").write_bytes(gzip.compress(data))
    import lzma
    (tmp_path / "vuln.xml.xz").write_bytes(lzma.compress(data))
    for name in ("vuln.xml.gz", "vuln.xml.xz"):
        assert len(load(str(tmp_path / name), Transport()).vulns) == 9
        assert len(load((tmp_path / name).as_uri(), Transport()).vulns) == 9


# --- hostile vuln.xml, in a child under RLIMIT_AS --------------------------------------------

def _run(spec: str) -> dict:
    return bounded.run("tests.bounded:vuxml_load", spec, mem=512 << 20, timeout=120)


def test_a_billion_laughs_is_refused_at_its_first_entity(tmp_path):
    lol = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)]
    (tmp_path / "lol.xml").write_text(f'<?xml version="1.0"?><!DOCTYPE vuxml [{"".join(lol)}]><vuxml>&lol9;</vuxml>')
    got = _run(str(tmp_path / "lol.xml"))
    assert "error" in got and "EntitiesForbidden" in got["error"] and "refusing" in got["error"], got


def test_a_2_gib_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.xml"
    with open(path, "wb") as fh:        # sparse: 2 GiB named, nothing written past the head
        fh.write(b'<?xml version="1.0"?><vuxml>')
        fh.truncate(2 << 30)
    got = _run(str(path))
    assert "error" in got and "over the limit" in got["error"], got
    # the same file as a URL: read as a stream, refused at the limit
    got = _run(path.as_uri())
    assert "error" in got and "limit" in got["error"], got


def test_a_2_gib_stream_out_of_a_small_gzip_is_refused(tmp_path):
    spaces = gzip.compress(b" " * (64 << 20), 9)
    with open(tmp_path / "bomb.xml.gz", "wb") as fh:   # gzip members, one after the other: 2 GiB of XML
        fh.write(gzip.compress(b'<?xml version="1.0"?><vuxml>'))
        for _ in range(32):
            fh.write(spaces)
        fh.write(gzip.compress(b"</vuxml>"))
    assert (tmp_path / "bomb.xml.gz").stat().st_size < 8 << 20
    got = _run(str(tmp_path / "bomb.xml.gz"))
    assert "error" in got and "decompresses to more than" in got["error"], got


# --- the audit of what was read (pure) -------------------------------------------------------

def _catalogue(repository: str, versions: dict[str, str], built: int) -> Catalogue:
    pkgs = {n: RemotePackage(n, f"base/{n}", v, "FreeBSD:14:amd64", "", f"{n}.pkg", "0" * 64, 1, 1, (), (), (), (), {},
                             repository) for n, v in versions.items()}
    return Catalogue(repository, "file:///x", Meta(2, "tzst", "data", "packagesite.yaml", "packagesite", {}), "data",
                     "0" * 64, pkgs, built)


def test_audit_packages_says_what_is_behind_and_what_is_covered(fixture_db):
    installed = {("FreeBSD-runtime", "14.2p1"), ("FreeBSD-clibs", "14.2p1"), ("pkg", "2.0.6"), ("local-tool", "1.0")}
    cats = [_catalogue("base", {"FreeBSD-runtime": "14.2p3", "FreeBSD-clibs": "14.2p1"}, 100),
            _catalogue("ports", {"pkg": "2.0.6"}, 200)]
    rows, kernel, notes = audit_packages(installed, cats, fixture_db)
    by = {r.name: r for r in rows}
    assert [r.name for r in rows][0] == "FreeBSD" and by["FreeBSD"].audited_as == "FreeBSD-14.2_1"
    assert by["FreeBSD"].stale and by["FreeBSD"].newest == "14.2p3" and by["FreeBSD"].newest_since == 100
    assert [(a.vid, a.fixed, a.references[0]) for a in by["FreeBSD"].advisories] == [
        (USERLAND, "14.2p2", "FreeBSD-SA-25:05.openssh")]
    assert by["FreeBSD-runtime"].stale and not by["FreeBSD-clibs"].stale and not by["pkg"].stale
    assert [a.fixed for a in by["pkg"].advisories] == ["2.0.7"]
    assert by["local-tool"].newest is None and not by["local-tool"].stale
    assert [a.vid for a in kernel] == [KERNEL] and "no kernel of its own" in notes[0]


def test_without_a_userland_the_base_system_is_not_audited_as_one(fixture_db):
    rows, kernel, notes = audit_packages({("FreeBSD-caroot", "14.2p1")}, [], fixture_db)
    assert [r.name for r in rows] == ["FreeBSD-caroot"] and kernel == () and "no FreeBSD-runtime" in notes[0]
    rows, _, notes = audit_packages({("FreeBSD-runtime", "15.snap20261120")}, [], fixture_db)
    assert [r.name for r in rows] == ["FreeBSD-runtime"] and "not a release's patch level" in notes[0]


def test_the_release_is_the_base_systems_version():
    assert release_of({("FreeBSD-runtime", "14.2p1"), ("pkg", "2.0.6")}) == "14.2"
    assert release_of({("FreeBSD-runtime", "15.snap20261120")}) == "15"
    assert release_of({("FreeBSD-caroot", "14.3p2"), ("FreeBSD-zoneinfo", "14.3p2")}) == "14.3"
    assert release_of({("pkg", "2.0.6")}) is None
    assert _epoch("2024-11-13T00:00:00Z") == 1731456000 and _epoch("2024-11-13T01:00:00.123456789+01:00") == 1731456000
    assert _epoch(None) is None and _epoch("yesterday") is None


# --- the demo family at two patch levels -----------------------------------------------------

def _build(project: Path, mirror: Path, out: Path, locks: Path) -> Path:
    assert main(["--project", str(project), "build", IMAGE, "--release", RELEASE, "--out", str(out),
                 "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"), "--lock-dir", str(locks),
                 "--archives"]) == 0
    return out / RELEASE


@pytest.fixture(scope="module")
def family(demo_mirror, tmp_path_factory):
    """The demo family's minimal image built at 14.2p1 (pkg 2.0.6), and again from a mirror bumped to 14.2p3
    (pkg 2.0.7) whose catalogues were built 60 days later."""
    tmp = tmp_path_factory.mktemp("audit")
    project = demo_project(tmp)
    bumped = tmp / "mirror-p3"
    generate(load_release(ROOT / "releases" / "14.2.yaml", ROOT), bumped,
             opts=GenOptions(version="14.2p3", bumps=(("pkg", "2.0.7"),), epoch=BUMPED))
    old = _build(project, demo_mirror, tmp / "out-p1", tmp / "locks-p1")
    new = _build(project, bumped, tmp / "out-p3", tmp / "locks-p3")
    return {"project": project, "old": old, "new": new, "mirror": demo_mirror, "bumped": bumped}


def audit(family, ref: str, mirror: Path, *extra: str, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["--project", str(family["project"]), "audit", ref, "--vuxml", str(VULN_XML),
                 "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"), "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def findings(image: dict) -> set[tuple[str, str, str]]:
    return {(p["name"], a["vid"], a["fixed"]) for p in image["packages"] for a in p["advisories"]}


def test_an_index_is_audited_platform_by_platform_and_exits_1_on_advisories(family, capsys):
    code, doc_ = audit(family, f"{family['old']}:{IMAGE}:{RELEASE}", family["mirror"], capsys=capsys)
    assert code == 1 and doc_["findings"]
    assert [i["platform"] for i in doc_["images"]] == ["freebsd/amd64", "freebsd/arm64/v8"]
    for image in doc_["images"]:
        assert findings(image) == {("FreeBSD", USERLAND, "14.2p2"), ("pkg", PKG, "2.0.7")}
        assert [a["vid"] for a in image["kernel_advisories"]] == [KERNEL]
        assert image["stale"] == 0 and image["release"] == RELEASE and image["created"] == "2024-11-13T00:00:00Z"
        base = image["packages"][0]
        assert (base["name"], base["installed"], base["audited_as"]) == ("FreeBSD", "14.2p1", "FreeBSD-14.2_1")
        names = {p["name"] for p in image["packages"]}
        assert {"FreeBSD-runtime", "FreeBSD-clibs", "pkg"} <= names
        assert any("SBOM lists the same" in n for n in image["notes"])
    # stale packages alone do not fail it when only advisories are asked about, and the other way round
    assert audit(family, f"{family['old']}:{IMAGE}:{RELEASE}-amd64", family["mirror"], "--fail-on", "stale",
                 capsys=capsys)[0] == 0


def test_after_a_bump_past_the_fixed_versions_it_exits_0(family, capsys):
    code, doc_ = audit(family, f"{family['new']}:{IMAGE}:{RELEASE}", family["bumped"], capsys=capsys)
    assert code == 0 and not doc_["findings"]
    for image in doc_["images"]:
        assert findings(image) == set() and image["kernel_advisories"] == [] and image["stale"] == 0
        assert image["packages"][0]["installed"] == "14.2p3"


def test_an_old_image_against_newer_repositories_is_stale(family, capsys):
    code, doc_ = audit(family, f"{family['old']}:{IMAGE}:{RELEASE}-amd64", family["bumped"], capsys=capsys)
    assert code == 1
    (image,) = doc_["images"]
    base = image["packages"][0]
    assert base["stale"] and (base["installed"], base["newest"]) == ("14.2p1", "14.2p3")
    assert base["newest_since"] == "2025-01-12T00:00:00Z"
    assert image["stale"] == len(image["packages"])
    assert audit(family, f"{family['old']}:{IMAGE}:{RELEASE}-amd64", family["bumped"], "--fail-on", "stale",
                 capsys=capsys)[0] == 1


def test_the_table_names_package_versions_advisories_and_fixes(family, capsys):
    capsys.readouterr()
    code = main(["--project", str(family["project"]), "audit", f"{family['old']}:{IMAGE}:{RELEASE}-amd64",
                 "--vuxml", str(VULN_XML), "--mirror", f"file://{family['bumped']}",
                 "--keys", str(family["bumped"] / "keys")])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{family['old']}:{IMAGE}:{RELEASE}-amd64 [freebsd/amd64] sha256:")
    assert lines[1].split() == ["PACKAGE", "INSTALLED", "NEWEST", "ADVISORIES", "FIXED", "IN"]
    base = next(line for line in lines if line.startswith("FreeBSD (base system)"))
    assert "14.2p1" in base and "14.2p3 (out >= " in base and "FreeBSD-SA-25:05.openssh" in base
    assert base.rstrip().endswith("14.2p2")
    assert next(line for line in lines if line.startswith("pkg ")).rstrip().endswith("2.0.7")
    assert any(line.startswith("note: 1 advisory names FreeBSD-kernel-14.2_1") for line in lines)


def test_release_archives_are_audited_like_the_layout(family, capsys):
    archives = sorted((family["old"] / "release").glob("*-container-image-minimal.txz"))
    assert len(archives) == 2
    code, doc_ = audit(family, str(archives[0]), family["mirror"], capsys=capsys)
    assert code == 1 and len(doc_["images"]) == 1
    assert findings(doc_["images"][0]) == {("FreeBSD", USERLAND, "14.2p2"), ("pkg", PKG, "2.0.7")}
    static = next((family["old"] / "release").glob("*amd64-container-image-static.txz"))
    code, doc_ = audit(family, str(static), family["mirror"], capsys=capsys)
    assert code == 0 and doc_["images"][0]["release"] == RELEASE
    assert any("no FreeBSD-runtime" in n for n in doc_["images"][0]["notes"])


def test_audit_layout_is_what_nightly_calls(family, fixture_db):
    release = load_release(ROOT / "releases" / "14.2.yaml", ROOT).with_mirror(f"file://{family['mirror']}",
                                                                             family["mirror"] / "keys")
    cats = fetch_catalogues(Transport(), release, ["amd64", "aarch64"])
    audits = audit_layout(family["old"], f"{IMAGE}:{RELEASE}", fixture_db, release, cats, now=BUMPED)
    assert [a.arch for a in audits] == ["amd64", "aarch64"]
    assert all(a.failed() and not a.failed(("stale",)) and a.age_days() == 60 for a in audits)
    assert json.loads(json.dumps(audits[0].to_json()))["vulnerable"] == 2


def test_refusals_exit_2_naming_the_file(family, tmp_path, capsys):
    bad = tmp_path / "vuln.xml"
    bad.write_bytes(b"<vuxml><vuln vid='a'>")
    code = main(["--project", str(family["project"]), "audit", f"{family['old']}:{IMAGE}:{RELEASE}",
                 "--vuxml", str(bad)])
    assert code == 2 and f"{bad}:1: not well-formed XML" in capsys.readouterr().err
    code = main(["--project", str(family["project"]), "audit", f"{family['old']}:nothing:here",
                 "--vuxml", str(VULN_XML)])
    assert code == 2 and "no ref 'nothing:here'" in capsys.readouterr().err


@pytest.mark.tools
def test_a_registry_image_is_audited_the_same_as_the_layout(family, registry, capsys):
    assert main(["publish", str(family["old"]), "--to", f"{registry.host}/audit", "--insecure"]) == 0
    code, remote = audit(family, f"docker://{registry.host}/audit/{IMAGE}:{RELEASE}", family["mirror"],
                         "--insecure", capsys=capsys)
    _, local = audit(family, f"{family['old']}:{IMAGE}:{RELEASE}", family["mirror"], capsys=capsys)
    assert code == 1

    def same(doc_: dict) -> list[dict]:
        return [{k: v for k, v in i.items() if k not in ("ref", "age_days")} for i in doc_["images"]]
    assert same(remote) == same(local)
