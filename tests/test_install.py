"""Install stage: the reference install made by FreeBSD's pkg, the /etc databases,
certctl, the pkg database, and every hostile-archive refusal."""
import collections
import hashlib
import io
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest
import zstandard

from builder.install import bdb, mtree
from builder.errors import BuildError
from builder.install.scan import scan_package
from builder.install.pkgdb import read_rows
from builder.install import certctl, dbtools
from builder.install.scripts import recognise
from tests.buildutil import REFERENCE, build_one_arch, context, reference_project
from tests.conftest import ETC, PKGREPO
from tests.tools import under_ci

EPOCH = 1731456000


# --- the reference install ------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    ctx = context(reference_project(tmp), cache=tmp / "cache")
    results, layout = build_one_arch(ctx, "amd64", tmp / "out")
    return results["reference"], layout, tmp


def _describe(fs):
    """path -> (type, mode, nlink, size, sha256-or-target) as rootfs.tsv writes it."""
    group = lambda n: (n.owner, n.target if n.kind == "hardlink" else n.path)
    links = collections.Counter(group(n) for n in fs.nodes.values() if n.kind in ("file", "hardlink"))
    out = {}
    for p, n in fs.nodes.items():
        t = {"file": "f", "hardlink": "f", "dir": "d", "symlink": "l"}[n.kind]
        out[p] = (t, f"{n.mode:04o}", str(links[group(n)]) if t == "f" else "", str(n.size) if t == "f" else "",
                  n.sha256 if t == "f" else (n.target if t == "l" else ""))
    return out


def test_rootfs_matches_pkg_reference_install(reference_build):
    result, _, _ = reference_build
    ours = _describe(result.fs)
    lines = (REFERENCE / "rootfs.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["path", "type", "mode", "nlink", "size", "sha256_or_target"]
    missing, wrong = [], []
    for line in lines[1:]:
        path, *want = line.split("\t")
        if path not in ours:
            missing.append(path)
        elif list(ours[path]) != want:
            wrong.append((path, ours[path], want))
    assert wrong == []
    # /usr/share/keys is made by the reference's pkg configuration, not by any
    # package (no package lists it); in the family it comes from BSD.usr.dist.
    assert missing == ["/usr/share/keys"]
    assert len(lines) - 1 > 140
    # hard links survived as a group (/bin/[ and /bin/test)
    assert ours["/bin/["][2] == "2" and ours["/bin/["][4] == ours["/bin/test"][4]


def test_pkgdb_rows_equal_reference(reference_build, tmp_path):
    result, _, _ = reference_build
    node = result.fs.nodes["/var/db/pkg/local.sqlite"]
    ours = tmp_path / "local.sqlite"
    ours.write_bytes(node.data)
    ref = REFERENCE / "local.sqlite"
    mine, theirs = read_rows(str(ours)), read_rows(str(ref))
    assert set(mine) == set(theirs)
    for table in theirs:
        assert mine[table] == theirs[table], table
    assert sum(len(v) for v in theirs.values()) > 150
    for db in (ours, ref):
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA user_version").fetchone()[0] == 36
        con.close()
    # time is the epoch, not the clock
    con = sqlite3.connect(ours)
    assert {r[0] for r in con.execute("SELECT time FROM packages")} == {EPOCH}
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    assert ours.stat().st_size == ref.stat().st_size


def test_post_install_outputs(reference_build):
    result, _, _ = reference_build
    fs = result.fs
    for path, mode in (("/etc/pwd.db", 0o644), ("/etc/spwd.db", 0o600), ("/etc/passwd", 0o644),
                       ("/var/db/services.db", 0o644)):
        assert fs.nodes[path].mode == mode and fs.nodes[path].source.startswith("generated:")
    users = dbtools.read_pwd_db(fs.nodes["/etc/pwd.db"].data)
    assert users["root"]["uid"] == 0 and users["root"]["passwd"] == "*"
    # the secure database keeps master.passwd's password field, the insecure one "*"
    from builder.install.scan import read_member
    runtime = PKGREPO / "FreeBSD:14:amd64/base_release_2/FreeBSD-runtime-14.2p1.pkg"
    master = _passwd_expected(read_member(runtime, "FreeBSD-runtime", {"/etc/master.passwd"})["/etc/master.passwd"].decode())
    secure = dbtools.read_pwd_db(fs.nodes["/etc/spwd.db"].data)
    assert {u: r["passwd"] for u, r in secure.items()} == {u: r["passwd"] for u, r in master.items()}
    assert {r["passwd"] for r in users.values()} == {"*"}
    links = [p for p in fs.nodes if p.startswith("/etc/ssl/certs/")]
    assert len(links) > 10
    for p in links:
        n = fs.nodes[p]
        assert n.kind == "symlink" and n.target.startswith("../../../usr/share/certs/trusted/")
        assert n.target.replace("../../..", "") in fs.nodes


# --- Berkeley DB files ---------------------------------------------------------------------

def _passwd_expected(text: str):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split(":")
        out[f[0]] = {"uid": int(f[2]), "gid": int(f[3]), "class": f[4], "gecos": f[7], "dir": f[8], "shell": f[9],
                     "passwd": f[1]}
    return out


def test_bdb_reads_freebsd_pwd_db():
    want = _passwd_expected((ETC / "master.passwd").read_text())
    for name, secure in (("pwd.db", False), ("spwd.db", True)):
        got = dbtools.read_pwd_db((ETC / name).read_bytes())
        assert set(got) == set(want)
        for user, w in want.items():
            g = got[user]
            assert (g["uid"], g["gid"], g["pwclass"], g["gecos"], g["dir"], g["shell"]) == \
                   (w["uid"], w["gid"], w["class"], w["gecos"], w["dir"], w["shell"])
            assert g["passwd"] == (w["passwd"] if secure else "*")


def test_pwd_mkdb_is_byte_identical_to_freebsd():
    out = dbtools.pwd_mkdb((ETC / "master.passwd").read_bytes())
    assert out["/etc/pwd.db"] == (ETC / "pwd.db").read_bytes()
    assert out["/etc/spwd.db"] == (ETC / "spwd.db").read_bytes()
    assert bdb.read(out["/etc/pwd.db"]) == bdb.read((ETC / "pwd.db").read_bytes())


def test_cap_mkdb_reads_and_writes_login_conf_db():
    theirs = bdb.read((ETC / "login.conf.db").read_bytes())
    # every record the text implies, keyed by each of its names, tc= expanded
    text = (ETC / "login.conf").read_text()
    keys = set()
    for rec in dbtools._cap_records(text):
        field = rec.split(":", 1)[0]
        keys.update(field.split("|"))
        keys.add(field)          # cap_mkdb also keys each record by its whole name field
    assert {k.decode() for k in theirs} == keys
    ours = dbtools.cap_mkdb((ETC / "login.conf").read_bytes())
    assert bdb.read(ours) == theirs
    assert ours == (ETC / "login.conf.db").read_bytes()


def _services_mkdb_spec(text: str) -> dict[bytes, bytes]:
    """The records FreeBSD's usr.sbin/services_mkdb/services_mkdb.c writes, modelled from its source:

    parseservices(): per line "name port/proto aliases... [# comment]", names and aliases
    collected per (port, proto); protocols are numbered in order of first appearance.
    main(): ports 0..65535 ascending, then protocol number; add() for each, with cnt from 0:
      "<cnt>\\0"               -> "<name> <port>/<proto> <alias> <alias> ...\\0" (each alias + " ")
      "\\377<port>/<proto>\\0" -> "<cnt>\\0"
      "\\377<port>\\0"         -> "<cnt>\\0"
      "\\376<name>/<proto>\\0" -> "<cnt>\\0", and "\\376<name>\\0" -> "<cnt>\\0", for the name and each alias
    every put is R_NOOVERWRITE: the first record for a key wins. Ports and counts are %zu (decimal text).
    """
    protos: list[str] = []
    svc: dict[int, dict[int, list[str]]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or line.lstrip().startswith("#"):
            continue
        port, _, proto = words[1].partition("/")
        if not proto:
            continue
        if proto not in protos:
            protos.append(proto)
        names = svc.setdefault(int(port, 0), {}).setdefault(protos.index(proto), [])
        for n in words[:1] + words[2:]:
            if n not in names:
                names.append(n)
    db: dict[bytes, bytes] = {}

    def store(k: bytes, v: bytes) -> None:
        db.setdefault(k, v)
    cnt = 0
    for port in range(0x10000):
        for pi in range(5):
            names = svc.get(port, {}).get(pi)
            if not names:
                continue
            proto = protos[pi]
            idx = b"%d\0" % cnt
            cnt += 1
            store(idx, f"{names[0]} {port}/{proto} {''.join(a + ' ' for a in names[1:])}".encode() + b"\0")
            store(b"\377%d/%s\0" % (port, proto.encode()), idx)
            store(b"\377%d\0" % port, idx)
            for n in names:
                store(b"\376%s/%s\0" % (n.encode(), proto.encode()), idx)
                store(b"\376%s\0" % n.encode(), idx)
    return db


def test_services_mkdb_writes_freebsds_key_classes():
    text = (ETC / "services").read_text()
    db = bdb.read(dbtools.services_mkdb(text.encode()))

    def line(key: bytes) -> bytes:
        idx = db[key]
        assert idx[-1:] == b"\0" and idx[:-1].isdigit(), (key, idx)
        return db[idx]
    # by port and protocol: "\377" + decimal port + "/" + proto
    assert line(b"\37722/tcp\0") == b"ssh 22/tcp \0"
    assert line(b"\37722/sctp\0") == b"ssh 22/sctp \0"
    assert line(b"\37753/udp\0") == b"domain 53/udp \0"
    assert line(b"\37780/tcp\0") == b"http 80/tcp www www-http \0"
    # by port alone: the first protocol seen in the file (tcp) wins
    assert db[b"\37722\0"] == db[b"\37722/tcp\0"] and db[b"\37753\0"] == db[b"\37753/tcp\0"]
    # by name and by alias, with and without the protocol
    assert db[b"\376ssh/tcp\0"] == db[b"\37722/tcp\0"] and db[b"\376ssh\0"] == db[b"\37722/tcp\0"]
    assert db[b"\376domain/udp\0"] == db[b"\37753/udp\0"]
    assert db[b"\376www/tcp\0"] == db[b"\376www-http/tcp\0"] == db[b"\376http/tcp\0"] == db[b"\37780/tcp\0"]
    assert db[b"\376www/sctp\0"] == db[b"\37780/sctp\0"] and db[b"\376www\0"] == db[b"\37780/tcp\0"]
    assert line(b"\376mail/udp\0") == b"smtp 25/udp mail \0"
    assert line(b"\376rpcbind/tcp\0") == b"sunrpc 111/tcp rpcbind \0"
    # index keys count from 0 in port order
    assert db[b"0\0"] == b"tcpmux 1/tcp \0" and db[b"1\0"] == b"tcpmux 1/udp \0"
    # no other key classes, and exactly the records services_mkdb.c writes
    assert all(k[:1] in (b"\376", b"\377") or k[:-1].isdigit() for k in db)
    want = _services_mkdb_spec(text)
    classes = lambda d: collections.Counter("index" if k[:-1].isdigit() else k[:1] + (b"/" if b"/" in k else b"")
                                             for k in d)
    assert classes(db) == classes(want)
    assert db == want
    assert len(want) > 4000


def test_bdb_roundtrip_many_records():
    pairs = [(f"key{i}".encode(), (f"value{i}" * (i % 50 + 1)).encode()) for i in range(3000)]
    data = bdb.write(pairs, bdb.PWD_INFO)
    assert bdb.read(data) == dict(pairs)
    # like libc's hash, page contents follow insertion order; the same input gives the same bytes
    assert bdb.write(list(pairs), bdb.PWD_INFO) == data
    assert bdb.read(bdb.write(list(reversed(pairs)), bdb.PWD_INFO)) == dict(pairs)
    # overflow ("big") pairs are read but not written: no /etc source needs them
    with pytest.raises(bdb.BDBError, match="pair too large"):
        bdb.write([(b"big", b"x" * 20000)], bdb.PWD_INFO)


# --- certctl -------------------------------------------------------------------------------

DEBIAN_CERTS = Path("/usr/share/ca-certificates/mozilla")


def test_certctl_link_names_match_freebsd():
    if not DEBIAN_CERTS.is_dir():
        (pytest.fail if under_ci() else pytest.skip)("not installed: Debian's ca-certificates (apt-get install ca-certificates)")
    rows = [l.split("\t") for l in (ETC / "ssl-hash-links.tsv").read_text().splitlines() if l.strip()]
    certs = {}
    expected = {}
    for link, target in rows:
        name = target.rsplit("/", 1)[1]
        deb = DEBIAN_CERTS / (name.rsplit(".", 1)[0] + ".crt")
        if deb.exists() and link.startswith("certs/"):
            path = "/usr/share/certs/trusted/" + name
            certs[path] = deb.read_bytes()
            expected.setdefault(path, []).append("/etc/ssl/" + link)
    assert len(certs) > 80
    ours: dict[str, list[str]] = {}
    for l in certctl.rehash(certs):
        ours.setdefault("/" + l.target.replace("../", ""), []).append(l.path)
    # the .<n> suffix depends on which other certificates share a hash; compare the hash part
    strip = lambda links: sorted(p.rsplit(".", 1)[0] for p in links)
    mismatched = [p for p in expected if strip(ours.get(p, [])) != strip(expected[p])]
    assert mismatched == []


def test_certctl_untrusted_wins():
    from builder.gen.payload import ca_certificate
    pem = ca_certificate("Demo Root X", "test")
    links = certctl.rehash({"/usr/share/certs/trusted/x.pem": pem, "/usr/share/certs/untrusted/x.pem": pem})
    assert [l.path.rsplit("/", 1)[0] for l in links] == ["/etc/ssl/untrusted"]
    assert links[0].target == "../../../usr/share/certs/untrusted/x.pem"


# --- mtree ---------------------------------------------------------------------------------

def test_mtree_parses_hierarchy_specs():
    from importlib import resources
    text = resources.files("builder.gen").joinpath("data/mtree/BSD.root.dist").read_text()
    entries = {e.path: e for e in mtree.parse(text, "/")}
    assert entries["/tmp"].mode == 0o1777 and entries["/tmp"].type == "dir"
    assert entries["/root"].mode == 0o750
    assert "/etc/ssl" in entries or "/etc/mtree" in entries
    var = {e.path: e for e in mtree.parse(resources.files("builder.gen").joinpath("data/mtree/BSD.var.dist").read_text(), "/var")}
    assert "/var/db/pkg" in var and "/var/empty" in var
    assert var["/var/empty"].flags == "schg"
    with pytest.raises(BuildError, match="'..' above the root"):
        mtree.parse("/set type=dir\n.\n..\n..\n")


VIS_SPEC = r"""#	$FreeBSD$
/set type=dir uname=root gname=wheel mode=0755
.
    my\040dir
        file\040with\040spaces type=file mode=0644
    ..
    back\134slash
    ..
    hash\043tag
    ..
    tab\011name type=file
    \060\061\062 type=file
..
"""


def test_mtree_decodes_vis_encoded_names():
    # names with special characters are strvis(3)-encoded (\ooo octal); parse gives the real path
    got = {e.path: e.type for e in mtree.parse(VIS_SPEC, "/usr/share")}
    assert got == {"/usr/share": "dir", "/usr/share/my dir": "dir", "/usr/share/my dir/file with spaces": "file",
                   "/usr/share/back\\slash": "dir", "/usr/share/hash#tag": "dir", "/usr/share/tab\tname": "file",
                   "/usr/share/012": "file"}
    # a '/' or '..' hidden behind an escape is still refused
    for name in (r"a\057b", r"\056\056"):
        with pytest.raises(BuildError, match="refusing entry"):
            mtree.parse(f"/set type=dir\n.\n    {name}\n    ..\n..\n")


# FreeBSD's mtree (contrib/mtree/spec.c) writes names with strsvis(VIS_CSTYLE) and the extra
# characters " \t\n\\#*?[" (vispath), and reads them back with strunvis(3): a space is "\s", a
# backslash "\\", a '#' "\#". libarchive's mtree writer escapes bytes as \ooo octal, and strunvis
# decodes those byte by byte, so the octal escapes of a UTF-8 name give that UTF-8 name.
@pytest.mark.parametrize("encoded,decoded", [(r"back\\slash", "back\\slash"), (r"my\sdir", "my dir"),
                                             (r"hash\#tag", "hash#tag"), (r"\303\251t\303\251", "\u00e9t\u00e9")],
                         ids=["backslash", "cstyle-space", "cstyle-hash", "utf8-octal"])
def test_mtree_decodes_strvis_cstyle_names(encoded, decoded):
    assert [e.path for e in mtree.parse(f"/set type=dir\n.\n    {encoded}\n    ..\n..\n", "/")] == ["/", "/" + decoded]


# --- scripts -------------------------------------------------------------------------------

def test_known_scripts_are_recognised():
    scripts = {"post-install": "pwd_mkdb -i -p -d ${PKG_ROOTDIR}/etc ${PKG_ROOTDIR}/etc/master.passwd\n"
                               "services_mkdb -l -q -o ${PKG_ROOTDIR}/var/db/services.db ${PKG_ROOTDIR}/etc/services"}
    assert recognise("FreeBSD-runtime", scripts, {}) == {"pwd_mkdb", "services_mkdb"}
    assert recognise("FreeBSD-caroot", {"post-install": "[ -x /usr/sbin/certctl ] && env DESTDIR=${PKG_ROOTDIR} /usr/sbin/certctl rehash"}, {}) == {"certctl"}


def test_unknown_script_stops_the_build_showing_it():
    with pytest.raises(BuildError) as e:
        recognise("FreeBSD-foo", {"post-install": "/usr/sbin/kldxref /boot/kernel"}, {})
    assert "FreeBSD-foo" in str(e.value) and "kldxref /boot/kernel" in str(e.value) and "ignore-scripts" in str(e.value)
    assert recognise("FreeBSD-foo", {"post-install": "/usr/sbin/kldxref /boot/kernel"}, {"FreeBSD-foo": "no kernel"}) == frozenset()


# --- hostile archives ----------------------------------------------------------------------

def make_pkg(path: Path, entries, flatsize: int = 1000, name: str = "FreeBSD-evil"):
    """A .pkg (tar.zst) with a manifest and the given (TarInfo, bytes) entries."""
    manifest = {"name": name, "origin": "base/evil", "version": "1", "flatsize": flatsize, "files": {}}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for mname in ("+COMPACT_MANIFEST", "+MANIFEST"):
            data = json.dumps(manifest).encode()
            ti = tarfile.TarInfo(mname)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


def entry(name, kind=tarfile.REGTYPE, data=b"", linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.uname, ti.gname, ti.mode = "root", "wheel", 0o644
    return ti, (data if kind == tarfile.REGTYPE else None)


def elf(machine: int, klass: int = 2) -> bytes:
    return b"\x7fELF" + bytes([klass, 1, 1, 9]) + bytes(8) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(44)


HOSTILE = [
    ("dotdot", [entry("usr/../../etc/passwd", data=b"x")], "'..' component"),
    ("escaping-symlink", [entry("usr/lib/evil", tarfile.SYMTYPE, linkname="../../../../etc/shadow")], "escapes the root"),
    ("hardlink-to-nothing", [entry("bin/evil", tarfile.LNKTYPE, linkname="etc/master.passwd")], "refusing hard link"),
    ("hardlink-escaping", [entry("bin/evil", tarfile.LNKTYPE, linkname="../../etc/shadow")], "'..' component"),
    ("device-node", [entry("dev/mem", tarfile.CHRTYPE)], "device nodes"),
    ("fifo", [entry("tmp/fifo", tarfile.FIFOTYPE)], "special files"),
    ("wrong-elf", [entry("bin/ls", data=elf(183))], "ELF file for machine 183"),
    ("wrong-elf-class", [entry("lib/libc.so.7", data=elf(3, klass=1))], "not amd64"),
]


@pytest.mark.parametrize("label,entries,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_archive_refused(tmp_path, label, entries, reason):
    pkg = make_pkg(tmp_path / f"{label}.pkg", entries)
    with pytest.raises(BuildError) as e:
        scan_package(pkg, "FreeBSD-evil", "amd64", EPOCH)
    msg = str(e.value)
    assert reason in msg and "FreeBSD-evil" in msg
    assert "/" + entries[0][0].name in msg, "the refusal names the entry's path"


def test_archive_bomb_refused(tmp_path):
    pkg = make_pkg(tmp_path / "bomb.pkg", [entry("usr/share/zeros", data=bytes(12 << 20))], flatsize=100)
    assert pkg.stat().st_size < 100_000
    with pytest.raises(BuildError, match="archive bomb"):
        scan_package(pkg, "FreeBSD-evil", "amd64", EPOCH)


def test_absolute_symlink_inside_root_is_kept(tmp_path):
    pkg = make_pkg(tmp_path / "ok.pkg", [entry("etc/termcap", tarfile.SYMTYPE, linkname="/usr/share/misc/termcap"),
                                         entry("bin/ls", data=elf(62))])
    sp = scan_package(pkg, "FreeBSD-evil", "amd64", EPOCH)
    assert {n.path: n.kind for n in sp.nodes} == {"/etc/termcap": "symlink", "/bin/ls": "file"}


def test_two_packages_shipping_one_path_conflict(tmp_path):
    from builder.install.fsmodel import FileSystem
    from builder.install.scan import install
    a = scan_package(make_pkg(tmp_path / "a.pkg", [entry("bin/x", data=b"a")], name="FreeBSD-a"), "FreeBSD-a", "amd64", EPOCH)
    b = scan_package(make_pkg(tmp_path / "b.pkg", [entry("bin/x", data=b"b")], name="FreeBSD-b"), "FreeBSD-b", "amd64", EPOCH)
    fs = FileSystem()
    install(fs, a)
    with pytest.raises(BuildError, match="conflict between FreeBSD-a and FreeBSD-b"):
        install(fs, b)


def test_mtime_clamped_to_epoch(tmp_path):
    ti, data = entry("bin/new", data=b"x")
    ti.mtime = EPOCH + 10_000
    sp = scan_package(make_pkg(tmp_path / "t.pkg", [(ti, data)]), "FreeBSD-evil", "amd64", EPOCH)
    assert sp.nodes[0].mtime == EPOCH
    assert hashlib.sha256(b"x").hexdigest() == sp.nodes[0].sha256


def test_post_install_reads_every_path_of_a_hard_linked_file_the_same_on_every_call(tmp_path):
    # the certctl step asks for both names of a hard-linked certificate; what it gets must not
    # depend on whether an earlier flavour of the same build asked first
    from builder.install.fsmodel import FileSystem
    from builder.install.scan import install
    from builder.layers.source import PackageSource
    from builder.resolve.lock import ArchLock, LockedPackage
    pkg = make_pkg(tmp_path / "c.pkg", [entry("usr/share/certs/trusted/a.pem", data=b"CERT"),
                                        entry("usr/share/certs/trusted/b.pem", tarfile.LNKTYPE,
                                              linkname="usr/share/certs/trusted/a.pem")])
    sp = scan_package(pkg, "FreeBSD-evil", "amd64", EPOCH)
    fs = FileSystem()
    install(fs, sp)
    locked = ArchLock(abi="FreeBSD:14:amd64", catalogues={}, flavours={},
                      packages={"FreeBSD-evil": LockedPackage("FreeBSD-evil", "o", "1", "base", "c.pkg", 0, sp.sha256)})
    contents = PackageSource("14.2/amd64", "amd64", EPOCH, locked, {"FreeBSD-evil": pkg})
    paths = ["/usr/share/certs/trusted/a.pem", "/usr/share/certs/trusted/b.pem"]
    first, second = contents.read(fs, paths), contents.read(fs, paths)
    assert first == second == {p: b"CERT" for p in paths}


def test_a_file_read_whole_is_bounded(tmp_path, monkeypatch):
    from builder.install import scan
    pkg = make_pkg(tmp_path / "p.pkg", [entry("etc/master.passwd", data=b"x" * 100)])
    monkeypatch.setattr(scan, "MAX_MEMBER", 64)
    with pytest.raises(BuildError, match=r"package FreeBSD-evil: /etc/master.passwd is 100 bytes, over the 64"):
        scan.read_member(pkg, "FreeBSD-evil", {"/etc/master.passwd"})


def test_a_child_that_changes_a_post_install_input_gets_fresh_databases(tmp_path):
    """A flavour keeps its parent's databases only when their inputs are unchanged: one that adds a
    user, a service, a login class or a certificate, removes a certificate, or overwrites a database,
    gets what a build without a parent gives."""
    from builder.install.scan import read_member
    repo = PKGREPO / "FreeBSD:14:amd64/base_release_2"
    etc = read_member(repo / "FreeBSD-runtime-14.2p1.pkg", "FreeBSD-runtime",
                      {"/etc/master.passwd", "/etc/services", "/etc/login.conf"})
    cert = read_member(repo / "FreeBSD-caroot-14.2p1.pkg", "FreeBSD-caroot",
                       {"/usr/share/certs/trusted/ACCVRAIZ1.pem"})["/usr/share/certs/trusted/ACCVRAIZ1.pem"]
    files = [("/etc/master.passwd", etc["/etc/master.passwd"] + b"extra:*:4242:4242::0:0:Extra:/nonexistent:/usr/sbin/nologin\n", "0600"),
             ("/etc/services", etc["/etc/services"] + b"extra\t\t4242/tcp\n", "0644"),
             ("/etc/login.conf", etc["/etc/login.conf"] + b"extra:\\\n\t:tc=default:\n", "0644"),
             ("/usr/share/certs/trusted/EXTRA-COPY.pem", cert, "0444")]
    listed = "[" + ", ".join(f"{{path: {p}, mode: \"{m}\", content: {json.dumps(c.decode())}}}" for p, c, m in files) + "]"
    packages = "[FreeBSD-runtime, FreeBSD-caroot, FreeBSD-certctl, FreeBSD-zoneinfo]"
    gone = "/usr/share/certs/trusted/AC_RAIZ_FNMT-RCM.pem"
    stray = "[{path: /etc/passwd, content: 'not what pwd_mkdb writes'}]"   # the output in place, not the input
    proj = reference_project(tmp_path)
    (proj / "families.yaml").write_text(f"""
schema: 1
flavours:
  below: {{description: the packages, packages: {packages}, post-install: [cap_mkdb]}}
  above: {{description: the files on top, parent: below, files: {listed}}}
  flat: {{description: both in one flavour, packages: {packages}, post-install: [cap_mkdb], files: {listed}}}
  fewer: {{description: one certificate less and a stray passwd, parent: below, remove: [{gone}], files: {stray}}}
  flat-fewer: {{description: the same in one flavour, packages: {packages}, post-install: [cap_mkdb], remove: [{gone}],
               files: {stray}}}
""")
    ctx = context(proj, cache=tmp_path / "cache")
    results, _ = build_one_arch(ctx, "amd64", tmp_path / "out")
    below, above, flat, fewer, flat_fewer = (results[f].fs.nodes for f in ("below", "above", "flat", "fewer",
                                                                          "flat-fewer"))
    outputs = ["/etc/passwd", "/etc/pwd.db", "/etc/spwd.db", "/var/db/services.db", "/etc/login.conf.db"]
    for path in outputs:
        assert above[path].sha256 == flat[path].sha256 != below[path].sha256, path
    links = lambda nodes: {p: n.target for p, n in nodes.items() if p.startswith("/etc/ssl/certs/")}
    assert links(above) == links(flat) != links(below)
    assert any(t.endswith("/EXTRA-COPY.pem") for t in links(above).values())
    assert links(fewer) == links(flat_fewer) != links(below)
    assert fewer["/etc/passwd"].sha256 == flat_fewer["/etc/passwd"].sha256 == below["/etc/passwd"].sha256
    assert not any(t.endswith(gone) for t in links(fewer).values()) and any(t.endswith(gone) for t in links(below).values())
    assert dbtools.read_pwd_db(above["/etc/pwd.db"].data)["extra"]["uid"] == 4242


def test_a_child_that_changes_no_input_keeps_its_parents_databases(tmp_path, monkeypatch):
    """The other half: a flavour that adds a file no tool reads runs none of them again."""
    proj = reference_project(tmp_path)
    (proj / "families.yaml").write_text("""
schema: 1
flavours:
  below: {description: the packages, packages: [FreeBSD-runtime, FreeBSD-caroot, FreeBSD-certctl],
          post-install: [cap_mkdb]}
  same: {description: a file no tool reads, parent: below, files: [{path: /etc/motd.template, content: "hi\\n"}]}
""")
    runs = collections.Counter()
    for module, name in ((dbtools, "pwd_mkdb"), (dbtools, "services_mkdb"), (dbtools, "cap_mkdb"),
                         (certctl, "rehash")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: runs.update([_name]) or _real(*a, **k))
    results, _ = build_one_arch(context(proj, cache=tmp_path / "cache"), "amd64", tmp_path / "out")
    assert runs == {"pwd_mkdb": 1, "services_mkdb": 1, "cap_mkdb": 1, "rehash": 1}    # for below only
    below, same = results["below"].fs.nodes, results["same"].fs.nodes
    for path in ("/etc/pwd.db", "/etc/spwd.db", "/etc/passwd", "/var/db/services.db", "/etc/login.conf.db"):
        assert same[path] is below[path]


def test_a_refusal_while_assembling_names_the_image_arch_and_flavour_once(tmp_path):
    """build_flavour adds the "release/arch image (flavour)" context to every refusal, once."""
    proj = reference_project(tmp_path)
    (proj / "families.yaml").write_text("""
schema: 1
flavours:
  below: {description: the packages, packages: [FreeBSD-runtime]}
  takes: {description: extracts a file that is not there, parent: below,
          extract: [{package: FreeBSD-runtime, paths: [/no/such/file]}]}
""")
    with pytest.raises(BuildError) as e:
        build_one_arch(context(proj, cache=tmp_path / "cache"), "amd64", tmp_path / "out")
    assert str(e.value) == ("14.2/amd64 image freebsd14.2-takes (flavour takes): "
                            "package FreeBSD-runtime has no /no/such/file to extract")
