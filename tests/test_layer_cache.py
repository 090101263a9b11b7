"""No work when nothing changed: the layer cache reuses layers, rebuilds only what a bump touches,
and never trusts an entry whose blob is not exactly there."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from builder.common.log import Log
from builder.config.release import load_release
from builder.gen.repo import GenOptions, generate
from tests.conftest import ROOT
from tests.golden import index_refs

RELEASE = "14.2"


def _build(tmp: Path, mirror: Path, *extra: str) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-m", "builder", "--project", str(ROOT), "build", "--release", RELEASE,
                        "--all", "--out", str(tmp / "out"), "--mirror", f"file://{mirror}", "--keys",
                        str(mirror / "keys"), "--lock-dir", str(tmp / "locks"), "--cache-dir", str(tmp / "cache"),
                        *extra], capture_output=True, text=True, cwd=tmp, env={"PATH": "/usr/bin:/bin",
                                                                                 "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    return index_refs(tmp / "out" / RELEASE), r.stderr


def _layers(stderr: str, word: str) -> set[str]:
    """(arch, flavour) pairs the build says it reused or built."""
    out = set()
    for line in stderr.splitlines():
        line = re.sub(r"^\[ *[0-9.]+s\] ", "", line)      # the time stamp of a log that is not a terminal
        said = re.sub(r" \([^)]*\)$", "", line.rstrip())    # "built (1.2 MB, 0.3 s)"
        if " layer sha256:" in line and said.endswith(word):
            arch = line.split(":", 1)[0].split("/")[1]
            out.add((arch, line.split(": ", 1)[1].split(" ")[0]))
    return out


ALL = {(a, f) for a in ("amd64", "arm64") for f in ("static", "base", "minimal", "small")}


def test_noop_rebuild_reuses_every_layer_without_reading_the_mirror(demo_mirror, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(demo_mirror, mirror)
    first, err = _build(tmp_path, mirror)
    assert _layers(err, "built") == ALL
    index = (tmp_path / "out" / RELEASE / "index.json").read_bytes()
    shutil.rmtree(mirror / "FreeBSD:14:amd64")          # no catalogue, no package can be read now
    shutil.rmtree(mirror / "FreeBSD:14:aarch64")
    again, err = _build(tmp_path, mirror)
    assert again == first
    # referrers too (SBOMs are made from what the cache kept)
    assert (tmp_path / "out" / RELEASE / "index.json").read_bytes() == index
    assert _layers(err, "reused from the layer cache") == ALL and not _layers(err, "built")


def test_a_package_bump_rebuilds_only_the_layers_that_hold_it(tmp_path):
    rel = load_release(ROOT / "releases" / f"{RELEASE}.yaml", ROOT)
    mirror = tmp_path / "mirror"
    generate(rel, mirror, opts=GenOptions())
    first, _ = _build(tmp_path, mirror)
    generate(rel, mirror, opts=GenOptions(bumps=(("FreeBSD-utilities", "14.2p2"),)))
    bumped, err = _build(tmp_path, mirror, "--update")
    assert _layers(err, "built") == {("amd64", "small"), ("arm64", "small")}
    assert _layers(err, "reused from the layer cache") == ALL - _layers(err, "built")
    # what the caches gave is what a build from nothing gives
    clean = tmp_path / "clean"
    clean.mkdir()
    shutil.copytree(tmp_path / "locks", clean / "locks")
    assert _build(clean, mirror)[0] == bumped
    for ref, digest in first.items():
        if "small" in ref:
            assert bumped.get(ref) != digest or ref not in bumped
        else:
            assert bumped[ref] == digest, ref


def test_a_damaged_blob_or_entry_is_rebuilt_to_the_same_bytes(demo_mirror, tmp_path):
    first, _ = _build(tmp_path, demo_mirror)
    layout = tmp_path / "out" / RELEASE
    man = json.loads((layout / "blobs" / "sha256" / first[f"freebsd{RELEASE}-base:{RELEASE}-amd64"].split(":")[1])
                     .read_text())
    base_layer = layout / "blobs" / "sha256" / man["layers"][1]["digest"].split(":")[1]
    data = bytearray(base_layer.read_bytes())
    data[len(data) // 2] ^= 0xFF                                      # same size, other bytes
    base_layer.write_bytes(bytes(data))
    entries = sorted((tmp_path / "cache" / "layers").rglob("*.json"))
    assert len(entries) == 8
    again, err = _build(tmp_path, demo_mirror)
    assert ("amd64", "base") in _layers(err, "built")
    assert again == first
    for e in entries:
        e.write_text("{not json")
    again, err = _build(tmp_path, demo_mirror)
    assert _layers(err, "built") == ALL and again == first


def test_moving_the_trust_roots_rebuilds_the_layers_that_hold_them(demo_mirror, tmp_path):
    """The key files' place in the image (/usr/share/keys/<dir>) is part of the layer key, not only their bytes."""
    from tests.buildutil import demo_project
    project = demo_project(tmp_path)

    def build() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "builder", "--project", str(project), "build", "--release", RELEASE,
                              "--all", "--arch", "amd64", "--out", str(tmp_path / "out"), "--mirror",
                            f"file://{demo_mirror}", "--keys", str(demo_mirror / "keys"), "--lock-dir",
                            str(tmp_path / "locks"), "--cache-dir", str(tmp_path / "cache")],
                           capture_output=True, text=True, cwd=tmp_path,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})

    assert build().returncode == 0
    (project / "keys" / "pkg").rename(project / "keys" / "pkg-moved")
    rel = project / "releases" / f"{RELEASE}.yaml"
    text = rel.read_text()
    assert "fingerprints: keys/pkg\n" in text
    rel.write_text(text.replace("fingerprints: keys/pkg\n", "fingerprints: keys/pkg-moved\n"))
    # minimal's layer is built again (not taken from the cache), and so the build's own check sees
    # that pkg's configuration in the image still names /usr/share/keys/pkg, which now holds nothing
    r = build()
    assert r.returncode == 2, r.stderr
    assert "trust roots the image does not have" in r.stderr and "/usr/share/keys/pkg" in r.stderr


def test_a_layer_is_built_on_its_parents_cached_filesystem(demo_mirror, tmp_path, monkeypatch):
    """A flavour whose layer must be built starts from its parent's filesystem as the layer cache
    kept it: no parent's packages, post-install work or pkg database is replayed. A damaged entry,
    or one filed under another key, is a miss: the parents are replayed down to the nearest sound
    entry, to the same bytes, and the entries are written again."""
    from builder.layers import build as stage
    from builder.runs.images import build_release
    from tests.buildutil import build_demo_family, context

    build_demo_family(demo_mirror, tmp_path)
    entries = sorted((tmp_path / "cache" / "layers").rglob("*.fs"))
    assert len(entries) == 6          # static, base and minimal per arch: the flavours others are built on
    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "cache", kept)
    families = tmp_path / "project" / "families.yaml"
    text = families.read_text()
    assert "      - FreeBSD-utilities\n" in text
    families.write_text(text.replace("      - FreeBSD-utilities\n", "      - FreeBSD-utilities\n"
                                     "    files: [{path: /etc/motd.template, content: \"changed\\n\"}]\n"))
    made = []
    real = stage.build_pkgdb
    monkeypatch.setattr(stage, "build_pkgdb", lambda *a, **k: made.append(1) or real(*a, **k))

    def rebuild() -> dict:
        ctx = context(tmp_path / "project", cache=tmp_path / "cache", mirror=f"file://{demo_mirror}",
                      keys=demo_mirror / "keys", lock_dir=tmp_path / "locks")
        made.clear()
        build_release(ctx, ctx.ensure_lock(), tmp_path / "out", log=Log(-1))   # the layout the cache checks
        return index_refs(tmp_path / "out" / RELEASE)

    loaded = rebuild()
    assert len(made) == 2             # small's own database, per arch

    def restore() -> None:
        shutil.rmtree(tmp_path / "cache")
        shutil.copytree(kept, tmp_path / "cache")

    restore()
    minimal = [e for e in entries if b'"/bin/sh"' in e.read_bytes()]
    assert len(minimal) == 2
    others = [e for e in entries if e not in minimal]
    for e, other in zip(minimal, others):   # a sound entry, sealed for another key, filed under this one
        e.write_bytes(other.read_bytes())
    assert rebuild() == loaded
    assert len(made) == 4             # minimal replayed, on base's filesystem from the cache; small
    restore()
    for e in entries:
        data = bytearray(e.read_bytes())
        data[-10] ^= 0x01             # in the body: its seal no longer matches
        e.write_bytes(bytes(data))
    replayed = rebuild()
    assert len(made) == 8             # every flavour's database, per arch: the parents were replayed
    assert replayed == loaded
    rebuild()
    assert len(made) == 0             # everything from the cache now, the rewritten entries included
    assert all(e.read_bytes() == (kept / e.relative_to(tmp_path / "cache")).read_bytes() for e in entries)


def test_a_filesystem_entry_over_the_bound_is_neither_written_nor_read(tmp_path, monkeypatch):
    from builder.install.fsmodel import FileSystem, Node
    from builder.layers import cache as lc
    fs = FileSystem({"/etc": Node("/etc", "dir", 0o755),
                     "/etc/motd": Node("/etc/motd", "file", 0o644, size=3, sha256="x", data=b"hi\n")})
    store = lc.LayerCache(tmp_path / "layers", lambda info: True, b"k" * 32)
    store.put_fs("a" * 64, fs)
    assert store.get_fs("a" * 64) == fs and store.get_fs("a" * 64).nodes["/etc/motd"].data == b"hi\n"
    body = store.fs_store.path("a" * 64 + ".fs").read_bytes().split(b"\n", 1)[1]
    monkeypatch.setattr(lc, "MAX_FS_ENTRY", len(body) - 1)
    assert store.get_fs("a" * 64) is None
    store.put_fs("b" * 64, fs)
    assert not store.fs_store.path("b" * 64 + ".fs").exists()
