"""Caches are untrusted storage: private, sealed, bounded; and nothing a cache poisons is published."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from builder.cli import main
from builder.common.sealed import Sealed, user_key
from builder.config.release import load_release
from builder.gen.repo import GenOptions, generate
from tests.conftest import ROOT, demo_project
from tests.golden import index_refs

RELEASE = "14.2"


def _args(project: Path, mirror: Path, cache: Path, *extra: str) -> list[str]:
    return ["--project", str(project), "-q", "--arch", "amd64", "--mirror", f"file://{mirror}", "--keys",
            str(mirror / "keys"), "--lock-dir", str(project.parent / "locks"), "--cache-dir", str(cache), *extra]


def _build(project: Path, mirror: Path, cache: Path, out: Path, *extra: str) -> dict:
    argv = _args(project, mirror, cache, "--out", str(out), *extra)
    assert main(argv[:3] + ["build", "--release", RELEASE, "--all"] + argv[3:]) == 0
    return index_refs(out / RELEASE)


@pytest.fixture
def cached(demo_mirror, tmp_path):
    project = demo_project(tmp_path)
    refs = _build(project, demo_mirror, tmp_path / "cache", tmp_path / "out")
    return project, tmp_path / "cache", refs


# --- the directories and the entries ------------------------------------------------------------

def test_a_cache_others_can_write_is_refused_naming_it(cached, demo_mirror, tmp_path, capsys):
    project, cache, _ = cached
    os.chmod(cache / "layers", 0o777)
    argv = _args(project, demo_mirror, cache, "--out", str(tmp_path / "o2"))
    assert main(argv[:3] + ["build", "--release", RELEASE, "--all"] + argv[3:]) == 2
    assert f"{cache / 'layers'} is writable by group or others" in capsys.readouterr().err


def test_a_symlinked_cache_folder_is_refused_and_nothing_is_written_outside(demo_mirror, tmp_path, capsys):
    project = demo_project(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (tmp_path / "cache").mkdir(mode=0o700)
    (tmp_path / "cache" / "scans").symlink_to(outside)
    argv = _args(project, demo_mirror, tmp_path / "cache", "--out", str(tmp_path / "out"))
    assert main(argv[:3] + ["build", "--release", RELEASE, "--all"] + argv[3:]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


def _entries(cache: Path, kind: str) -> list[Path]:
    return sorted(p for p in (cache / kind).rglob("*") if p.is_file() or p.is_fifo() or p.is_symlink())


@pytest.mark.parametrize("what", ["fifo", "dev-zero", "unsealed", "deep"])
def test_a_hostile_entry_is_a_miss_never_a_hang_or_a_crash(cached, demo_mirror, tmp_path, what):
    project, cache, refs = cached
    for kind in ("layers", "scans"):
        for e in _entries(cache, kind):
            e.unlink()
            if what == "fifo":
                os.mkfifo(e)
            elif what == "dev-zero":
                e.symlink_to("/dev/zero")
            elif what == "unsealed":          # well-formed, but not sealed with this user's key
                e.write_bytes(b"0" * 64 + b"\n" + json.dumps({"key": e.stem}).encode())
            else:                             # sealed, as if the key had leaked, and nested past any parser
                body = b"[" * 100000 + b"]" * 100000
                Sealed(cache / kind, user_key(), "layer" if kind == "layers" and e.suffix == ".json" else
                       "layer-fs" if e.suffix == ".fs" else "scan").write(e.name, body)
    done: list = []
    t = threading.Thread(target=lambda: done.append(_build(project, demo_mirror, cache, tmp_path / "o2")), daemon=True)
    start = time.monotonic()
    t.start()
    t.join(120)
    assert done, f"the build hung on a {what} entry"
    assert done[0] == refs and time.monotonic() - start < 120


def test_a_package_changed_after_its_check_is_refused_naming_it(demo_mirror, tmp_path):
    """The bytes scanned are the bytes verified: a file swapped between the download cache's check and
    its use is refused, and its scan is never filed under the honest package's key."""
    from builder.errors import BuildError
    from builder.layers.source import PackageSource
    from tests.buildutil import context
    ctx = context(demo_project(tmp_path), mirror=f"file://{demo_mirror}", keys=demo_mirror / "keys",
                  lock_dir=tmp_path / "locks", cache=tmp_path / "cache")
    lock = ctx.ensure_lock()
    # FreeBSD-runtime as another mirror made it: a sound package of the same name and version, other bytes
    rel = load_release(ROOT / "releases" / f"{RELEASE}.yaml", ROOT)
    generate(rel, tmp_path / "other", ["amd64"], GenOptions(seed="someone else"))
    swapped = next((tmp_path / "other").rglob("FreeBSD-runtime-14.2p1*.pkg"))
    source = PackageSource("14.2/amd64", "amd64", lock.source_date_epoch, lock.arches["amd64"],
                           {"FreeBSD-runtime": swapped})
    with pytest.raises(BuildError, match=r"package FreeBSD-runtime: the file read has sha256 .* not the locked"):
        source.scanned("FreeBSD-runtime")


# --- nothing a poisoned cache made is published -------------------------------------------------------

def _reseal(cache: Path, kind: str, store: str, edit) -> int:
    """Edit entries and seal them again with the user's key: poison the entry's own checks accept."""
    n = 0
    for e in _entries(cache, kind):
        s = Sealed(cache / kind, user_key(), store if e.suffix == ".json" or store != "layer" else "layer-fs")
        body = s.read(e.name, 1 << 30)
        new = edit(e, body)
        if new is not None and new != body:
            s.write(e.name, new)
            n += 1
    return n


def _poison_layer_entry(cache: Path) -> None:
    # another history line: the image config names what the layer did not do
    def edit(e, body):
        if e.suffix != ".json":
            return None
        doc = json.loads(body)
        doc["history"] += " + something else"
        return json.dumps(doc, sort_keys=True, indent=1).encode()
    assert _reseal(cache, "layers", "layer", edit)


def _poison_scan_entry(cache: Path) -> None:
    # awk becomes setuid root; every layer must then be built from the scans
    def edit(e, body):
        doc = json.loads(body)
        for n in doc["nodes"]:
            if n[0] == "/usr/bin/awk":
                n[2] = 0o4755
        return json.dumps(doc).encode()
    assert _reseal(cache, "scans", "scan", edit)
    shutil.rmtree(cache / "layers")


def _poison_fs_entry(cache: Path) -> None:
    # /etc/hosts setuid in the parents' filesystems. A layer holds its flavour's delta over the very
    # filesystem it was built on, so this reaches only a squashed image, which holds the whole tree.
    def edit(e, body):
        if e.suffix != ".fs":
            return None
        docs, _, blobs = body.partition(b"\n")
        nodes = [n[:2] + [0o4755] + n[3:] if n[0] == "/etc/hosts" else n for n in json.loads(docs)]
        return json.dumps(nodes).encode() + b"\n" + blobs
    assert _reseal(cache, "layers", "layer", edit)
    for e in _entries(cache, "layers"):
        if e.suffix == ".json" and b'"history": "small' in e.read_bytes():
            e.unlink()


# kind -> (the poison, the build options it reaches an image with)
POISONS = {"layer entry": (_poison_layer_entry, ()), "scan entry": (_poison_scan_entry, ()),
           "filesystem entry": (_poison_fs_entry, ("--squash",))}


@pytest.mark.parametrize("kind", sorted(POISONS))
def test_verify_against_a_layout_built_from_a_poisoned_cache_refuses(demo_mirror, tmp_path, kind, capsys):
    poison, extra = POISONS[kind]
    project, cache = demo_project(tmp_path), tmp_path / "cache"
    refs = _build(project, demo_mirror, cache, tmp_path / "out", *extra)
    poison(cache)
    # the layer cache serves a layout that holds the layers' blobs: the same output root
    poisoned = _build(project, demo_mirror, cache, tmp_path / "out", *extra)
    assert poisoned != refs, "the poison did not reach the layout: the test proves nothing"
    argv = _args(project, demo_mirror, cache, "--against", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
                 *extra)
    assert main(argv[:3] + ["verify", "--release", RELEASE, "--all"] + argv[3:]) == 2
    out = capsys.readouterr()
    assert "differs from an independent build without caches" in out.out
    assert "freebsd14.2-" in out.out and "is not what its inputs build" in out.err


@pytest.mark.tools
@pytest.mark.parametrize("kind", ["layer entry", "scan entry"])     # nightly builds no squashed image
def test_nightly_refuses_to_publish_what_a_poisoned_cache_made(demo_mirror, tmp_path, kind, registry, capsys):
    project, cache = demo_project(tmp_path), tmp_path / "cache"
    argv = _args(project, demo_mirror, cache, "--out", str(tmp_path / "nightly"))
    assert main(argv[:3] + ["nightly", RELEASE, "--no-verify"] + argv[3:]) == 0     # last night: the cache filled
    POISONS[kind][0](cache)
    capsys.readouterr()
    assert main(argv[:3] + ["nightly", RELEASE, "--to", f"{registry.host}/poisoned", "--insecure"] + argv[3:]) == 2
    out = capsys.readouterr().out
    assert "nothing published" in out and "freebsd14.2-" in out
    report = json.loads((tmp_path / "nightly" / "report" / "report.json").read_text())["releases"][0]
    assert report["unlike_independent"] and not report["published"]
    assert {i["action"] for i in report["images"]} == {"not published"}


@pytest.mark.parametrize("kind", ["layers", "scans"])
def test_an_entry_forged_without_the_users_key_is_a_miss(cached, demo_mirror, tmp_path, kind):
    """Someone who can write only the cache (a CI cache restored from elsewhere) cannot seal: their entries,
    whatever they say, are misses, and the images are those of the inputs."""
    project, cache, refs = cached
    forger = b"not the user's key".ljust(32, b"!")
    for e in _entries(cache, kind):
        store = "scan" if kind == "scans" else "layer" if e.suffix == ".json" else "layer-fs"
        body = Sealed(cache / kind, user_key(), store).read(e.name, 1 << 30)
        doc = body.replace(b"/usr/bin/awk", b"/usr/bin/AWK").replace(b'"history": "', b'"history": "forged ')
        Sealed(cache / kind, forger, store).write(e.name, doc)
    if kind == "scans":
        shutil.rmtree(cache / "layers")
    assert _build(project, demo_mirror, cache, tmp_path / "out") == refs
