"""diff names the exact image, layer, path and field of one injected nondeterminism at a
time, and diffoscope (independently) finds the same files; verify passes on the family."""
import gzip
import hashlib
import io
import json
import shutil
import sqlite3
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from tests.tools import have
from builder.cli import main
from builder.install import bdb
from builder.prove.diff import diff
from builder.oci.image import rfc3339
from builder.oci.layout import Layout, canonical
from tests.buildutil import demo_project, run
from tests.test_build import build_args

RELEASE = "14.2"
IMAGE = f"freebsd{RELEASE}-small"


@pytest.fixture(scope="module")
def original(demo_mirror, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("orig")
    project = demo_project(tmp)
    assert main(build_args(project, demo_mirror, tmp / "out", "--arch", "amd64")) == 0
    return tmp / "out" / RELEASE


def _gzip(data: bytes, level: int = 6) -> bytes:
    z = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    body = z.compress(data) + z.flush()
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + body
            + (zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little"))


def mutate_top_layer(src: Path, dst: Path, edit=None, level: int = 6, layer: int = -1) -> tuple[str, str]:
    """Copy a layout, rewrite the top layer (or the given one) of IMAGE/amd64 (edit(members) -> members),
    and re-point config, manifest, indexes and refs. Returns (old, new) layer digests."""
    shutil.copytree(src, dst)
    lay = Layout(dst)
    refs = lay.refs()
    man_desc = refs[f"{IMAGE}:{RELEASE}-amd64"]
    man = lay.read_json(man_desc.digest)
    top = man["layers"][layer]
    with gzip.open(lay.blob_path(top["digest"])) as fh:
        tar_bytes = fh.read()
    members = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as t:
        for m in t.getmembers():
            members.append((m, t.extractfile(m).read() if m.isfile() else None))
    if edit:
        members = edit(members)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for m, data in members:
                t.addfile(m, io.BytesIO(data) if data is not None else None)
        tar_bytes = buf.getvalue()
    blob = _gzip(tar_bytes, level)
    new_digest, size = lay.put_bytes(blob)
    cfg = lay.read_json(man["config"]["digest"])
    cfg["rootfs"]["diff_ids"][layer] = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    cfg_digest, cfg_size = lay.put_bytes(canonical(cfg))
    man["layers"][layer] = dict(top, digest=new_digest, size=size)
    man["config"] = dict(man["config"], digest=cfg_digest, size=cfg_size)
    new_man, new_man_size = lay.put_bytes(canonical(man))
    index = json.loads((dst / "index.json").read_text())
    for entry in index["manifests"]:
        d = entry["digest"]
        if d == man_desc.digest:
            entry.update(digest=new_man, size=new_man_size)
        elif entry["mediaType"].endswith("index.v1+json"):
            idx = lay.read_json(d)
            if any(m["digest"] == man_desc.digest for m in idx["manifests"]):
                for m in idx["manifests"]:
                    if m["digest"] == man_desc.digest:
                        m.update(digest=new_man, size=new_man_size)
                entry["digest"], entry["size"] = lay.put_bytes(canonical(idx))
    (dst / "index.json").write_text(json.dumps(index))
    return top["digest"], new_digest


def first_file(members, suffix=""):
    return next(m for m, d in members if m.isfile() and m.name.endswith(suffix) and m.size > 0)


def set_mtime(members):
    m = first_file(members)
    m.mtime = int(time.time())   # the classic mistake: a time from the clock
    return members


def change_row(members):
    out = []
    for m, data in members:
        if m.name == "var/db/pkg/local.sqlite":
            p = Path(f"/tmp/freebsd-images-test-{id(members)}.sqlite")
            p.write_bytes(data)
            con = sqlite3.connect(p)
            con.execute("UPDATE packages SET comment = 'changed by the test' WHERE name = 'FreeBSD-utilities'")
            con.commit()
            con.execute("VACUUM")
            con.close()
            data = p.read_bytes()
            p.unlink()
            m.size = len(data)
        out.append((m, data))
    return out


def reorder(members):
    files = [i for i, (m, _) in enumerate(members) if m.isfile()]
    i, j = files[0], files[1]
    members[i], members[j] = members[j], members[i]
    return members


def _first(members, edit, kind="file", suffix=""):
    m = next(m for m, _ in members if (m.isfile() if kind == "file" else m.issym()) and m.name.endswith(suffix))
    edit(m)
    return members


def set_mode(members):
    return _first(members, lambda m: setattr(m, "mode", m.mode ^ 0o4000))          # setuid added


def set_owner(members):
    return _first(members, lambda m: (setattr(m, "uid", 4242), setattr(m, "gid", 4343)))


def set_link_target(members):
    return _first(members, lambda m: setattr(m, "linkname", "/elsewhere"), kind="symlink")


def set_xattr(members):
    return _first(members, lambda m: m.pax_headers.update({"SCHILY.xattr.user.test": "x"}))


CASES = {
    "mtime": (set_mtime, 6, "mtime"),
    "pkgdb-row": (change_row, 6, "row"),
    "order": (reorder, 6, "order"),
    "gzip-level": (None, 1, "compression"),
    "mode": (set_mode, 6, "mode"),
    "uid": (set_owner, 6, "uid"),
    "gid": (set_owner, 6, "gid"),
    "link target": (set_link_target, 6, "linkname"),
    "xattrs": (set_xattr, 6, "pax"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_diff_names_the_injected_difference(original, tmp_path, case):
    edit, level, field = CASES[case]
    mutated = tmp_path / "mutated"
    old, new = mutate_top_layer(original, mutated, edit, level)
    diffs = diff(str(original), str(mutated))
    assert diffs, "a difference must be found"
    fields = {d.field for d in diffs}
    assert field in fields, [d.human() for d in diffs]
    hit = next(d for d in diffs if d.field == field)
    assert hit.image.startswith(IMAGE + ":")
    assert hit.where == "layer 4/4 [freebsd/amd64]"
    if case == "mtime":
        assert hit.path.startswith("/") and isinstance(hit.b, int) and hit.b > hit.a
    if case == "pkgdb-row":
        assert hit.path == "/var/db/pkg/local.sqlite"
        assert hit.detail == "table packages, key ('FreeBSD-utilities',), column comment"
        assert hit.b == "changed by the test"
    if case == "order":
        assert hit.path.startswith("/")
    if case == "mode":
        assert int(hit.b, 8) == int(hit.a, 8) ^ 0o4000
    if case in ("uid", "gid"):
        assert hit.b == {"uid": 4242, "gid": 4343}[case]
    if case == "link target":
        assert hit.b == "/elsewhere"
    if case == "xattrs":
        assert ("SCHILY.xattr.user.test", "x") in hit.b
    # only the top layer of the one image differs
    assert all(d.where == "layer 4/4 [freebsd/amd64]" or d.where.startswith(("config", "manifest", "index")) for d in diffs)
    # the JSON form says the same, and the CLI exits 1
    assert main(["diff", "--json", str(original), str(mutated)]) == 1
    # diffoscope, independently, finds differences in the same layer (and the same file)
    if have("diffoscope"):
        a, b = Layout(original).blob_path(old), Layout(mutated).blob_path(new)
        r = run(["diffoscope", "--no-progress", "--text", "-", str(a), str(b)])
        assert r.returncode == 1, r.stderr
        if hit.path:
            assert hit.path.lstrip("/") in r.stdout


def test_diff_names_the_changed_pwd_db_record(original, tmp_path):
    """Two layouts whose /etc/pwd.db differ in one Berkeley DB record: diff names that record's key."""
    changed = {}

    def edit(members):
        out = []
        for m, data in members:
            if m.name == "etc/pwd.db":
                records = bdb.read(data)
                # pwd_mkdb's by-name record of root: "root\0*\0" + uid ... + "/root\0" + shell ...
                key = next(k for k, v in records.items() if k.endswith(b"root") and v.startswith(b"root\0"))
                old = records[key]
                new = old.replace(b"\0/root\0", b"\0/home/root\0")
                assert new != old
                records[key] = new
                data = bdb.write(list(records.items()), bdb.PWD_INFO)
                m.size = len(data)
                changed.update(key=key, old=old, new=new)
            out.append((m, data))
        return out
    mutated = tmp_path / "mutated"
    mutate_top_layer(original, mutated, edit, layer=0)
    assert changed, "the static layer holds etc/pwd.db"
    diffs = diff(str(original), str(mutated))
    records = [d for d in diffs if d.field == "record"]
    assert len(records) == 1, [d.human() for d in diffs]
    hit = records[0]
    assert hit.image.startswith(IMAGE + ":") and hit.where == "layer 1/4 [freebsd/amd64]"
    assert hit.path == "/etc/pwd.db"
    assert hit.detail == f"key {changed['key']!r}"
    assert (hit.a, hit.b) == (changed["old"], changed["new"])
    assert not [d for d in diffs if d.path == "/etc/pwd.db" and d.field == "content"]


def test_identical_builds_diff_clean(original, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    assert diff(str(original), str(copy)) == []
    assert main(["diff", str(original), str(copy)]) == 0
    assert main(["diff", str(original), str(tmp_path / "nothing-here")]) == 2


def test_diff_release_archives(original, tmp_path):
    from builder.oci.archive import write_image_archive
    lay = Layout(original)
    d = lay.refs()[f"{IMAGE}:{RELEASE}-amd64"].digest
    a = tmp_path / "a.txz"
    write_image_archive(lay, d, f"{IMAGE}:{RELEASE}", 1731456000, a)
    mutated = tmp_path / "m"
    mutate_top_layer(original, mutated, set_mtime)
    ml = Layout(mutated)
    b = tmp_path / "b.txz"
    write_image_archive(ml, ml.refs()[f"{IMAGE}:{RELEASE}-amd64"].digest, f"{IMAGE}:{RELEASE}", 1731456000, b)
    diffs = diff(str(a), str(b))
    assert any(d.field == "mtime" for d in diffs)
    assert diff(str(a), str(a)) == []


def test_verify_passes_on_demo_family(demo_mirror, tmp_path, capsys):
    project = demo_project(tmp_path)
    rc = main(["--project", str(project), "verify", "--release", RELEASE, "--all", "--mirror", f"file://{demo_mirror}",
               "--keys", str(demo_mirror / "keys"), "--lock-dir", str(tmp_path / "locks"), "--work", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "reproducible: 16 refs identical" in out


def test_verify_builds_the_lock_it_was_given_by_a_relative_path(demo_mirror, tmp_path, monkeypatch, capsys):
    """The two builds run in directories of their own: a relative --lock-dir must still name the lock given."""
    project = demo_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    common = ["--project", str(project), "--flavour", "static", "--release", RELEASE, "--arch", "amd64",
              "--mirror", f"file://{demo_mirror}", "--keys", str(demo_mirror / "keys"), "--lock-dir", "locks"]
    assert main([common[0], common[1], "lock", RELEASE] + common[6:]) == 0
    lock = tmp_path / "locks" / f"{RELEASE}.lock.json"
    doc = json.loads(lock.read_text())
    doc["source-date-epoch"] -= 86400           # a lock no catalogue would give: only this file can say it
    lock.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    assert main([common[0], common[1], "verify"] + common[2:] + ["--work", "w"]) == 0, capsys.readouterr().err
    layout = Layout(tmp_path / "w" / RELEASE / "home0" / "out" / RELEASE)
    config = layout.read_json(layout.read_json(layout.refs()[f"freebsd{RELEASE}-static:{RELEASE}-amd64"].digest)
                              ["config"]["digest"])
    assert config["created"] == rfc3339(doc["source-date-epoch"])
    assert not list((tmp_path / "w").rglob("*.lock.json"))   # no lock was made anywhere else


def test_named_lists_are_compared_by_name_and_one_sided_values_shown_plainly():
    from builder.prove.diff import Difference, _json_diff
    a = {"resolvedDependencies": [{"name": "families.yaml#small", "digest": {"sha256": "1"}},
                                  {"name": "releases/14.2.yaml", "digest": {"sha256": "2"}}]}
    b = {"resolvedDependencies": [{"name": "releases/14.2.yaml", "digest": {"sha256": "3"}},
                                  {"name": "families.yaml#small", "digest": {"sha256": "1"}},
                                  {"name": "recipe", "digest": {"sha256": "4"}}]}
    found = {d.field: (d.a, d.b) for d in _json_diff("img", "referrer", a, b)}
    assert found == {"resolvedDependencies[releases/14.2.yaml].digest.sha256": ("2", "3"),
                     "resolvedDependencies[recipe]": (None, {"name": "recipe", "digest": {"sha256": "4"}})}
    assert Difference("img:14.2", "ref", field="only in B", b="sha256:ab").human() == "img:14.2 ref: only in B: 'sha256:ab'"
