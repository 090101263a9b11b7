"""The ELF dynamic-section reader against binutils' readelf, on real FreeBSD files.

Every ELF file in the fixture packages (the amd64 libraries are real FreeBSD
13.2 files) and in the generated mirror is read the way the build reads it,
streamed out of its package by scan_package, and compared with ``readelf -d``
and ``readelf -l``: NEEDED, SONAME, RPATH, RUNPATH and the interpreter.
"""
import os
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from builder.gen.payload import RTLD, Filler, elf_image
from builder.install import elf, scan
from builder.install.pkgfile import PackageReader
from tests.conftest import PKGREPO

FIXTURE_PACKAGES = sorted(p for p in PKGREPO.rglob("*.pkg") if p.name not in ("data.pkg", "packagesite.pkg"))
ARCH_OF = {"amd64": "amd64", "aarch64": "aarch64"}


def need_readelf() -> str:
    path = shutil.which("readelf")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("readelf is required in CI: install the Debian package binutils")
        pytest.skip("readelf not found: install the Debian package binutils")
    return path


def readelf(path: Path) -> dict:
    tool = need_readelf()
    dyn = subprocess.run([tool, "-d", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    seg = subprocess.run([tool, "-l", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    out = {"needed": [], "soname": None, "rpath": [], "runpath": [], "interp": None}
    for line in dyn.splitlines():
        m = re.search(r"\((NEEDED|SONAME|RPATH|RUNPATH)\)\s+[^:]*: \[(.*)\]$", line)
        if m:
            key = m.group(1).lower()
            if key == "soname":
                out["soname"] = m.group(2)
            else:
                out[key].append(m.group(2))
    m = re.search(r"\[Requesting program interpreter: (.*)\]", seg)
    if m:
        out["interp"] = m.group(1)
    return out


def ours(info: elf.ElfInfo) -> dict:
    return {"needed": list(info.needed), "soname": info.soname, "rpath": list(info.rpath),
            "runpath": list(info.runpath), "interp": info.interp}


def extract_elves(pkgs: list[Path], dest: Path) -> dict[tuple[Path, str], Path]:
    """Every ELF file of the packages, written out with our own package reader."""
    out = {}
    for pkg in pkgs:
        with open(pkg, "rb") as fh:
            for entry, stream in PackageReader(fh, str(pkg)).entries():
                if entry.kind != "file":
                    continue
                data = stream.read()
                if elf.is_elf(data):
                    target = dest / pkg.parent.parent.name.replace(":", "_") / pkg.parent.name / pkg.name / entry.path.lstrip("/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    out[(pkg, entry.path)] = target
    return out


def arch_of(pkg: Path) -> str:
    return pkg.parent.parent.name.split(":")[2]


def compare_scanned_with_readelf(pkgs: list[Path], tmp_path: Path) -> int:
    files = extract_elves(pkgs, tmp_path)
    assert files
    compared = 0
    for pkg in pkgs:
        scanned = scan.scan_package(pkg, pkg.name.rsplit("-", 1)[0], arch_of(pkg), 1731456000)
        for node in scanned.nodes:
            if (pkg, node.path) not in files or node.kind != "file":
                continue
            assert node.elf is not None and node.elf.problem is None, (pkg.name, node.path, node.elf)
            assert ours(node.elf) == readelf(files[(pkg, node.path)]), (pkg.name, node.path)
            compared += 1
    assert compared == len(files)
    return compared


def test_scan_reads_what_readelf_reads_in_every_fixture_elf(tmp_path):
    need_readelf()
    n = compare_scanned_with_readelf(FIXTURE_PACKAGES, tmp_path)
    # 170 ELF files: amd64 libc, libthr, libcrypto, libssl, ... real; the rest stand-ins
    assert n >= 170


def test_real_libraries_are_read_as_freebsd_built_them(tmp_path):
    clibs = PKGREPO / "FreeBSD:14:amd64/base_release_2/FreeBSD-openssl-lib-14.2p1.pkg"
    nodes = {n.path: n for n in scan.scan_package(clibs, "FreeBSD-openssl-lib", "amd64", 0).nodes}
    ssl = nodes["/usr/lib/libssl.so.111"].elf
    assert ssl.soname == "libssl.so.111" and ssl.needed == ("libcrypto.so.111", "libc.so.7")
    assert ssl.shared_object and ssl.elf_class == 64 and ssl.endian == "little" and ssl.machine == 62


def test_second_pass_when_strings_streamed_past(tmp_path, monkeypatch):
    """With a prefix too small to hold .dynstr, the scan reads those files again, and gets the same answers."""
    need_readelf()
    monkeypatch.setattr(elf, "PREFIX", 512)
    passes = []
    real = scan._read_again

    def counting(*a, **kw):
        passes.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(scan, "_read_again", counting)
    pkgs = [p for p in FIXTURE_PACKAGES if "FreeBSD:14:amd64/base_release_2" in str(p)
            and p.name.startswith(("FreeBSD-clibs-14", "FreeBSD-openssl-lib-14", "FreeBSD-runtime-14"))]
    assert len(pkgs) == 3
    compare_scanned_with_readelf(pkgs, tmp_path)
    assert sorted(p.name for p in passes) == sorted(p.name for p in pkgs)


def test_memory_stays_bounded_on_a_large_file():
    """A 24 MiB library with .dynamic at its end: the reader keeps the prefix and a few small regions."""
    f = Filler("big")
    body = f.bytes(1 << 20) * 24
    data = elf_image("amd64", True, body, needed=("libc.so.7",), soname="libbig.so.1")
    reader = elf.ElfReader(len(data))
    peak = 0
    for i in range(0, len(data), 1 << 16):
        reader.feed(data[i:i + (1 << 16)])
        peak = max(peak, len(reader.head) + sum(len(b) for b in reader.captured.values()))
    info = reader.finish()
    assert info.soname == "libbig.so.1" and info.needed == ("libc.so.7",)
    assert peak <= elf.PREFIX + (64 << 10)
    # with the prefix exhausted before .dynstr is known, a second pass captures only small regions
    first = elf.ElfReader(len(data), prefix=0)
    for i in range(0, len(data), 1 << 16):
        first.feed(data[i:i + (1 << 16)])
    assert first.finish() is None
    assert sum(n for _, n in first.regions) < 64 << 10
    again = elf.ElfReader(len(data), first.regions, prefix=0)
    for i in range(0, len(data), 1 << 16):
        again.feed(data[i:i + (1 << 16)])
    assert again.finish() == info


@pytest.mark.parametrize("arch", ["amd64", "i386", "aarch64", "armv7"])
@pytest.mark.parametrize("order", ["<", ">"])
def test_both_classes_and_byte_orders_match_readelf(tmp_path, arch, order):
    need_readelf()
    f = Filler(f"{arch}{order}")
    cases = {
        "exe": dict(shared=False, needed=("libc.so.7", "libfoo.so.1"), interp=RTLD, rpath="/opt/old",
                    runpath="$ORIGIN/../lib:/usr/local/lib"),
        "lib": dict(shared=True, needed=("libc.so.7",), soname="libfoo.so.1", rpath="${ORIGIN}"),
        "bare": dict(shared=True),
    }
    for name, kw in cases.items():
        shared = kw.pop("shared")
        data = elf_image(arch, shared, f.bytes(5000), order=order, **kw)
        path = tmp_path / name
        path.write_bytes(data)
        for prefix, chunk in ((None, 1 << 16), (0, 7), (100, 1000)):
            info = elf.parse(data, prefix=prefix, chunk=chunk)
            assert info.problem is None and info.endian == ("little" if order == "<" else "big")
            assert info.elf_class == (32 if arch in ("i386", "armv7") else 64)
            assert ours(info) == readelf(path), (name, prefix, chunk)


def test_runpath_wins_over_rpath_and_last_entry_counts():
    data = elf_image("amd64", False, bytes(4000), needed=("libx.so.1",), interp=RTLD, rpath="/a:/b",
                     runpath="$ORIGIN/lib")
    info = elf.parse(data)
    assert info.search_path() == ["$ORIGIN/lib"]
    info = elf.parse(elf_image("amd64", False, bytes(4000), needed=("libx.so.1",), interp=RTLD, rpath="/a::/b"))
    assert info.search_path() == ["/a", "/b"]


def _patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def test_malformed_files_give_a_problem_not_an_exception():
    good = elf_image("amd64", True, Filler("m").bytes(3000), needed=("libc.so.7",), soname="libm.so.1")
    phoff = 64
    # e_phnum huge, PN_XNUM, tiny e_phentsize
    assert "exceed" in elf.parse(_patched(good, 56, "<H", 4000)).problem
    assert "PN_XNUM" in elf.parse(_patched(good, 56, "<H", 0xFFFF)).problem
    assert "too small" in elf.parse(_patched(good, 54, "<H", 8)).problem
    # program header table beyond the end of the file
    assert "outside the file" in elf.parse(_patched(good, 32, "<Q", 1 << 40)).problem
    # PT_DYNAMIC offset (second program header of a library: LOAD, DYNAMIC, GNU_STACK) past EOF
    assert "outside the file" in elf.parse(_patched(good, phoff + 56 + 8, "<Q", len(good) + 8)).problem
    # DT_STRTAB not in any PT_LOAD
    info = elf.parse(good)
    dyn_off = struct.unpack_from("<Q", good, phoff + 56 + 8)[0]
    entries = [struct.unpack_from("<qQ", good, dyn_off + 16 * i) for i in range(5)]
    strtab_at = [i for i, (t, _) in enumerate(entries) if t == elf.DT_STRTAB][0]
    assert "not in any loaded segment" in elf.parse(_patched(good, dyn_off + 16 * strtab_at + 8, "<Q", 1 << 50)).problem
    # a DT_NEEDED offset past DT_STRSZ
    assert "beyond the string table" in elf.parse(_patched(good, dyn_off + 8, "<Q", 10_000)).problem
    # unterminated string: the whole string table overwritten with non-NUL bytes
    strtab = entries[strtab_at][1]
    strsz = [v for t, v in entries if t == elf.DT_STRSZ][0]
    assert "NUL-terminated" in elf.parse(good[:strtab] + b"x" * strsz + good[strtab + strsz:]).problem
    # truncated file, unknown class
    assert elf.parse(good[:100]).problem
    assert "class" in elf.parse(good[:4] + b"\x07" + good[5:]).problem
    assert info.problem is None


def test_random_corruption_never_crashes():
    rng = random.Random(7)
    seeds = [elf_image(a, s, Filler(a).bytes(2000), needed=("libc.so.7",), soname="libq.so.1" if s else None,
                       interp=None if s else RTLD, order=o)
             for a in ("amd64", "armv7") for s in (True, False) for o in "<>"]
    real = PKGREPO / "FreeBSD:14:amd64/base_release_2/FreeBSD-runtime-14.2p1.pkg"
    with open(real, "rb") as fh:
        for entry, stream in PackageReader(fh, "runtime").entries():
            if entry.path == "/lib/libutil.so.9":
                seeds.append(stream.read())
    for _ in range(1500):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(0, min(len(data), 600)) if rng.random() < 0.7 else rng.randrange(len(data))
            data[at] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[:rng.randrange(4, len(data))]
        data[:4] = b"\x7fELF"
        for prefix, chunk in ((None, 1 << 16), (64, 97)):
            info = elf.parse(bytes(data), prefix=prefix, chunk=chunk)
            assert isinstance(info, elf.ElfInfo)
