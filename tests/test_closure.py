"""Every image can run what it ships: the shared-library closure check.

Rules on small synthetic images (search order, symlinks, $ORIGIN, hints,
interpreter, static flavours, accepted misses), then whole builds: the real
FreeBSD libraries of the fixture made by pkg, and the generated mirror.
"""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from builder.cli import main
from builder.config.project import load_project
from builder.errors import BuildError, ConfigError
from builder.gen.payload import RTLD, elf_image
from builder.install import closure, elf
from builder.config.family import AcceptMiss
from builder.install.fsmodel import FileSystem, Node
from builder.install.scan import scan_package
from tests.buildutil import build_one_arch, context, demo_project, reference_project
from tests.conftest import PKGREPO
from tests.test_config import pos
from tests.test_elf import need_readelf, ours, readelf

RELEASE = "14.2"


# --- synthetic images ---------------------------------------------------------------------------

def _file(path: str, data: bytes, owner: str = "pkg-a") -> Node:
    return Node(path, "file", 0o555, size=len(data), owner=owner, source=f"pkg:{owner}", elf=elf.parse(data),
                data=data)


def lib(path: str, needed=(), owner="pkg-a", **kw) -> Node:
    return _file(path, elf_image("amd64", True, bytes(700), needed=tuple(needed),
                                 soname=kw.pop("soname", path.rsplit("/", 1)[1]), **kw), owner)


def exe(path: str, needed=(), owner="pkg-a", interp=RTLD, **kw) -> Node:
    return _file(path, elf_image("amd64", False, bytes(700), needed=tuple(needed), interp=interp, **kw), owner)


def text(path: str, content: str, owner="pkg-a") -> Node:
    return _file(path, content.encode(), owner)


def link(path: str, target: str) -> Node:
    return Node(path, "symlink", 0o777, target=target, owner="pkg-a", source="pkg:pkg-a")


def image(*nodes: Node, runtime: bool = True) -> FileSystem:
    fs = FileSystem()
    base = [_file(RTLD, elf_image("amd64", True, bytes(700)), "FreeBSD-clibs"),
            lib("/lib/libc.so.7", owner="FreeBSD-clibs")] if runtime else []
    for n in base + list(nodes):
        fs.add(n, "test")
    return fs


def check(fs: FileSystem, **kw):
    return closure.check(fs, "test image", read=lambda paths: {p: fs.nodes[p].data for p in paths}, **kw)


def misses(fs: FileSystem, **kw) -> str:
    with pytest.raises(BuildError) as e:
        check(fs, **kw)
    return str(e.value)


def test_standard_directories_resolve_and_counts_add_up():
    fs = image(exe("/bin/sh", ["libc.so.7", "libedit.so.8"]), lib("/usr/lib/libedit.so.8", ["libc.so.7"]),
               lib("/lib/casper/libcap_dns.so.2", ["libc.so.7"]), exe("/sbin/x", ["libcap_dns.so.2"]),
               text("/etc/motd", "hello"))
    result, unused = check(fs)
    assert (result.elf_files, result.dynamic, result.libraries, result.needed) == (6, 6, 4, 5)
    assert result.accepted == [] and unused == []
    assert result.to_json()["unresolved"] == 0


def test_missing_library_is_named_with_elf_package_and_soname():
    err = misses(image(exe("/usr/bin/tool", ["libc.so.7", "libfoo.so.1"], owner="FreeBSD-tool")),
                 providers=lambda: {"libfoo.so.1": ["FreeBSD-foo"]})
    assert "/usr/bin/tool (FreeBSD-tool) needs library libfoo.so.1" in err
    assert "not in /lib/casper:/lib:/usr/lib" in err
    assert "provided by FreeBSD-foo (in the lock, not in this image)" in err
    assert "accept-missing-libraries" in err and "test image" in err


def test_symlinks_in_the_image_are_followed():
    # /usr/lib/libfoo.so.1 -> ../../opt/foo/lib/libfoo.so.1, and /opt/foo/lib -> /opt/foo/lib.real
    fs = image(exe("/usr/bin/tool", ["libfoo.so.1"]), link("/usr/lib/libfoo.so.1", "../../opt/foo/lib/libfoo.so.1"),
               link("/opt/foo/lib", "/opt/foo/lib.real"), lib("/opt/foo/lib.real/libfoo.so.1"))
    assert check(fs)[0].needed == 1
    assert closure.resolve(fs, "/usr/lib/libfoo.so.1") == "/opt/foo/lib.real/libfoo.so.1"
    # a dangling link is a miss; so is a loop, without hanging
    del fs.nodes["/opt/foo/lib.real/libfoo.so.1"]
    assert "needs library libfoo.so.1" in misses(fs)
    fs.add(link("/opt/foo/lib.real/libfoo.so.1", "/usr/lib/libfoo.so.1"), "test")
    assert "needs library libfoo.so.1" in misses(fs)


def test_interpreter_must_be_in_the_image_and_symlinks_count():
    fs = image(exe("/usr/bin/tool", ["libc.so.7"], interp="/libexec/ld-elf.so.9"))
    assert "needs interpreter /libexec/ld-elf.so.9" in misses(fs)
    fs.add(link("/libexec/ld-elf.so.9", "ld-elf.so.1"), "test")
    check(fs)


def test_origin_runpath_and_rpath_as_rtld_reads_them():
    app = [lib("/opt/app/lib/libapp.so.1", ["libc.so.7"])]
    check(image(exe("/opt/app/bin/tool", ["libapp.so.1"], runpath="$ORIGIN/../lib"), *app))
    check(image(exe("/opt/app/bin/tool", ["libapp.so.1"], rpath="${ORIGIN}/../lib"), *app))
    check(image(exe("/opt/app/bin/tool", ["libapp.so.1"], runpath="/nowhere:/opt/app/lib"), *app))
    # DT_RPATH is ignored when there is a DT_RUNPATH
    err = misses(image(exe("/opt/app/bin/tool", ["libapp.so.1"], rpath="/opt/app/lib", runpath="/nowhere"), *app))
    assert "not in /nowhere:/lib/casper:/lib:/usr/lib" in err
    # without a run path the library is not found
    assert "needs library libapp.so.1" in misses(image(exe("/opt/app/bin/tool", ["libapp.so.1"]), *app))
    # a NEEDED with a slash is a path, $ORIGIN substituted
    check(image(exe("/opt/app/bin/tool", ["$ORIGIN/../lib/libapp.so.1"]), *app))
    assert "no file /opt/app/bin/../lib/libgone.so.1" in misses(image(exe("/opt/app/bin/tool", ["$ORIGIN/../lib/libgone.so.1"])))


def test_ldconfig_configuration_shipped_in_the_image_is_searched():
    tool = [exe("/usr/local/bin/tool", ["libtool.so.3"]), lib("/usr/local/lib/tool/libtool.so.3")]
    assert "needs library libtool.so.3" in misses(image(*tool))
    check(image(*tool, text("/usr/local/libdata/ldconfig/tool", "# tool's libraries\n/usr/local/lib/tool\n")))
    check(image(*tool, text("/etc/ld-elf.so.conf", "/usr/local/lib/tool # comment\n")))


def test_rtld_stops_at_a_file_it_cannot_load():
    fs = image(exe("/usr/bin/tool", ["libfoo.so.1"]), text("/lib/libfoo.so.1", "INPUT(-lfoo)"),
               lib("/usr/lib/libfoo.so.1"))
    assert "rtld would stop at /lib/libfoo.so.1, which is not an ELF file" in misses(fs)


def test_static_flavour_refuses_any_dynamically_linked_elf():
    static_prog = _file("/usr/bin/static", elf_image("amd64", False, bytes(700), dynamic=False))
    result, _ = check(image(static_prog, runtime=False), static=True)
    assert (result.elf_files, result.dynamic) == (1, 0)
    err = misses(image(static_prog, exe("/usr/bin/tool", ["libc.so.7"], owner="FreeBSD-tool")), static=True)
    assert "declared `static: true`" in err
    assert "/usr/bin/tool (FreeBSD-tool), interpreter /libexec/ld-elf.so.1" in err and "/lib/libc.so.7" in err


def test_accepted_misses_pass_with_their_reason():
    fs = image(exe("/usr/bin/tool", ["libc.so.7", "libfoo.so.1", "libbar.so.2"]))
    accept = [AcceptMiss("/usr/bin/tool", "libfoo.so.1", "only its --foo mode needs it"),
              AcceptMiss("/usr/bin/tool", "libbar.so.2", "dlopened fallback"),
              AcceptMiss("/usr/bin/other", "libbaz.so.1", "stale")]
    result, unused = check(fs, accept=accept)
    assert [(m.elf, m.soname, r) for m, r in result.accepted] == [
        ("/usr/bin/tool", "libfoo.so.1", "only its --foo mode needs it"), ("/usr/bin/tool", "libbar.so.2", "dlopened fallback")]
    assert unused == [accept[2]]
    assert result.to_json()["unresolved"] == 2
    # accepting one of two misses still fails, naming the other only
    err = misses(fs, accept=accept[:1])
    assert "libbar.so.2" in err and "libfoo.so.1" not in err


def test_unreadable_elf_is_an_error_and_debug_files_are_not_checked():
    broken = elf_image("amd64", True, bytes(700), needed=("libc.so.7",), soname="libx.so.1")
    broken = broken[:200]
    fs = image(_file("/usr/lib/libx.so.1", broken))
    assert "cannot read the dynamic section" in misses(fs) and "/usr/lib/libx.so.1" in misses(fs)
    ok = image(exe("/usr/lib/debug/bin/sh.debug", ["libnothere.so.1"]), exe("/boot/kernel/kernel", [], interp="/red/herring"))
    assert check(ok)[0].elf_files == 2  # rtld and libc only


# --- the fixture made by FreeBSD's pkg: real FreeBSD 13.2 libraries ------------------------------------

def fixture_project(tmp_path: Path, family: str) -> Path:
    proj = reference_project(tmp_path)
    (proj / "families.yaml").write_text(family)
    return proj


def test_reference_family_passes_with_real_libraries(tmp_path):
    ctx = context(reference_project(tmp_path), cache=tmp_path / "cache")
    warned = []
    results, _ = build_one_arch(ctx, "amd64", tmp_path / "out", warn=warned.append)
    c = results["reference"].closure
    # runtime's 9 libraries, clibs' 8 libraries and rtld, openssl-lib's 2: real files, all dynamic;
    # the 39 executables are static stand-ins (no program headers). NEEDED entries, as readelf
    # counts them: clibs 10, openssl-lib 4, runtime 12.
    assert (c.elf_files, c.dynamic, c.libraries, c.needed, c.accepted) == (59, 20, 20, 26, [])
    assert warned == []


FETCH_WITHOUT_OPENSSL = """
schema: 1
flavours:
  fetch:
    description: libfetch without the OpenSSL libraries it is linked with
    packages: [FreeBSD-runtime, FreeBSD-fetch]
  tls:
    description: puts FreeBSD-openssl-lib in the lock, so the error can name it
    packages: [FreeBSD-openssl-lib]
"""


def test_without_the_package_shipping_libcrypto_the_build_fails_naming_it(tmp_path):
    ctx = context(fixture_project(tmp_path, FETCH_WITHOUT_OPENSSL), cache=tmp_path / "cache")
    with pytest.raises(BuildError) as e:
        build_one_arch(ctx, "amd64", tmp_path / "out")
    err = str(e.value)
    assert "image freebsd14.2-fetch (flavour fetch)" in err
    for soname in ("libcrypto.so.111", "libssl.so.111"):
        assert f"/usr/lib/libfetch.so.6 (FreeBSD-fetch) needs library {soname}" in err
    assert "provided by FreeBSD-openssl-lib (in the lock, not in this image)" in err


def test_libssl_without_libcrypto_names_libssl(tmp_path):
    family = """
schema: 1
flavours:
  tls:
    description: the OpenSSL libraries with libcrypto taken out
    packages: [FreeBSD-runtime, FreeBSD-openssl-lib]
    remove: [/lib/libcrypto.so.111]
"""
    ctx = context(fixture_project(tmp_path, family), cache=tmp_path / "cache")
    with pytest.raises(BuildError) as e:
        build_one_arch(ctx, "amd64", tmp_path / "out")
    err = str(e.value)
    assert "/usr/lib/libssl.so.111 (FreeBSD-openssl-lib) needs library libcrypto.so.111" in err
    assert "FreeBSD-openssl-lib is installed, but its copy is not in the image" in err


def test_accepted_miss_passes_and_is_printed(tmp_path, capsys):
    family = FETCH_WITHOUT_OPENSSL.replace("    packages: [FreeBSD-runtime, FreeBSD-fetch]\n", """\
    packages: [FreeBSD-runtime, FreeBSD-fetch]
    accept-missing-libraries:
      - {elf: /usr/lib/libfetch.so.6, soname: libssl.so.111, reason: "fetch is only used for http:// here"}
      - elf: /usr/lib/libfetch.so.6
        soname: libcrypto.so.111
        reason: >-
          fetch is only used for http:// here
      - {elf: /usr/bin/nothing, soname: libnothing.so.1, reason: "left over"}
  fetch-zones:
    parent: fetch
    description: inherits the accepted misses
    packages: [FreeBSD-zoneinfo]
""")
    proj = fixture_project(tmp_path, family)
    out = tmp_path / "out"
    args = ["--project", str(proj), "build", "--release", RELEASE, "--all", "--out", str(out),
            "--lock-dir", str(tmp_path / "locks"), "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    warnings = [l for l in captured.err.splitlines() if l.startswith("warning: ")]
    for flavour in ("fetch", "fetch-zones"):
        for soname in ("libssl.so.111", "libcrypto.so.111"):
            assert any(f"(flavour {flavour}): /usr/lib/libfetch.so.6 (FreeBSD-fetch) needs library {soname}" in w
                       and w.endswith("accepted in families.yaml: fetch is only used for http:// here") for w in warnings), warnings
    stale = [w for w in warnings if "/usr/bin/nothing" in w]
    assert len(stale) == 1 and "(flavour fetch)" in stale[0] and "matches nothing" in stale[0]
    images = {i["image"]: i for i in json.loads(captured.out)["images"]}
    c = images["freebsd14.2-fetch-zones"]["closure"]
    assert c["unresolved"] == 2 and {a["soname"] for a in c["accepted"]} == {"libssl.so.111", "libcrypto.so.111"}
    assert images["freebsd14.2-tls"]["closure"]["unresolved"] == 0


# --- the generated mirror --------------------------------------------------------------------------

def demo_build(project: Path, mirror: Path, out: Path, *extra: str) -> list[str]:
    return ["--project", str(project), "build", "--release", RELEASE, "--all", "--out", str(out),
            "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"), "--lock-dir", str(out.parent / "locks"),
            *extra]


def test_demo_family_passes_and_reports_its_closure(demo_mirror, tmp_path, capsys):
    project = demo_project(tmp_path)
    assert main(demo_build(project, demo_mirror, tmp_path / "out", "--json")) == 0
    images = {(i["image"], i["arch"]): i["closure"] for i in json.loads(capsys.readouterr().out)["images"]}
    assert len(images) == 8
    for (name, arch), c in images.items():
        assert c["unresolved"] == 0 and c["accepted"] == []
        if name.endswith("-static"):
            assert c["elf_files"] == 0
        else:
            assert c["dynamic"] > 10 and c["libraries"] > 10 and c["needed"] > 10
    assert images[("freebsd14.2-small", "amd64")]["elf_files"] > images[("freebsd14.2-minimal", "amd64")]["elf_files"]


def test_demo_pkg_in_place_of_openssl_lib_fails_naming_libssl_and_libcrypto(demo_mirror, tmp_path, capsys):
    project = demo_project(tmp_path)
    path = project / "families.yaml"
    path.write_text(path.read_text().replace("      - FreeBSD-openssl-lib\n",
                                             "      - {name: pkg, repository: ports, deps: false}\n"))
    assert main(demo_build(project, demo_mirror, tmp_path / "out", "--arch", "amd64")) == 2
    err = capsys.readouterr().err
    assert "image freebsd14.2-base (flavour base)" in err
    for soname in ("libssl.so.30", "libcrypto.so.30"):
        assert f"/usr/local/lib/libpkg.so.4 (pkg) needs library {soname}" in err
        assert f"/usr/local/sbin/pkg (pkg) needs library {soname}" in err
    assert "provided by FreeBSD-openssl-lib" in err
    # pkg's own library was found through its $ORIGIN run path
    assert "libpkg.so.4:" not in err


def test_demo_static_flavour_refuses_libc(demo_mirror, tmp_path, capsys):
    project = demo_project(tmp_path)
    path = project / "families.yaml"
    path.write_text(path.read_text().replace("      - FreeBSD-zoneinfo\n", "      - FreeBSD-zoneinfo\n      - FreeBSD-clibs\n", 1))
    assert main(demo_build(project, demo_mirror, tmp_path / "out", "--arch", "amd64", "--flavour", "static")) == 2
    err = capsys.readouterr().err
    assert "(flavour static) is declared `static: true`" in err and "/lib/libc.so.7 (FreeBSD-clibs)" in err


def test_generated_stand_ins_read_like_readelf_and_match_the_catalogue(demo_mirror, tmp_path):
    need_readelf()
    from tests.test_elf import compare_scanned_with_readelf
    pkgs = sorted(p for p in demo_mirror.rglob("*.pkg") if p.name not in ("data.pkg", "packagesite.pkg"))
    assert compare_scanned_with_readelf(pkgs, tmp_path) >= 200
    for pkg in pkgs:
        sp = scan_package(pkg, pkg.name.rsplit("-", 1)[0], pkg.parent.parent.name.split(":")[2], 0)
        elves = [n.elf for n in sp.nodes if n.kind == "file" and n.elf is not None and n.elf.linked_dynamically]
        if not elves:
            continue
        provided = {e.soname for e in elves if e.soname}
        needed = {n for e in elves for n in e.needed}
        # what pkg computes: the libraries the files need, less those the package provides itself
        assert needed - provided == set(sp.manifest.get("shlibs_required") or ()), pkg.name
        assert set(sp.manifest.get("shlibs_provided") or ()) <= provided, pkg.name
        for n in sp.nodes:
            if n.elf is not None and n.elf.linked_dynamically:
                if n.elf.shared_object:
                    assert n.path.endswith("ld-elf.so.1") or n.elf.soname == n.path.rsplit("/", 1)[1]
                else:
                    assert n.elf.interp == RTLD


# --- families.yaml ---------------------------------------------------------------------------------

CONFIG_CASES = [
    ("reason missing", "{elf: /usr/bin/x, soname: libfoo.so.1}", "{elf: /usr", "missing required key 'reason'"),
    ("reason blank", "{elf: /usr/bin/x, soname: libfoo.so.1, reason: \"  \"}", "\"  \"", "expected a reason"),
    ("relative elf path", "{elf: usr/bin/x, soname: libfoo.so.1, reason: r}", "usr/bin/x",
     "expected the absolute path of an ELF file"),
    ("typo in key", "{elf: /usr/bin/x, sonme: libfoo.so.1, reason: r}", "sonme", "did you mean 'soname'?"),
    ("soname with a space", "{elf: /usr/bin/x, soname: libfoo so.1, reason: r}", "libfoo so.1",
     "expected a library name"),
    ("listed twice", "{elf: /usr/bin/x, soname: libfoo.so.1, reason: r}\n      - {elf: /usr/bin/x, soname: libfoo.so.1, reason: s}",
     "{elf: /usr/bin/x, soname: libfoo.so.1, reason: s}", "/usr/bin/x / libfoo.so.1 is already accepted"),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_accept_missing_libraries_is_validated_with_positions(project_copy, case):
    _, entry, needle, message = case
    path = project_copy / "families.yaml"
    text = path.read_text().replace("    packages:\n      - FreeBSD-utilities\n",
                                    "    packages:\n      - FreeBSD-utilities\n    accept-missing-libraries:\n      - "
                                    + entry + "\n")
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_project(project_copy)
    diags = [d for d in info.value.diagnostics if message in d.message]
    assert diags, [str(d) for d in info.value.diagnostics]
    assert (diags[0].line, diags[0].column) == pos(text, needle, text.count(needle) - 1 if "twice" in case[0] else 0)


def test_static_key_is_a_boolean_and_accepts_are_inherited(project_copy):
    path = project_copy / "families.yaml"
    text = path.read_text()
    path.write_text(text.replace("    static: true\n", "    static: yes please\n"))
    with pytest.raises(ConfigError) as info:
        load_project(project_copy)
    assert any("expected true or false" in d.message for d in info.value.diagnostics)
    path.write_text(text.replace("    config:\n      cmd: [\"/bin/sh\"]\n", "    config:\n      cmd: [\"/bin/sh\"]\n"
                                 "    accept-missing-libraries:\n      - {elf: /usr/bin/x, soname: libx.so.1, reason: why}\n"))
    family = load_project(project_copy).family
    assert family.resolve("static").static and not family.resolve("base").static
    assert family.resolve("small").accept_missing == (AcceptMiss("/usr/bin/x", "libx.so.1", "why"),)
    assert family.resolve("base").accept_missing == ()
