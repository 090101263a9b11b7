"""Write a signed pkg repository (packages + catalogue) the way pkg 2.0 does.

Entry order, key order, sums and signatures follow what FreeBSD's pkg writes
(see tests/test_generator.py, which compares with the fixture made by pkg).
Everything is a function of (seed, release, arch, scale, versions): two runs
give byte-identical files.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import zstandard
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from builder.common import tarutil
from builder.common.atomic import atomic_write_bytes
from builder.config.release import Release
from builder.gen.packages import GenFile, GenPackage, base_packages, elf_stand_in, ports_packages
from builder.gen.payload import Filler
from builder.resolve import ucl

OLD_ARCH = {"amd64": "x86:64", "aarch64": "aarch64:64", "riscv64": "riscv:64", "i386": "x86:32",
            "armv7": "armv7:32:el:eabi:hardfp", "powerpc64le": "powerpc:64:el"}
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class GenOptions:
    seed: str = "freebsd-images"
    scale: float = 1.0
    epoch: int = 1731456000                  # payload mtime (pkg create with SOURCE_DATE_EPOCH)
    version: Optional[str] = None            # base package version, e.g. 14.2p1
    bumps: tuple[tuple[str, str], ...] = ()  # (package, version) overrides
    zstd_level: int = ZSTD_LEVEL


def demo_private_key():
    pem = resources.files("builder.gen").joinpath("data/demo-repo.key").read_bytes()
    return serialization.load_pem_private_key(pem, password=None)


def demo_public_pem() -> bytes:
    return demo_private_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def default_version(release: Release, epoch: int) -> str:
    if release.kind == "release":
        return f"{release.name}p1"
    import time
    return f"{release.major}.snap{time.strftime('%Y%m%d', time.gmtime(epoch))}"


def _zstd(data: bytes, level: int) -> bytes:
    # No content size in the frame header: pkg streams its archives the same way.
    return zstandard.ZstdCompressor(level=level, write_content_size=False).compress(data)


def _bulk(pkg: GenPackage, arch: str, scale: float, seed: str) -> list[GenFile]:
    total = int(pkg.bulk_kb * 1024 * scale)
    if total <= 0:
        return []
    f = Filler(f"{seed}/{arch}/{pkg.name}/bulk")
    out: list[GenFile] = []
    i = 0
    while total > 0:
        size = min(total, f.rng.randrange(8 << 10, 160 << 10))
        if not pkg.bulk_elf:
            out.append(GenFile(f"{pkg.bulk_dir}/{pkg.name[8:] or 'x'}-{i:04d}", data=f.bytes(size), mode=0o444))
        else:
            shared = i % 3 != 0
            name = f"{pkg.bulk_dir}/{pkg.name[8:] or 'x'}-{i:04d}{'.so.1' if shared else ''}"
            out.append(GenFile(name, data=elf_stand_in(arch, "lib" if shared else "exe", name, f.bytes(size),
                                                       pkg.shlibs_required),
                               mode=0o444 if shared else 0o555))
        total -= size
        i += 1
    return out


def _manifest(pkg: GenPackage, abi: str, arch: str, version: str, files: list[GenFile]) -> tuple[dict, dict, int]:
    """(+MANIFEST, +COMPACT_MANIFEST, flatsize) with pkg's key order."""
    sums: dict[str, str] = {}
    data_of = {g.path: g.data for g in files if g.kind == "file"}
    flatsize = 0
    for g in files:
        if g.kind == "file":
            flatsize += len(g.data)
            sums[g.path] = "1$" + hashlib.sha256(g.data).hexdigest()
        elif g.kind == "hardlink":
            sums[g.path] = "1$" + hashlib.sha256(data_of[g.target]).hexdigest()
            flatsize += len(data_of[g.target])
        else:
            sums[g.path] = "1$" + hashlib.sha256(g.target.encode()).hexdigest()
    compact: dict = {
        "name": pkg.name, "origin": pkg.origin, "version": version, "comment": pkg.comment,
        "maintainer": "re@FreeBSD.org", "www": "https://www.FreeBSD.org", "abi": abi,
        "arch": f"freebsd:{abi.split(':')[1]}:{OLD_ARCH[arch]}", "prefix": pkg.prefix, "flatsize": flatsize,
        "licenselogic": "single", "licenses": list(pkg.licenses),
    }
    if pkg.vital:
        compact["vital"] = True
    compact["desc"] = pkg.desc or pkg.comment
    return compact, sums, flatsize


def _finish_compact(compact: dict, pkg: GenPackage, deps: dict) -> dict:
    if deps:
        compact["deps"] = deps
    compact["categories"] = list(pkg.categories)
    if pkg.shlibs_required:
        compact["shlibs_required"] = list(pkg.shlibs_required)
    if pkg.shlibs_provided:
        compact["shlibs_provided"] = list(pkg.shlibs_provided)
    if pkg.annotations:
        compact["annotations"] = dict(pkg.annotations)
    return compact


def build_package(pkg: GenPackage, abi: str, arch: str, version: str, deps: dict,
                  opts: GenOptions) -> tuple[bytes, dict]:
    """Return (.pkg bytes, catalogue entry without repo keys)."""
    files = list(pkg.files) + _bulk(pkg, arch, opts.scale, opts.seed)
    compact, sums, flatsize = _manifest(pkg, abi, arch, version, files)
    compact = _finish_compact(compact, pkg, deps)
    manifest = dict(compact)
    manifest["files"] = sums
    if pkg.config:
        manifest["config"] = list(pkg.config)
    if pkg.directories:
        manifest["directories"] = {d: "y" for d, _ in pkg.directories}
    if pkg.scripts:
        manifest["scripts"] = dict(pkg.scripts)
    buf = io.BytesIO()
    with tarutil.TarWriter(buf) as tar:
        for name, doc in (("+COMPACT_MANIFEST", compact), ("+MANIFEST", manifest)):
            raw = json.dumps(doc, separators=(",", ":")).encode()
            tar.addfile(tarutil.info(name, "file", size=len(raw), mode=0o644, mtime=0), io.BytesIO(raw))
        for g in files:
            if g.kind == "file":
                tar.addfile(tarutil.info(g.path, "file", size=len(g.data), mode=g.mode, mtime=opts.epoch,
                                         uname=g.uname, gname=g.gname), io.BytesIO(g.data))
            elif g.kind == "symlink":
                tar.addfile(tarutil.info(g.path, "symlink", mode=0o777, mtime=opts.epoch, linkname=g.target,
                                         uname=g.uname, gname=g.gname))
            else:
                tar.addfile(tarutil.info(g.path, "hardlink", mode=g.mode, mtime=opts.epoch, linkname=g.target,
                                         uname=g.uname, gname=g.gname))
        for d, mode in pkg.directories:
            tar.addfile(tarutil.info(d, "dir", mode=mode, mtime=opts.epoch))
    return _zstd(buf.getvalue(), opts.zstd_level), compact


def _catalogue_entry(compact: dict, sum_: str, path: str, pkgsize: int) -> dict:
    """Insert the repository keys where pkg repo puts them."""
    out: dict = {}
    for k, v in compact.items():
        if k == "flatsize":
            out["sum"] = sum_
            out[k] = v
            out["path"] = path
            out["repopath"] = path
        elif k == "licenses":
            out[k] = v
            out["pkgsize"] = pkgsize
        else:
            out[k] = v
    return out


def _sign_archive(member: str, content: bytes, mode: str, level: int, mtime: int) -> bytes:
    key = demo_private_key()
    digest = hashlib.sha256(content).hexdigest().encode()
    sig = key.sign(digest, padding.PKCS1v15(), hashes.SHA256())
    buf = io.BytesIO()
    with tarutil.TarWriter(buf) as tar:
        if mode == "fingerprints":
            pub = demo_public_pem()
            tar.addfile(tarutil.info(member + ".sig", "file", size=len(sig)), io.BytesIO(sig))
            tar.addfile(tarutil.info(member + ".pub", "file", size=len(pub)), io.BytesIO(pub))
        else:
            sig = sig + b"\0"   # pkg's key-file signer appends a NUL
            tar.addfile(tarutil.info("signature", "file", size=len(sig)), io.BytesIO(sig))
        # pkg repo stamps the catalogue with the time it ran: the lock's SOURCE_DATE_EPOCH comes from it
        tar.addfile(tarutil.info(member, "file", size=len(content), mtime=mtime), io.BytesIO(content))
    return _zstd(buf.getvalue(), level)


def write_repository(out: Path, abi: str, arch: str, packages: list[GenPackage], version: str,
                     signature: str, opts: GenOptions) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    bumps = dict(opts.bumps)
    versions = {p.name: bumps.get(p.name, p.version or version) for p in packages}
    origins = {p.name: p.origin for p in packages}
    entries = []
    for pkg in packages:
        v = versions[pkg.name]
        deps = {d: {"origin": origins[d], "version": versions[d]} for d in pkg.deps}
        data, compact = build_package(pkg, abi, arch, v, deps, opts)
        filename = f"{pkg.name}-{v}.pkg"
        atomic_write_bytes(out / filename, data)
        entries.append(_catalogue_entry(compact, hashlib.sha256(data).hexdigest(), filename, len(data)))
    # pkg repo lists packages in reverse of its directory walk; keep any fixed order.
    entries.sort(key=lambda e: e["name"], reverse=True)
    data_doc = json.dumps({"groups": [], "expired_packages": [], "packages": entries},
                          separators=(",", ":")).encode()
    site = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in entries)
    atomic_write_bytes(out / "data.pkg", _sign_archive("data", data_doc, signature, opts.zstd_level, opts.epoch))
    atomic_write_bytes(out / "packagesite.pkg", _sign_archive("packagesite.yaml", site, signature, opts.zstd_level, opts.epoch))
    meta = ucl.dump([("version", 2), ("packing_format", "tzst"), ("manifests", "packagesite.yaml"),
                     ("data", "data"), ("filesite", "filesite.yaml"), ("manifests_archive", "packagesite"),
                     ("filesite_archive", "filesite")])
    atomic_write_bytes(out / "meta.conf", meta.encode())
    atomic_write_bytes(out / "meta", meta.encode())
    return entries


def _repo_dir(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def _signing(repo) -> str:
    # sign the way the release file says the real repository is signed
    return "pubkey" if repo.signature_type == "pubkey" else "fingerprints"


def generate(release: Release, out: Path, arches: Optional[list[str]] = None,
             opts: GenOptions = GenOptions()) -> dict:
    """Generate the release's base and ports repositories for each arch under out/<ABI>/<repo>."""
    out = Path(out)
    version = opts.version or default_version(release, opts.epoch)
    summary: dict = {"version": version, "repositories": []}
    keys = out / "keys"
    (keys / "trusted").mkdir(parents=True, exist_ok=True)
    (keys / "revoked").mkdir(parents=True, exist_ok=True)
    pub = demo_public_pem()
    atomic_write_bytes(keys / "repo.pub", pub)
    atomic_write_bytes(keys / "trusted" / "freebsd-images-demo",
                       f'function: "sha256"\nfingerprint: "{hashlib.sha256(pub).hexdigest()}"\n'.encode())
    base = release.repository("base")
    others = [r for r in release.repositories if r.key != "base"]
    ports = next((r for r in others if r.key == "ports"), others[0] if others else None)
    fifteen = release.major >= 15
    for arch in arches or [a.name for a in release.arches]:
        abi = release.abi(arch)
        osversion = f"{release.major}0{(int(release.name.split('.')[1]) if '.' in release.name else 5)}000"
        ports_url = ports.url if ports else "pkg+https://pkg.FreeBSD.org/${ABI}/quarterly"
        pk = base_packages(arch, opts.seed, ports_url, release.major,
                           pkg_conf=freebsd_conf(release) if fifteen else None,
                           trust=trust_files(release) if fifteen else None)
        d = out / abi / _repo_dir(base.url)
        write_repository(d, abi, arch, pk, version, _signing(base), opts)
        summary["repositories"].append(str(d))
        for r in others:
            # the ports repository has pkg; any other (FreeBSD 15's kmods) is generated empty
            d = out / abi / _repo_dir(r.url)
            write_repository(d, abi, arch, ports_packages(arch, opts.seed, osversion) if r is ports else [],
                             version, _signing(r), opts)
            summary["repositories"].append(str(d))
    return summary


def freebsd_conf(release: Release) -> bytes:
    """/etc/pkg/FreeBSD.conf as FreeBSD 15's pkg-bootstrap ships it (usr.sbin/pkg/FreeBSD.conf.*):
    the ports repositories enabled, FreeBSD-base declared but disabled, each with its trust roots."""
    order = sorted(release.repositories, key=lambda r: (r.key == "base", r.key != "ports", r.key))
    out = ["#", "# To disable a repository, instead of modifying or removing this file,",
           "# create a /usr/local/etc/pkg/repos/FreeBSD.conf file, e.g.:", "#",
           "#   mkdir -p /usr/local/etc/pkg/repos",
           f'#   echo "{order[0].name}: {{ enabled: no }}" > /usr/local/etc/pkg/repos/FreeBSD.conf', "#",
           "# Note that the FreeBSD-base repository is disabled by default.", "#", ""]
    for r in order:
        out += [f"{r.name}: {{", f'  url: "{r.url}",', '  mirror_type: "srv",', f'  signature_type: "{r.signature_type}",']
        if r.image_fingerprints:
            out.append(f'  fingerprints: "{r.image_fingerprints}",')
        out += [f"  enabled: {'no' if r.key == 'base' else 'yes'}", "}"]
    return ("\n".join(out) + "\n").encode()


def trust_files(release: Release) -> dict[str, bytes]:
    """The fingerprint files of the release's repositories, at their place in an image
    (FreeBSD 15's pkg-bootstrap ships share/keys/pkg and share/keys/pkgbase-15)."""
    out: dict[str, bytes] = {}
    for r in release.repositories:
        if r.signature_type != "fingerprints" or r.fingerprints is None:
            continue
        src = Path(r.fingerprints) / "trusted"
        if not src.is_dir():
            continue
        for f in sorted(src.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                out[f"{r.image_fingerprints}/trusted/{f.name}"] = f.read_bytes()
    return out


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def scale_for(target_mb: float) -> float:
    """A --scale whose small image is about target_mb uncompressed (measured ~2 MB at scale 1)."""
    return max(0.1, math.ceil(target_mb / 2.0))

