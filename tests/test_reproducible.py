"""Output bytes are a function of the inputs only: golden digests, host libraries swapped, make vs CLI, cores."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import zstandard

from builder.common import tarutil
from builder.common.compress import BlockCompressor, Workers
from builder.errors import BuildError
from tests import golden
from tests.buildutil import demo_project
from tests.conftest import ROOT
from tests.tools import under_ci


def _mismatch(got: dict, want: dict) -> str:
    lines = []
    for comp in sorted(set(got) | set(want)):
        for ref in sorted(set(got.get(comp, {})) | set(want.get(comp, {}))):
            a, b = got.get(comp, {}).get(ref), want.get(comp, {}).get(ref)
            if a != b:
                lines.append(f"  {comp} {ref}: built {a}, golden {b}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def golden_refs():
    return json.loads(golden.GOLDEN.read_text())["refs"]


def test_demo_family_matches_golden_digests(demo_mirror, tmp_path, golden_refs):
    got = golden.build_all(demo_mirror, tmp_path)
    assert got == golden_refs, (f"output bytes changed; if that is intended: {golden.REGENERATE}\n"
                                + _mismatch(got, golden_refs))


# The child swaps the host's sqlite3 and zlib for other builds before anything imports them:
# if any output byte came from either, the digests would move.
SWAP = """
import sys, runpy
import pysqlite3.dbapi2 as other_sqlite, zlib_ng.zlib_ng as other_zlib
sys.modules["sqlite3"] = other_sqlite
sys.modules["zlib"] = other_zlib
for name in ("gzip", "tarfile", "zipfile", "shutil"):   # imported by zlib_ng already: import again
    sys.modules.pop(name, None)
import sqlite3, zlib, gzip
assert sqlite3.sqlite_version == other_sqlite.sqlite_version and zlib is other_zlib and gzip.zlib is other_zlib
sys.stderr.write(f"swapped: sqlite {sqlite3.sqlite_version}, zlib-ng {other_zlib.ZLIBNG_VERSION}\\n")
sys.argv = ["builder"] + sys.argv[1:]
runpy.run_module("builder", run_name="__main__")
"""


def test_other_sqlite_and_zlib_give_the_golden_digests(demo_mirror, tmp_path, golden_refs):
    probe = subprocess.run([sys.executable, "-c", "import pysqlite3.dbapi2, zlib_ng.zlib_ng, sqlite3, zlib;"
                            "print(pysqlite3.dbapi2.sqlite_version, sqlite3.sqlite_version)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        msg = "pysqlite3-binary and zlib-ng (PyPI, x86-64 Linux wheels) are not installed: make venv installs them"
        (pytest.fail if under_ci() else pytest.skip)(msg)
    other, host = probe.stdout.split()
    assert other != host, "the swapped-in SQLite must be another release than the host's"
    got = golden.build_all(demo_mirror, tmp_path, prefix=[sys.executable, "-c", SWAP])
    assert "swapped: sqlite" in (tmp_path / "stderr-gzip").read_text()
    assert got == golden_refs, _mismatch(got, golden_refs)


def test_cores_do_not_change_digests(demo_mirror, tmp_path, golden_refs):
    one = golden.build_refs(demo_mirror, tmp_path, "gzip", extra=("--workers", "1", "--jobs", "1"), tag="-1")
    many = golden.build_refs(demo_mirror, tmp_path, "gzip", extra=("--workers", "7", "--jobs", "2"), tag="-7")
    assert one == many == golden_refs["gzip"]


def test_block_compression_is_independent_of_workers():
    data = b"".join(bytes([i % 251]) * (i % 977 + 1) for i in range(20000)) + os.urandom(300000)
    for codec in ("gzip", "zstd"):
        outs = []
        for count in (0, 1, 2, 5):
            buf = io.BytesIO()
            with contextlib.ExitStack() as stack:
                workers = stack.enter_context(Workers(count)) if count else None
                c = BlockCompressor(buf, codec, 6, workers, block=64 << 10)
                for i in range(0, len(data), 7001):          # writes that straddle block boundaries
                    c.write(data[i:i + 7001])
                c.finish()
                if workers:
                    assert len(workers.procs) == count   # the blocks really went to other processes
            outs.append(buf.getvalue())
        assert outs[0] == outs[1] == outs[2] == outs[3]
        if codec == "gzip":
            assert gzip.decompress(outs[0]) == data
            assert outs[0].count(golden_header := bytes.fromhex("1f8b0800000000000003")) >= len(data) // (64 << 10)
            assert golden_header
        else:
            assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(outs[0]), read_across_frames=True).read() == data


def test_a_layers_only_block_starts_no_worker():
    with Workers(2) as workers:
        buf = io.BytesIO()
        c = BlockCompressor(buf, "gzip", 6, workers)
        c.write(b"x" * 1000)
        c.finish()
        assert workers.procs == []
    assert gzip.decompress(buf.getvalue()) == b"x" * 1000


def test_a_dead_compression_worker_fails_the_layer_by_name():
    with Workers(1) as workers:
        buf = io.BytesIO()
        c = BlockCompressor(buf, "gzip", 6, workers, block=1 << 10)
        c.write(b"a" * 4096)
        c.finish()
        workers.procs[0].kill()
        workers.procs[0].wait()
        c = BlockCompressor(buf, "gzip", 6, workers, block=1 << 10)
        with pytest.raises(BuildError, match="compression worker"):
            c.write(b"b" * 8192)
            c.finish()


def test_a_block_a_worker_cannot_take_fails_instead_of_hanging():
    with Workers(1) as workers:
        with pytest.raises(BuildError, match="compression worker failed"):
            workers.submit("gzip", 300, b"x").result(timeout=60)   # no level fits the pipe's one byte


def test_empty_layer_is_valid_gzip():
    buf = io.BytesIO()
    with Workers(2) as workers:
        c = BlockCompressor(buf, "gzip", 6, workers)
        c.finish()
    assert gzip.decompress(buf.getvalue()) == b""


def test_tar_headers_are_ours():
    buf = io.BytesIO()
    long = "usr/share/" + "d" * 120 + "/file"
    with tarutil.TarWriter(buf) as t:
        t.addfile(tarutil.info("usr", "dir", mode=0o755, mtime=5))
        t.addfile(tarutil.info("usr/f", "file", size=3, mode=0o4555, mtime=7, uname="operator", gname="operator",
                               uid=2, gid=5), b"abc")
        t.addfile(tarutil.info(long, "file", size=1, mtime=7), b"z")
        t.addfile(tarutil.info("usr/caf\u00e9", "symlink", linkname="f", mtime=7))
        t.addfile(tarutil.info("usr/big", "file", size=0, uid=3_000_000, mtime=7))
    raw = buf.getvalue()
    assert len(raw) % 10240 == 0
    # the first header, field by field (POSIX ustar), read without tarfile
    h = raw[:512]
    assert h[0:4] == b"usr/" and h[156:157] == b"5" and h[257:265] == b"ustar\x0000"
    assert h[100:108] == b"0000755\0" and h[136:148] == b"00000000005\0" and h[265:269] == b"root"
    assert int(h[148:154], 8) == sum(h[:148]) + 8 * 32 + sum(h[156:])
    members = list(tarfile.open(fileobj=io.BytesIO(raw)))
    assert [m.name for m in members] == ["usr", "usr/f", long, "usr/caf\u00e9", "usr/big"]
    f = members[1]
    assert (f.mode, f.uid, f.gid, f.uname, f.gname, f.mtime, f.pax_headers) == (0o4555, 2, 5, "operator", "operator", 7, {})
    assert members[2].pax_headers == {"path": long}
    assert members[3].pax_headers == {"path": "usr/caf\u00e9"}
    assert members[4].uid == 3_000_000 and members[4].pax_headers == {"uid": "3000000"}
    # no record beyond what ustar could not hold: no atime, ctime or sub-second mtime
    assert all(set(m.pax_headers) <= {"path", "linkpath", "uid", "gid", "uname", "gname", "size", "mtime"} for m in members)


def test_make_and_the_cli_build_the_same_bytes_from_one_lock(tmp_path):
    """The Makefile must not export an epoch (or anything else) that the CLI would not use."""
    from builder.config.release import load_release
    from builder.gen.repo import GenOptions, generate
    if not shutil.which("make"):
        (pytest.fail if under_ci() else pytest.skip)("not installed: make")
    # a mirror whose catalogue time, hence the lock's epoch, is not the demo's 1731456000
    mirror = tmp_path / "mirror"
    generate(load_release(ROOT / "releases" / "14.2.yaml", ROOT), mirror, ["amd64"], GenOptions(epoch=1700000000))
    project = demo_project(tmp_path)
    for f in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / f, project / f)
    stamp = tmp_path / "stamp"       # stands for the venv: this interpreter already has what make would install
    stamp.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "MAKEFLAGS")}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run(["make", "-C", str(project), "freebsd14.2-minimal", "ARCH=amd64",
                        f"MIRROR=file://{mirror}", f"KEYS={mirror / 'keys'}", f"OUT={tmp_path / 'make-out'}",
                        f"PYTHON={sys.executable}", f"STAMP={stamp}"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lock = json.loads((project / "releases" / "14.2.lock.json").read_text())
    assert lock["source-date-epoch"] == 1700000000
    r = subprocess.run([sys.executable, "-m", "builder", "--project", str(project), "build", "freebsd14.2-minimal",
                        "--arch", "amd64", "--out", str(tmp_path / "cli-out"), "--mirror", f"file://{mirror}",
                        "--keys", str(mirror / "keys")], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "from the lock" in r.stderr

    assert golden.index_refs(tmp_path / "make-out" / "14.2") == golden.index_refs(tmp_path / "cli-out" / "14.2")


def test_an_epoch_override_is_honoured_and_reported(demo_mirror, tmp_path, golden_refs):
    env = dict(os.environ, SOURCE_DATE_EPOCH="1600000000")
    got = golden.build_refs(demo_mirror, tmp_path, "gzip", env=env, tag="-env")
    err = (tmp_path / "stderr-gzip-env").read_text()
    assert "SOURCE_DATE_EPOCH 1600000000 from the environment overrides the lock's 1731456000" in err
    assert got != golden_refs["gzip"]
    flag = golden.build_refs(demo_mirror, tmp_path, "gzip", extra=("--epoch", "1600000000"), tag="-flag")
    assert flag == got
    assert "from --epoch" in (tmp_path / "stderr-gzip-flag").read_text()
