"""Fetch and verify a repository's catalogue, and its package files.

What a repository may make us read is bounded before anything is verified
(a signature check comes after the download): meta.conf at META_LIMIT, a
catalogue archive at CATALOGUE_LIMIT compressed and CATALOGUE_LIMIT
decompressed (FreeBSD's whole ports catalogue is about 10 MB compressed,
150 MB decompressed), a package at the size its catalogue entry gives. Each
download also has a total deadline (``Transport.catalogue_deadline``,
``Transport.package_deadline``).
"""
from __future__ import annotations

import io
from pathlib import Path

from builder.config.release import Repository
from builder.errors import BuildError
from builder.common import archive
from builder.common.compress import sniff
from builder.resolve import signature
from builder.resolve.cache import Cache
from builder.resolve.catalogue import Catalogue, Meta, RemotePackage, parse_catalogue
from builder.common.http import NotFound, Transport

META_LIMIT = 1 << 20
CATALOGUE_LIMIT = 512 << 20
# A catalogue entry without pkgsize (never written by pkg) still gets a ceiling.
UNKNOWN_PACKAGE_LIMIT = 4 << 30


def catalogue_file_limit(name: str) -> int:
    """The most bytes a repository's top-level file may have (meta.conf, meta, data.pkg, ...)."""
    return META_LIMIT if name in ("meta.conf", "meta") else CATALOGUE_LIMIT


def _first(transport: Transport, base: str, names: list[str]) -> tuple[str, bytes]:
    missing = []
    for name in names:
        try:
            return name, transport.fetch_bytes(f"{base}/{name}", catalogue_file_limit(name))
        except NotFound:
            missing.append(name)
    raise BuildError(f"{base}: none of {', '.join(missing)} found")


def fetch_catalogue(transport: Transport, repo: Repository, abi: str) -> Catalogue:
    base = repo.url_for(abi).rstrip("/")
    what = f"repository {repo.key} ({base})"
    name, raw = _first(transport, base, ["meta.conf", "meta"])
    meta = Meta.parse(raw.decode("utf-8", "replace"), f"{base}/{name}")
    fmt = meta.packing_format
    candidates = [(f"{meta.data}.pkg", meta.data), (f"{meta.data}.{fmt}", meta.data),
                  (f"{meta.manifests_archive}.pkg", meta.manifests),
                  (f"{meta.manifests_archive}.{fmt}", meta.manifests)]
    for archive_name, member in candidates:
        try:
            blob = transport.fetch_bytes(f"{base}/{archive_name}", CATALOGUE_LIMIT)
        except NotFound:
            continue
        try:
            sniff(blob[:512])
        except BuildError:
            continue  # a stand-in for a symlink (e.g. data.tzst holding "data.pkg")
        wanted = {member, member + ".sig", member + ".pub", "signature"}
        members = {}
        built = 0
        for m, tar in archive.iter_tar(io.BytesIO(blob), f"{what}: {archive_name}", CATALOGUE_LIMIT):
            if m.name in wanted and m.isfile():
                members[m.name] = _read_member(tar, m, f"{what}: {archive_name}")
                if m.name == member:
                    built = int(m.mtime)
        if member not in members:
            raise BuildError(f"{what}: {archive_name} has no {member} entry")
        signature.verify(members, member, repo.signature_type, f"{what}: {archive_name}",
                         fingerprints=repo.fingerprints, pubkey=repo.pubkey)
        return parse_catalogue(member, members[member], repo.key, base, meta, built)
    raise BuildError(f"{what}: no catalogue ({', '.join(c[0] for c in candidates)})")


def _read_member(tar, m, what: str) -> bytearray:
    """A catalogue archive member, read into one buffer of its size.

    Reading it whole joins the chunks read into a second copy: for a catalogue
    of hundreds of MB, twice its size at the peak. The tar header's size is
    bounded first, so a header's lie cannot allocate more than the bound.
    """
    if m.size > CATALOGUE_LIMIT:
        raise BuildError(f"{what}: {m.name} is {m.size} bytes, over the limit of {CATALOGUE_LIMIT} bytes; refusing")
    buf = bytearray(m.size)
    n = 0
    with memoryview(buf) as view:
        f = tar.extractfile(m)
        while n < m.size:
            got = f.readinto(view[n:n + (1 << 20)])
            if not got:
                break
            n += got
    del buf[n:]
    return buf


def fetch_package(transport: Transport, cache: Cache, repo: Repository, abi: str, pkg: RemotePackage) -> Path:
    url = f"{repo.url_for(abi).rstrip('/')}/{pkg.repopath}"
    what = f"package {pkg.name}-{pkg.version} ({url})"
    # the catalogue is signed and its pkgsize is exact: a longer body is not the package
    limit = pkg.pkgsize if pkg.pkgsize > 0 else UNKNOWN_PACKAGE_LIMIT
    sized = f"package {pkg.name}-{pkg.version} ({url}, {pkg.pkgsize} bytes in the catalogue)" if pkg.pkgsize > 0 else what

    def writer(fh):
        transport.fetch_to(url, fh, label=f"{pkg.name}-{pkg.version}", limit=limit,
                           deadline=transport.package_deadline, what=sized)

    return cache.store(pkg.sum, what, writer)
