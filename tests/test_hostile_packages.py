"""Tiny signed inputs at a huge cost, or a crash: packages, catalogues, meta.conf and SBOM text.

Each class of the red team's report (items 2, 8, 9) has its hostile input made
here, small and signed like tests/test_hostile.py makes them, and its test
asserts a refusal (exit 2, or a BuildError naming the package or URL and the
field) or a result, in bounded memory (tests/bounded.py: a child under
RLIMIT_AS) and bounded time.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator, Optional

import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from builder.cli import main
from builder.errors import BuildError
from builder.gen.payload import elf_header
from builder.gen.repo import demo_private_key, demo_public_pem
from builder.install import elf
from builder.install.scan import scan_package
from builder.oci import attest
from builder.oci.layout import MANIFEST_MT, Descriptor
from builder.resolve.catalogue import MAX_ENTRY
from builder.resolve.lock import ArchLock, LockedPackage
from tests import bounded
from tests.buildutil import read_members
from tests.test_hostile import ABI, _one_line_refusal, _resign_data, _retype_manifest
from tests.test_install import entry, make_pkg
from tests.test_trust import pyspdxtools

EVIL = "FreeBSD-evil"
BASE = "base_release_2"


def _elf(needed: list[str], runpath: str = "") -> bytes:
    """A small amd64 shared object whose dynamic section names ``needed`` in order.

    Unlike builder.gen.payload.elf_image, repeats are kept: 255 DT_NEEDED entries
    may all point at one string, as the red team's files do.
    """
    strings = list(dict.fromkeys(needed + ([runpath] if runpath else [])))
    offset, dynstr = {}, bytearray(b"\0")
    for s in strings:
        offset[s] = len(dynstr)
        dynstr += s.encode() + b"\0"
    dyn = [(elf.DT_NEEDED, offset[n]) for n in needed] + ([(elf.DT_RUNPATH, offset[runpath])] if runpath else [])
    at_str = 64 + 2 * 56
    at_dyn = (at_str + len(dynstr) + 7) & ~7
    dyn += [(elf.DT_STRTAB, at_str), (elf.DT_STRSZ, len(dynstr)), (elf.DT_NULL, 0)]
    table = b"".join(struct.pack("<qQ", t, v) for t, v in dyn)
    size = at_dyn + len(table)

    def phdr(ptype: int, off: int, n: int) -> bytes:
        return struct.pack("<IIQQQQQQ", ptype, 4, off, off, off, n, n, 8)
    head = elf_header("amd64", True, 2) + phdr(elf.PT_LOAD, 0, size) + phdr(elf.PT_DYNAMIC, at_dyn, len(table))
    return (head + bytes(dynstr)).ljust(at_dyn, b"\0") + table


def _package(path: Path, files: dict[str, bytes], links: Optional[dict[str, str]] = None) -> Path:
    entries = [entry(p.lstrip("/"), data=d) for p, d in files.items()]
    entries += [entry(p.lstrip("/"), tarfile.SYMTYPE, linkname=t) for p, t in (links or {}).items()]
    return make_pkg(path, entries, flatsize=sum(map(len, files.values())), name=EVIL)


def _run_cli(*argv: str, mem: int = 512 << 20, timeout: float = 120) -> tuple[int, str, float]:
    start = time.monotonic()
    res = bounded.run("tests.bounded:cli", *argv, mem=mem, timeout=timeout)
    assert "ok" in res, res
    return res["ok"]["code"], res["ok"]["stderr"], time.monotonic() - start


def _build(m: Path, proj: Path, out: Path) -> list[str]:
    return ["--project", str(proj), "build", "--release", "14.2", "--all", "--arch", "amd64",
            "--mirror", f"file://{m}", "--keys", str(m / "keys"), "--out", str(out / "out"),
            "--cache-dir", str(out / "cache")]


def _lock(m: Path, proj: Path) -> list[str]:
    return ["--project", str(proj), "lock", "14.2", "--arch", "amd64", "--mirror", f"file://{m}",
            "--keys", str(m / "keys")]


# --- 2a: ELF dynamic strings, bounded per file and per scan, each kept once ----------------------

def test_thousands_of_files_naming_one_library_keep_one_copy(tmp_path):
    # 3000 files x 255 DT_NEEDED of one 250-byte name: 190 MB of strings when each file keeps its own
    name = "lib" + "x" * 244 + ".so.1"
    one = _elf([name] * 255)
    pkg = _package(tmp_path / "evil.pkg", {f"/usr/lib/l{i:04d}.so": one for i in range(3000)})
    assert pkg.stat().st_size < 200_000
    start = time.monotonic()
    res = bounded.run("tests.bounded:scan_elves", str(pkg), EVIL, mem=320 << 20)
    assert time.monotonic() - start < 30
    assert res.get("ok", {}).get("elf_files") == 3000, res
    assert res["ok"]["needed"] == 3000 * 255 and res["ok"]["needed_objects"] == 1


@pytest.mark.parametrize("case", ["one-file-over-its-bound", "distinct-names-over-the-scan-budget"])
def test_dynamic_strings_over_a_bound_are_a_refusal_naming_the_package(tmp_path, case):
    if case == "one-file-over-its-bound":
        # the red team's: 3000 files of 255 DT_NEEDED naming one 4 KB string, 1 MiB of names a file
        one = _elf(["lib" + "x" * 4083] * 255)
        files = {f"/usr/lib/l{i:04d}.so": one for i in range(3000)}
        want = f"/usr/lib/l0000.so: its dynamic section names {255 * 4086} bytes of strings, over the limit of " \
               f"{elf.MAX_FILE_STRINGS} bytes for one ELF file; refusing the package"
    else:
        # 15 distinct 4 KB names a file (within the file's bound), 400 files: 24 MB, over the scan's 16 MiB
        files = {f"/usr/lib/l{i:04d}.so": _elf([f"lib{i:04d}-{k:02d}" + "x" * 4000 for k in range(15)])
                 for i in range(400)}
        want = f"its ELF files name over {elf.MAX_SCAN_STRINGS} bytes of distinct dynamic strings"
    pkg = _package(tmp_path / "evil.pkg", files)
    assert pkg.stat().st_size < 1_000_000
    start = time.monotonic()
    res = bounded.run("tests.bounded:scan_elves", str(pkg), EVIL, mem=320 << 20)
    assert time.monotonic() - start < 30
    assert res.get("error", "").startswith(f"package {EVIL} (evil.pkg): /usr/lib/l"), res
    assert want in res["error"], res


# --- 2b: the closure check, linear in files and run-path entries ---------------------------------

def test_run_paths_through_a_symlink_chain_cost_the_chain_once(tmp_path):
    # /c/l1 -> l2 -> ... -> l31 -> real: each of 2000 files (each in its own directory, so that
    # $ORIGIN differs) searches 171 run-path entries through the chain for 64 libraries
    links = {f"/c/l{i}": f"l{i + 1}" for i in range(1, 31)}
    links["/c/l31"] = "real"
    libs = [f"lib{j:02d}.so.1" for j in range(63)] + ["libmissing.so.1"]
    runpath = ":".join(f"$ORIGIN/../../c/l1/x{k}" for k in range(170)) + ":$ORIGIN/../../c/l1"
    files = {f"/c/real/{n}": _elf([]) for n in libs[:-1]}
    files.update({f"/p{i:04d}/bin/tool.so": _elf(libs, runpath) for i in range(2000)})
    pkg = _package(tmp_path / "evil.pkg", files, links)
    assert pkg.stat().st_size < 200_000
    res = bounded.run("tests.bounded:closure_of", str(pkg), EVIL, timeout=90)
    assert res.get("ok", {}).get("seconds", 99) < 4, res
    refused = res["ok"]["refused"]
    assert refused.startswith("hostile image: 2000 dynamic dependencies that ld-elf.so.1 would not find")
    assert "/p0000/bin/tool.so (FreeBSD-evil) needs library libmissing.so.1: not in /p0000/bin/../../c/l1/x0:" \
        in refused and "  ... and 1960 more" in refused and len(refused) < 600_000


# --- 2c: catalogue JSON, memory proportional to entries ----------------------------------------

def _sign_stream(path: Path, member: str, chunks: Callable[[], Iterator[bytes]], size: int) -> None:
    """A catalogue archive signed with the demo key whose ``member`` is ``size`` bytes of ``chunks()``,
    written as a stream: the test never holds the text."""
    h = hashlib.sha256()
    for c in chunks():
        h.update(c)
    sig = demo_private_key().sign(h.hexdigest().encode(), padding.PKCS1v15(), hashes.SHA256())
    with open(path, "wb") as fh:
        w = zstandard.ZstdCompressor(level=1).stream_writer(fh, closefd=False)
        for name, data in ((member + ".sig", sig), (member + ".pub", demo_public_pem())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            w.write(ti.tobuf(format=tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512))
        ti = tarfile.TarInfo(member)
        ti.size, ti.mtime = size, 1731456000
        w.write(ti.tobuf(format=tarfile.PAX_FORMAT))
        for c in chunks():
            w.write(c)
        w.write(b"\0" * (-size % 512) + b"\0" * 1024)
        w.flush(zstandard.FLUSH_FRAME)


def _lists(size: int, head: bytes = b"", tail: bytes = b"") -> tuple[Callable[[], Iterator[bytes]], int]:
    """``head`` + ``[],[],...,[]`` + ``tail``, ``size`` bytes of it all."""
    block = b"[]," * (1 << 20)
    body = size - len(head) - len(tail) - 2

    def chunks() -> Iterator[bytes]:
        yield head
        left = body
        while left > 0:
            yield block[:min(left, len(block))]
            left -= len(block)
        yield b"[]" + tail
    return chunks, size


CATALOGUES = {
    # the red team's: 400 MB of [[],[],...] as the whole data file (5.5 GB to json.loads)
    "data-list": ("data.pkg", "data", *_lists(400 << 20, b"[", b"]")),
    "data-entry": ("data.pkg", "data", *_lists(64 << 20, b'{"packages":[{"name":"x","deps":[', b"]}]}")),
    "data-other-member": ("data.pkg", "data", *_lists(64 << 20, b'{"groups":[', b'],"packages":[]}')),
    "packagesite-line": ("packagesite.pkg", "packagesite.yaml", *_lists(64 << 20, b'{"name":"x","x":[', b"]}\n")),
}


@pytest.mark.parametrize("case", list(CATALOGUES))
def test_catalogue_json_is_read_entry_by_entry_in_bounded_memory(hostile_mirror, tmp_path, case):
    m, proj = hostile_mirror
    archive, member, chunks, size = CATALOGUES[case]
    repo = m / ABI / BASE
    for other in ("data.pkg", "packagesite.pkg"):
        (repo / other).unlink()
    _sign_stream(repo / archive, member, chunks, size)
    assert (repo / archive).stat().st_size < 200_000
    code, err, seconds = _run_cli(*_lock(m, proj), mem=(size + (320 << 20)))
    _one_line_refusal(code, err)
    assert seconds < 30
    where = f"{BASE}: {member}" + (":1" if member == "packagesite.yaml" else "")
    at = {"data-list": 0, "data-entry": 13, "data-other-member": 10, "packagesite-line": 0}[case]
    assert f"{where}: the JSON value at byte {at} is over the limit of {MAX_ENTRY} bytes" in err, err


# --- 2d: manifest strings and integers, checked where the manifest is read ------------------------

@pytest.mark.parametrize("field,value,why", [
    ("comment", "time zones \ud800", "holds a lone surrogate (\\ud800), which is not Unicode text"),
    ("licenses", ["BSD2CLAUSE", "\udfff"], "holds a lone surrogate (\\udfff), which is not Unicode text"),
    ("version", "14.2p1\udbff", "holds a lone surrogate (\\udbff), which is not Unicode text"),
    ("categories", ["\ud834"], "holds a lone surrogate (\\ud834), which is not Unicode text"),
    ("options", {"DOCS": "o\udc00n"}, "holds a lone surrogate (\\udc00), which is not Unicode text"),
    ("flatsize", 1 << 63, "holds the integer 9223372036854775808, outside the 64-bit range"),
    ("flatsize", -1, "is -1, a negative size"),
])
def test_manifest_text_and_numbers_that_crashed_the_build_are_refused(hostile_mirror, tmp_path, capsys,
                                                                      field, value, why):
    m, proj = hostile_mirror
    _retype_manifest(m / ABI / BASE, "FreeBSD-zoneinfo", field, value)
    code = main(_build(m, proj, tmp_path))
    err = capsys.readouterr().err
    _one_line_refusal(code, err)
    assert "package FreeBSD-zoneinfo (" in err and f"): +MANIFEST: field '{field}' {why}; refusing" in err, err


@pytest.mark.parametrize("field,value,why", [
    ("version", "14.2p1\ud800", "holds a lone surrogate (\\ud800), which is not Unicode text"),
    ("deps", {"FreeBSD-runtime": {"origin": "\udc00", "version": "1"}}, "holds a lone surrogate (\\udc00), which is not Unicode text"),
    ("pkgsize", 1 << 63, "holds the integer 9223372036854775808, outside the 64-bit range"),
    ("flatsize", -5, "is -5, a negative size"),
])
def test_catalogue_entry_text_and_numbers_are_refused(hostile_mirror, capsys, field, value, why):
    m, proj = hostile_mirror
    repo = m / ABI / BASE
    doc = json.loads(read_members(repo / "data.pkg", "data.pkg", {"data"})["data"])
    next(e for e in doc["packages"] if e["name"] == "FreeBSD-zoneinfo")[field] = value
    _resign_data(repo, json.dumps(doc).encode())
    code = main(_lock(m, proj))
    err = capsys.readouterr().err
    _one_line_refusal(code, err)
    assert f"{BASE}: data: package entry 'FreeBSD-zoneinfo': field '{field}' {why}; refusing" in err, err


# --- 8: meta.conf names plain files -------------------------------------------------------------

@pytest.mark.parametrize("key,value", [("data", "../../../fifo?"), ("data", "../../../fifo#"),
                                       ("manifests_archive", "sub/packagesite"), ("data", ".."),
                                       ("data", "%2e%2e%2ffifo"), ("packing_format", "tzst\\u0000"),
                                       ("data", "\\ud800")])
def test_meta_conf_names_no_path(hostile_mirror, tmp_path, key, value):
    m, proj = hostile_mirror
    os.mkfifo(tmp_path / "fifo")   # what ../../../fifo names from the repository: opening it never returns
    meta = m / ABI / BASE / "meta.conf"
    meta.write_text(meta.read_text().replace(f'{key} = "', f'{key} = "{value}";\n# was "', 1))
    code, err, seconds = _run_cli(*_lock(m, proj), timeout=60)
    _one_line_refusal(code, err)
    assert seconds < 20
    assert f"file://{m}/{ABI}/{BASE}/meta.conf" in err, err
    assert f"refusing {key} " in err or "bad string" in err, err


# --- 9: the SBOM: distinct licences, valid SPDX values, the signed version -------------------------

def _subject() -> attest.ImageSubject:
    return attest.ImageSubject("freebsd14.2-tiny", "14.2", "14.2p1", "amd64",
                               Descriptor(MANIFEST_MT, "sha256:" + "a" * 64, 100))


def _record(name: str, **kw) -> attest.PackageRecord:
    return attest.PackageRecord(**{"name": name, "version": "1", "origin": f"base/{name}", "sha256": "b" * 64,
                                   "download": f"https://pkg.FreeBSD.org/x/{name}-1.pkg", **kw})


def test_sbom_keeps_licences_apart_and_leaves_out_what_spdx_refuses(tmp_path):
    spoof = attest.license_refs(["Foo+Bar"])["Foo+Bar"][len("LicenseRef-FreeBSD-"):]
    packages = [_record("a", licenses=("Foo+Bar",)), _record("b", licenses=("Foo Bar",)),
                _record("c", licenses=(spoof, "PD")), _record("d", licenses=("PD",)),
                _record("e", origin="base/has space", homepage="https://exa mple.org/x y"),
                _record("f", origin="", homepage="http://127.0.0.1:8080/"),
                _record("g", download="https://pkg.FreeBSD.org/x/g 1.pkg")]
    doc = attest.sbom(_subject(), packages, 1731456000)
    declared = {p["name"]: p["licenseDeclared"] for p in doc["packages"][1:]}
    infos = {i["licenseId"]: i["name"] for i in doc["hasExtractedLicensingInfos"]}
    assert sorted(infos.values()) == sorted(["Foo+Bar", "Foo Bar", spoof, "PD"])   # one id per distinct name
    assert infos[declared["a"]] == "Foo+Bar" and infos[declared["b"]] == "Foo Bar"
    # a name's id is its own, whichever other names the image has
    assert attest.license_refs(["Foo Bar"]) == {"Foo Bar": declared["b"]}
    assert attest.license_refs(["Foo+Bar"]) == {"Foo+Bar": declared["a"]}
    assert declared["d"] == "LicenseRef-FreeBSD-PD" and declared["c"].endswith(" AND LicenseRef-FreeBSD-PD")
    pkgs = {p["name"]: p for p in doc["packages"][1:]}
    for name in ("e", "f"):
        assert "externalRefs" not in pkgs[name] and "homepage" not in pkgs[name]
        assert "left out: not a valid external reference locator" in pkgs[name]["comment"]
        assert "left out: not a valid URL" in pkgs[name]["comment"]
    assert pkgs["g"]["downloadLocation"] == "NOASSERTION"
    f = tmp_path / "sbom.spdx.json"
    f.write_text(json.dumps(doc))
    r = subprocess.run(pyspdxtools() + ["-i", str(f)], capture_output=True, text=True)
    assert r.returncode == 0 and "ERROR" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_manifest_version_other_than_the_signed_one_is_refused(hostile_mirror, tmp_path, capsys):
    # at the scan, when the caller passes the locked version ...
    pkg = _package(tmp_path / "evil.pkg", {"/usr/share/x": b"x"})
    with pytest.raises(BuildError, match=r"^package FreeBSD-evil \(evil.pkg\): its \+MANIFEST says version 1, its "
                                         r"catalogue entry \(the lock\) says 2; refusing$"):
        scan_package(pkg, EVIL, "amd64", 0, version="2")
    assert scan_package(pkg, EVIL, "amd64", 0, version="1").manifest["version"] == "1"
    # ... and, whatever the caller, before an SBOM names it
    lock = ArchLock(ABI, {}, {"x": LockedPackage("x", "base/x", "2", "base", "x-2.pkg", 1, "c" * 64)}, {})
    with pytest.raises(BuildError, match=r"^package x: its \+MANIFEST says version 1, the lock \(its signed "
                                         r"catalogue entry\) says 2; refusing$"):
        attest.package_records({"x": {"version": "1"}}, lock, SimpleNamespace(repositories=[]))
    # the whole build, from a signed catalogue whose entry says 14.2p1 of a package that says 14.2p9
    m, proj = hostile_mirror
    _retype_manifest(m / ABI / BASE, "FreeBSD-zoneinfo", "version", "14.2p9")
    code = main(_build(m, proj, tmp_path))
    err = capsys.readouterr().err
    _one_line_refusal(code, err)
    assert "package FreeBSD-zoneinfo" in err and "says version 14.2p9" in err and "says 14.2p1" in err, err
