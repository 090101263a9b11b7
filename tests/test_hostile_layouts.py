"""Hostile layouts, archives and signature folders: what CI artifacts, downloaded archives and
lookaside directories may hold. Every command that reads them refuses (exit 2, naming the file
and why) without hanging, without exhausting memory or TMPDIR, and without reading, writing or
deleting anything outside the layout it was given.

The layouts are copies of one real build, each corrupted in one way. Scenarios that would hang or
exhaust the machine when their rule is broken run in a child under RLIMIT_AS / RLIMIT_FSIZE and a
timeout (tests/bounded.py).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from builder.cli import main
from builder.oci.archive import write_image_archive
from builder.oci.layout import Layout
from builder.oci.sign import SIGNATURE_LIMIT, lookaside_dir
from tests import bounded
from tests.buildutil import demo_project
from tests.test_build import build_args
from tests.tools import require

RELEASE = "14.2"
IMAGE = f"freebsd{RELEASE}-minimal"
REF = f"{IMAGE}:{RELEASE}"
PKGDB = "var/db/pkg/local.sqlite"
COMMANDS = ("verify-image", "diff", "publish", "gc", "assemble")


@pytest.fixture(scope="module")
def built(demo_mirror, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hostile-layouts")
    assert main(build_args(demo_project(tmp), demo_mirror, tmp / "out", "--arch", "amd64")) == 0
    return tmp / "out" / RELEASE


# --- helpers -------------------------------------------------------------------------------

def copy(built: Path, tmp: Path, name: str = "hostile") -> Path:
    dst = tmp / name
    shutil.copytree(built, dst, symlinks=True)
    return dst


def entry(root: Path, ref: str) -> dict:
    """index.json's descriptor for ref, read by hand."""
    for e in json.loads((root / "index.json").read_text())["manifests"]:
        if (e.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref:
            return e
    raise AssertionError(ref)


def blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.split(":", 1)[1]


def manifest_digest(root: Path) -> str:
    return entry(root, f"{REF}-amd64")["digest"]


def top_layer(root: Path) -> str:
    return json.loads(blob(root, manifest_digest(root)).read_bytes())["layers"][-1]["digest"]


def argv(command: str, layout: Path, built: Path, tmp: Path) -> list[str]:
    """The command reading ``layout`` (diff compares it with the intact build)."""
    return {"verify-image": ["verify-image", f"{layout}:{REF}"],
            "diff": ["diff", str(built), str(layout)],
            "publish": ["publish", str(layout), "--dry-run", "--to", "127.0.0.1:9/hostile"],
            "gc": ["gc", str(layout)],
            "assemble": ["assemble", str(tmp / "assembled"), str(layout)]}[command]


def run_bounded(*args: str, timeout: float = 60, **kw) -> dict:
    """main(args) in a child under memory and file-size limits; a hang fails the test (TimeoutExpired)."""
    res = bounded.run("tests.bounded:cli", *args, timeout=timeout, **kw)
    assert "ok" in res, res                  # a MemoryError or crash in the child is a failure
    return res["ok"]


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in sorted(root.rglob("*"))}


def swap_blob(root: Path, old: str, new: Path) -> str:
    """Put the file new in as a blob instead of old, re-pointing every document (manifests, indexes,
    referrers' subjects) and index.json at it, the digests of what changed following; the new digest."""
    h = hashlib.sha256()
    with open(new, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    os.replace(new, blob(root, digest))
    changed = {old: (digest, blob(root, digest).stat().st_size)}

    def fix(doc):
        if isinstance(doc, dict):
            if isinstance(doc.get("digest"), str) and doc["digest"] in changed:
                doc["digest"], doc["size"] = changed[doc["digest"]]
            for v in doc.values():
                fix(v)
        elif isinstance(doc, list):
            for v in doc:
                fix(v)
        return doc

    lay = Layout(root)
    while True:
        more = {}
        for p in sorted(lay.blobs.iterdir()):
            data = p.read_bytes()
            if not data.startswith(b"{") or f"sha256:{p.name}" in changed:
                continue
            text = json.loads(data)
            fixed = json.dumps(fix(json.loads(data)), sort_keys=True, separators=(",", ":")).encode()
            if json.loads(fixed) != text:
                more[f"sha256:{p.name}"] = lay.put_bytes(fixed)
        if not more:
            break
        changed.update(more)
    (root / "index.json").write_text(json.dumps(fix(json.loads((root / "index.json").read_text()))))
    return digest


class Zeros(io.RawIOBase):
    """n zero bytes, never held in memory."""

    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


# --- FIFOs, devices and symlinks as blobs: refused, never a hang ------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_fifo_manifest_blob_is_refused_without_hanging(built, tmp_path, command):
    lay = copy(built, tmp_path)
    target = blob(lay, manifest_digest(lay))
    target.unlink()
    os.mkfifo(target)
    got = run_bounded(*argv(command, lay, built, tmp_path), timeout=60)
    assert got["code"] == 2, got
    assert str(target) in got["stderr"] and "FIFO" in got["stderr"], got["stderr"]


@pytest.mark.parametrize("command", ["verify-image", "diff", "assemble"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_layer_that_is_a_fifo_or_a_link_to_a_device_is_refused(built, tmp_path, command, kind):
    lay = copy(built, tmp_path)
    target = blob(lay, top_layer(lay))
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    got = run_bounded(*argv(command, lay, built, tmp_path), timeout=60)
    assert got["code"] == 2, got
    assert str(target) in got["stderr"] and ("FIFO" if kind == "fifo" else "symbolic link") in got["stderr"]


# --- index.json: regular, bounded, well formed --------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["dev-zero", "1GiB", "fifo"])
def test_hostile_index_json_is_refused_in_bounded_memory_and_time(built, tmp_path, command, kind):
    lay = copy(built, tmp_path)
    index = lay / "index.json"
    index.unlink()
    if kind == "dev-zero":
        index.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(index)
    else:
        with open(index, "wb") as fh:        # sparse: 1 GiB that takes no disk
            fh.truncate(1 << 30)
    got = run_bounded(*argv(command, lay, built, tmp_path), timeout=60)
    assert got["code"] == 2, got
    assert str(index) in got["stderr"], got["stderr"]


GARBAGE = {
    "list": [],
    "no-manifests": {"schemaVersion": 2},
    "manifests-not-a-list": {"manifests": {"a": 1}},
    "entry-not-an-object": {"manifests": [1]},
    "digest-not-a-string": {"manifests": [{"mediaType": "x", "digest": 5, "size": 1}]},
    "bad-digest": {"manifests": [{"mediaType": "x", "digest": "sha256:../../etc/passwd", "size": 1}]},
    "no-media-type": {"manifests": [{"digest": "sha256:" + "a" * 64, "size": 1}]},
    "size-a-string": {"manifests": [{"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": "1"}]},
    "annotations-a-list": {"manifests": [{"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1,
                                          "annotations": ["org.opencontainers.image.ref.name"]}]},
    "platform-of-numbers": {"manifests": [{"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1,
                                           "platform": {"os": 1}}]},
    "not-json": b"\xff{",
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_garbage_index_json_is_a_refusal_not_a_crash(built, tmp_path, capsys, command, garbage):
    lay = copy(built, tmp_path)
    doc = GARBAGE[garbage]
    if isinstance(doc, dict) and doc.get("manifests") and isinstance(doc["manifests"], list):
        # next to the real entries: the garbage must be found whatever the order of reading
        real = json.loads((lay / "index.json").read_text())["manifests"]
        doc = dict(doc, manifests=real + doc["manifests"])
    (lay / "index.json").write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    assert main(argv(command, lay, built, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{lay / 'index.json'}" in err and "refusing" in err, err


def test_garbage_inside_a_manifest_is_a_refusal(built, tmp_path, capsys):
    lay = copy(built, tmp_path)
    bad = tmp_path / "bad-manifest"
    bad.write_bytes(json.dumps({"schemaVersion": 2, "config": "nope", "layers": [7]}).encode())
    swap_blob(lay, manifest_digest(lay), bad)
    # publish reads manifests in builder/oci/registry.py, which does not check them yet
    for command in ("verify-image", "diff", "gc", "assemble"):
        assert main(argv(command, lay, built, tmp_path)) == 2, command
        err = capsys.readouterr().err
        assert "config: not an object; refusing" in err, (command, err)


# --- local.sqlite out of a layer: bounded -------------------------------------------------------

def _pkgdb_bomb_layer(path: Path, size: int) -> None:
    """A gzip layer (a few hundred KiB) whose local.sqlite is size bytes of zeros."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        m = tarfile.TarInfo(PKGDB)
        m.size = size
        tar.addfile(m, io.BufferedReader(Zeros(size), 1 << 20))


def test_huge_local_sqlite_in_a_small_layer_is_refused_in_bounded_memory(built, tmp_path):
    lay = copy(built, tmp_path)
    layer = tmp_path / "bomb.layer"
    _pkgdb_bomb_layer(layer, 600 << 20)
    assert layer.stat().st_size < 4 << 20
    swap_blob(lay, top_layer(lay), layer)
    got = run_bounded("verify-image", f"{lay}:{REF}", mem=512 << 20)
    assert got["code"] == 2, got
    assert f"/{PKGDB} is {600 << 20} bytes, over the limit" in got["stderr"], got["stderr"]
    # diff reads it back only under its content limit: a difference, in bounded memory
    got = run_bounded("diff", str(built), str(lay), mem=512 << 20)
    assert got["code"] == 1, got


# --- release archives unpacked for diff: bounded, regular members of the layout only ------------

def _rewrite_archive(good: Path, dest: Path, extra: list[tuple[tarfile.TarInfo, object]]) -> None:
    """good's members after the extra ones, xz-compressed again."""
    with lzma.open(good) as src, tarfile.open(fileobj=src, mode="r|") as tin, lzma.open(dest, "wb", preset=0) as out, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tout:
        for m, data in extra:
            tout.addfile(m, data)
        for m in tin:
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)


def _good_archive(built: Path, tmp: Path) -> Path:
    good = tmp / "good.txz"
    write_image_archive(Layout(built), manifest_digest(built), REF, 1731456000, good)
    return good


def test_archive_bomb_is_refused_before_filling_tmpdir(built, tmp_path, monkeypatch):
    good = _good_archive(built, tmp_path)
    m = tarfile.TarInfo("blobs/sha256/" + "ab" * 32)
    m.size = 512 << 20
    bomb = tmp_path / "bomb.txz"
    _rewrite_archive(good, bomb, [(m, io.BufferedReader(Zeros(m.size), 1 << 20))])
    assert bomb.stat().st_size < 4 << 20
    tmpdir = tmp_path / "TMPDIR"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    # RLIMIT_FSIZE above the limit: what stops the unpacking must be the unpacking's own limit
    got = run_bounded("diff", str(bomb), str(good), fsize=256 << 20)
    assert got["code"] == 2, got
    assert str(bomb) in got["stderr"] and "decompresses to more than" in got["stderr"], got["stderr"]
    assert list(tmpdir.iterdir()) == []


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_archive_members_other_than_regular_files_are_refused(built, tmp_path, kind):
    good = _good_archive(built, tmp_path)
    m = tarfile.TarInfo("blobs/sha256/" + "cd" * 32)
    m.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
    m.linkname = "/etc/passwd"
    bad = tmp_path / "bad.txz"
    _rewrite_archive(good, bad, [(m, None)])
    got = run_bounded("diff", str(bad), str(good))
    assert got["code"] == 2 and "is not a regular file; refusing" in got["stderr"], got


def test_archive_members_outside_the_layout_are_not_written(built, tmp_path, monkeypatch):
    good = _good_archive(built, tmp_path)
    tmpdir = tmp_path / "TMPDIR"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))     # in this process: TMPDIR was read already
    extra = []
    for name in ("../../escaped", "/tmp/escaped-abs", "manifest.json"):
        m = tarfile.TarInfo(name)
        m.size = 5
        extra.append((m, io.BytesIO(b"evil\n")))
    odd = tmp_path / "odd.txz"
    _rewrite_archive(good, odd, extra)
    assert main(["diff", str(odd), str(good)]) == 0
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-abs").exists()
    assert list(tmpdir.iterdir()) == []


# --- diff never says identical from digests alone -----------------------------------------------

@pytest.mark.parametrize("which", ["layer", "config", "sbom"])
def test_diff_refuses_blobs_whose_bytes_do_not_match_their_digest(built, tmp_path, capsys, which):
    lay = copy(built, tmp_path)
    man = json.loads(blob(lay, manifest_digest(lay)).read_bytes())
    if which == "sbom":
        referrer = next(e for e in json.loads((lay / "index.json").read_text())["manifests"]
                        if e.get("artifactType") == "application/spdx+json"
                        and json.loads(blob(lay, e["digest"]).read_bytes())["subject"]["digest"] == manifest_digest(lay))
        digest = json.loads(blob(lay, referrer["digest"]).read_bytes())["layers"][0]["digest"]
    else:
        digest = man["layers"][-1]["digest"] if which == "layer" else man["config"]["digest"]
    target = blob(lay, digest)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    assert main(["diff", str(built), str(lay)]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "does not match its digest" in err, err
    assert main(["diff", str(built), str(copy(built, tmp_path, "intact"))]) == 0


# --- gc: never outside the layout, only regular files named by digests --------------------------

@pytest.mark.parametrize("linked", ["blobs", "blobs/sha256"])
def test_gc_refuses_a_symlinked_blobs_directory_and_deletes_nothing_outside(built, tmp_path, capsys, linked):
    lay = copy(built, tmp_path)
    outside = tmp_path / "outside"
    shutil.move(lay / linked, outside)
    (lay / linked).symlink_to(outside, target_is_directory=True)
    victim = (outside / "sha256" if linked == "blobs" else outside) / ("e" * 64)
    victim.write_bytes(b"someone else's file, named like a blob\n")
    before = listing(outside)
    assert main(["gc", str(lay)]) == 2
    assert f"{linked} is a symbolic link" in capsys.readouterr().err
    assert main(["assemble", str(tmp_path / "assembled"), str(lay)]) == 2
    assert listing(outside) == before


def test_gc_deletes_only_regular_files_named_by_digests(built, tmp_path):
    lay = copy(built, tmp_path)
    blobs = lay / "blobs" / "sha256"
    outside = tmp_path / "precious"
    outside.write_bytes(b"precious\n")
    keep = {"f" * 64: lambda p: p.symlink_to(outside), "1" * 64: os.mkfifo, "2" * 64: os.mkdir,
            "notes.txt": lambda p: p.write_text("not a blob\n")}
    for name, make in keep.items():
        make(blobs / name)
    (blobs / ("3" * 64)).write_bytes(b"garbage blob\n")
    assert main(["gc", str(lay)]) == 0
    assert sorted(p.name for p in blobs.iterdir() if p.name in keep or p.name == "3" * 64) == sorted(keep)
    assert outside.read_bytes() == b"precious\n"


# --- assemble: digests checked while copying, regular files only ---------------------------------

def test_assemble_refuses_a_blob_whose_bytes_do_not_match(built, tmp_path, capsys):
    lay = copy(built, tmp_path)
    target = blob(lay, top_layer(lay))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    dest = tmp_path / "assembled"
    assert main(["assemble", str(dest), str(lay)]) == 2
    assert str(target) in capsys.readouterr().err
    assert not (dest / "blobs" / "sha256" / target.name).exists()


def test_assemble_never_follows_a_blob_symlink(built, tmp_path, monkeypatch, capsys):
    marker = "hostile-layouts-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()
    monkeypatch.setenv("FREEBSD_IMAGES_TEST_SECRET", marker)
    lay = copy(built, tmp_path)
    target = blob(lay, top_layer(lay))
    target.unlink()
    target.symlink_to("/proc/self/environ")
    dest = tmp_path / "assembled"
    assert main(["assemble", str(dest), str(lay)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert not any(marker.encode() in p.read_bytes() for p in dest.rglob("*") if p.is_file())


def test_assemble_refuses_a_destination_whose_blobs_lead_outside(built, tmp_path):
    dest = tmp_path / "assembled"
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "blobs").symlink_to(outside, target_is_directory=True)
    assert main(["assemble", str(dest), str(built)]) == 2
    assert list(outside.iterdir()) == []


# --- signatures in a lookaside: size checked before gpg, gpg's output bounded ---------------------

@pytest.fixture(scope="module")
def signed_setup(built, registry, tmp_path_factory):
    """The build published to the test registry, a public key, and a compressed-message bomb."""
    require("gpg")
    tmp = tmp_path_factory.mktemp("hostile-signatures")
    home = tmp / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    gpg = ["gpg", "--batch", "--no-tty"]
    subprocess.run(gpg + ["--passphrase", "", "--quick-gen-key", "hostile <h@example.org>", "ed25519", "sign", "never"],
                   env=env, check=True, capture_output=True)
    public = tmp / "public.asc"
    public.write_bytes(subprocess.run(gpg + ["--armor", "--export"], env=env, check=True, capture_output=True).stdout)
    # 400 MiB of zeros in a bzip2 packet: about a KiB, far under the file size limit
    bomb = tmp / "bomb.gpg"
    with subprocess.Popen(["head", "-c", str(400 << 20), "/dev/zero"], stdout=subprocess.PIPE) as zeros:
        subprocess.run(gpg + ["--store", "--compress-algo", "bzip2", "-z", "9", "-o", str(bomb)], env=env,
                       stdin=zeros.stdout, check=True, capture_output=True)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    assert bomb.stat().st_size < SIGNATURE_LIMIT
    assert main(["publish", str(built), "--to", f"{registry.host}/hostile", "--insecure", "--image", IMAGE]) == 0
    return public, bomb, entry(built, REF)["digest"]


@pytest.mark.tools
@pytest.mark.parametrize("kind", ["2MB", "bomb", "fifo", "dev-zero"])
def test_hostile_lookaside_signature_is_refused_in_bounded_memory(signed_setup, registry, tmp_path, kind):
    public, bomb, index_digest = signed_setup
    lookaside = tmp_path / "lookaside"
    sig = lookaside_dir(lookaside, f"hostile/{IMAGE}", index_digest) / "signature-1"
    sig.parent.mkdir(parents=True)
    if kind == "2MB":
        sig.write_bytes(os.urandom(2 << 20))
    elif kind == "bomb":
        shutil.copy(bomb, sig)
    elif kind == "fifo":
        os.mkfifo(sig)
    else:
        sig.symlink_to("/dev/zero")
    got = run_bounded("verify-image", f"docker://{registry.host}/hostile/{REF}", "--insecure", "--key", str(public),
                      "--lookaside", str(lookaside), timeout=120, mem=512 << 20)
    assert got["code"] == 2, got
    why = {"2MB": "over the limit", "bomb": "gpg's output is over the limit", "fifo": "FIFO",
           "dev-zero": "symbolic link"}[kind]
    assert why in got["stderr"] and "signature-1" in got["stderr"], got["stderr"]
