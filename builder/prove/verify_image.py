"""verify-image: check that an image is what its attestations say, from the image's own bytes.

For a layout ref (``DIR:NAME:TAG``) or a registry ref (``docker://HOST/REPO:TAG`` or ``@sha256:…``),
and for every platform manifest under it:

* signature (``--key``, registry refs): a simple-signing signature by that key in the lookaside
  vouches for the manifest digest under the name it was pulled by; the index's too; the signed
  (DSSE) provenance verifies and wraps exactly the attached statement;
* sbom: the attached SPDX document describes this manifest and lists exactly the packages
  registered in the image's own /var/db/pkg/local.sqlite, read from the layers as they stream by
  (whiteouts honoured, nothing unpacked to disk but that one file);
* provenance: the attached statement names this manifest, and (``--lock``) the lock file's
  digest, release, arch, catalogue digests and epoch match the lock given, as do the package
  versions and checksums the SBOM lists.

Each problem is one Finding; none means the image passed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from builder.common.compress import decompressing
from builder.errors import BuildError
from builder.oci import attest
from builder.oci.layout import (DOCUMENT_LIMIT, INDEX_MT, MANIFEST_MT, Layout, check_index, check_manifest, descriptors, platform_label,
                                 parse_document)
from builder.oci.sign import DSSE_MT, SignatureError, Verifier, dsse_open, verify_manifest
from builder.resolve.lock import Lock

PKGDB = "var/db/pkg/local.sqlite"
PKGDB_LIMIT = 256 << 20     # local.sqlite is copied out of the layers only below this (ours: a few MiB)
MAX_PACKAGES = 1 << 16      # rows of its packages table read (a FreeBSD base system: ~500)


@dataclass(frozen=True)
class Finding:
    check: str          # signature | sbom | provenance | lock
    where: str          # the platform (or "index")
    ok: bool
    detail: str

    def human(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.check} [{self.where}]: {self.detail}"


class _Hashing:
    """Reads through to a stream and hashes what passed, so a streamed layer is checked against its digest."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.h = raw, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read(n)
        self.h.update(b)
        return b

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.h.hexdigest()


class LayoutSource:
    def __init__(self, layout: Layout, ref: str):
        self.layout, self.ref = layout, ref
        self.label = f"{layout.root}:{ref}"
        refs = layout.refs()
        if ref not in refs:
            raise BuildError(f"{layout.root}: no ref {ref!r} (have {', '.join(sorted(refs)) or 'none'})")
        self.top = refs[ref].digest
        self._referrers = layout.referrers()

    def manifest(self, digest: str) -> bytes:
        return self.layout.read_blob(digest)

    def blob(self, digest: str) -> bytes:
        return self.layout.read_blob(digest)

    def open_blob(self, digest: str):
        return self.layout.open_blob(digest)

    def referrers(self, digest: str) -> list[dict]:
        return [d.to_json() for d in self._referrers.get(digest, [])]


class RegistrySource:
    def __init__(self, spec: str, insecure: bool):
        from builder.oci.registry import Registry
        rest = spec[len("docker://"):]
        self.host, _, path = rest.partition("/")
        if "@" in path:
            self.repo, _, self.top_ref = path.partition("@")
            self.tag = None
        elif ":" in path.rsplit("/", 1)[-1]:
            self.repo, _, self.tag = path.rpartition(":")
            self.top_ref = self.tag
        else:
            self.repo, self.tag, self.top_ref = path, "latest", "latest"
        if not self.host or not self.repo:
            raise BuildError(f"{spec}: want docker://HOST/REPO:TAG or docker://HOST/REPO@sha256:HEX")
        self.label = spec
        self.registry = Registry(self.host, insecure=insecure)
        data = self.registry.get_manifest(self.repo, self.top_ref)
        if data is None:
            raise BuildError(f"{spec}: no such manifest in the registry")
        self.top = Layout.digest_of(data)
        if self.tag is None and self.top != self.top_ref:
            raise BuildError(f"{spec}: the registry answered with {self.top}")
        self._top_bytes = data

    def manifest(self, digest: str) -> bytes:
        data = self._top_bytes if digest == self.top else self.registry.get_manifest(self.repo, digest)
        if data is None or Layout.digest_of(data) != digest:
            raise BuildError(f"{self.label}: manifest {digest} is missing or does not match its digest")
        return data

    def blob(self, digest: str) -> bytes:
        with self.registry.open_blob(self.repo, digest) as fh:
            data = fh.read(DOCUMENT_LIMIT + 1)
        if len(data) > DOCUMENT_LIMIT:
            raise BuildError(f"{self.label}: blob {digest} is over the limit of {DOCUMENT_LIMIT} bytes; refusing")
        if Layout.digest_of(data) != digest:
            raise BuildError(f"{self.label}: blob {digest} does not match its digest")
        return data

    def open_blob(self, digest: str):
        return self.registry.open_blob(self.repo, digest)

    def referrers(self, digest: str) -> list[dict]:
        from builder.oci.registry import remote_referrers
        return remote_referrers(self.registry, self.repo, digest)[0]


def open_source(spec: str, insecure: bool = False):
    if spec.startswith("docker://"):
        return RegistrySource(spec, insecure)
    # lexists: an index.json that is a FIFO or a link is refused by Layout, naming why
    cut = next((i for i, c in enumerate(spec) if c == ":" and os.path.lexists(Path(spec[:i]) / "index.json")), None)
    if cut is None:
        raise BuildError(f"{spec}: want DIR:NAME:TAG (an OCI layout and one of its refs) or docker://HOST/REPO:TAG")
    return LayoutSource(Layout(Path(spec[:cut])), spec[cut + 1:])


def installed_packages(source, manifest: dict) -> set[tuple[str, str]]:
    """(name, version) rows of the image's local.sqlite, the layers streamed bottom to top.

    The file goes to a temporary file (never memory), its size checked against PKGDB_LIMIT first.
    """
    with tempfile.TemporaryDirectory(prefix="freebsd-images-verify.") as d:
        path = os.path.join(d, "local.sqlite")
        found = False
        for layer in manifest["layers"]:
            found = _scan_layer(source, layer["digest"], path, found)
        return _packages(path) if found else set()


def _scan_layer(source, digest: str, path: str, found: bool) -> bool:
    """Stream one layer, copying local.sqlite to path when it holds one (whiteouts honoured); whether
    the image has the file once this layer is applied."""
    with source.open_blob(digest) as raw:
        hashing = _Hashing(raw)
        stream, _ = decompressing(hashing, f"layer {digest}")
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                name = m.name.lstrip("./") if m.name.startswith("./") else m.name.lstrip("/")
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq" and PKGDB.startswith(parent + "/"):
                    found = False
                elif base.startswith(".wh."):
                    gone = f"{parent}/{base[4:]}" if parent else base[4:]
                    if PKGDB == gone or PKGDB.startswith(gone + "/"):
                        found = False
                elif name == PKGDB:
                    found = m.isfile() and _copy_pkgdb(tar, m, path, digest)
        if hashing.drain() != digest:
            raise BuildError(f"layer {digest} does not match its digest")
    return found


def _copy_pkgdb(tar: tarfile.TarFile, m: tarfile.TarInfo, path: str, digest: str) -> bool:
    if m.size > PKGDB_LIMIT:
        raise BuildError(f"layer {digest}: /{PKGDB} is {m.size} bytes, over the limit of {PKGDB_LIMIT}; refusing")
    with tar.extractfile(m) as src, open(path, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return True


def _packages(path: str) -> set[tuple[str, str]]:
    """(name, version) of the packages table, at most MAX_PACKAGES rows held."""
    import apsw
    try:
        con = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            if not list(con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='packages'")):
                return set()
            out = set()
            for name, version in con.execute("SELECT name, version FROM packages"):
                if len(out) >= MAX_PACKAGES:
                    raise BuildError(f"/{PKGDB}: over {MAX_PACKAGES} packages; refusing")
                out.add((str(name), str(version)))
            return out
        finally:
            con.close()
    except apsw.Error as exc:
        raise BuildError(f"/{PKGDB} of the image is not a readable package database: {exc}") from exc


def find_referrer_document(source, refs: list[dict], artifact_type: str, media_type: str) -> Optional[tuple[dict, bytes]]:
    """(artifact manifest, its document) of the first referrer of that type and document media type."""
    for d in refs:
        if d.get("artifactType") != artifact_type:
            continue
        man = read_manifest(source, d["digest"])
        layer = (man["layers"] or [{}])[0]
        if layer.get("mediaType") == media_type:
            return man, source.blob(layer["digest"])
    return None


def read_manifest(source, digest: str) -> dict:
    return check_manifest(parse_document(source.manifest(digest), f"{source.label}: manifest {digest}"),
                          f"{source.label}: manifest {digest}")


def _lock_checks(where: str, statement: dict, sbom_doc: dict, lock: Lock, lock_digest: str) -> list[Finding]:
    out = []
    bd = statement.get("predicate", {}).get("buildDefinition", {})
    params = bd.get("externalParameters", {})
    deps = bd.get("resolvedDependencies", [])

    def bad(detail: str) -> None:
        out.append(Finding("lock", where, False, detail))

    locks = [d for d in deps if str(d.get("name", "")).endswith(".lock.json")]
    got = locks[0].get("digest", {}).get("sha256") if locks else None
    if got != lock_digest:
        bad(f"provenance names lock sha256:{got}, the lock file is sha256:{lock_digest}")
    if params.get("release") != lock.release:
        bad(f"provenance release {params.get('release')!r}, the lock's {lock.release!r}")
    if params.get("source_date_epoch") != lock.source_date_epoch:
        bad(f"provenance epoch {params.get('source_date_epoch')}, the lock's {lock.source_date_epoch}")
    arch = params.get("arch")
    al = lock.arches.get(arch)
    if al is None:
        bad(f"provenance arch {arch!r} is not in the lock")
        return out
    cats = {d["name"].split(":", 1)[1]: d.get("digest", {}).get("sha256") for d in deps
            if str(d.get("name", "")).startswith("catalogue:")}
    want = {k: v.split(":", 1)[-1] for k, v in al.catalogues.items()}
    for k in sorted(set(cats) | set(want)):
        if cats.get(k) != want.get(k):
            bad(f"catalogue {k}: provenance sha256:{cats.get(k)}, the lock sha256:{want.get(k)}")
    flavour = params.get("flavour")
    entry = al.flavours.get(flavour)
    if entry is None:
        bad(f"provenance flavour {flavour!r} is not in the lock")
        return out
    listed = {p["name"]: p for p in sbom_doc.get("packages", []) if p.get("primaryPackagePurpose") != "CONTAINER"}
    for name in sorted(set(entry.packages) - set(listed)):
        bad(f"the lock's flavour {flavour} has {name}, the SBOM does not")
    for name in sorted(set(listed) - set(entry.packages)):
        bad(f"the SBOM lists {name}, which the lock's flavour {flavour} does not have")
    for name in sorted(set(listed) & set(entry.packages)):
        lp, sp = al.packages.get(name), listed[name]
        if lp is None:
            bad(f"{name} is not among the lock's packages")
            continue
        sums = {c.get("checksumValue") for c in sp.get("checksums", []) if c.get("algorithm") == "SHA256"}
        if sp.get("versionInfo") != lp.version:
            bad(f"{name}: SBOM version {sp.get('versionInfo')}, locked {lp.version}")
        if sums != {lp.sum}:
            bad(f"{name}: SBOM sha256 {', '.join(sorted(sums)) or 'none'}, locked {lp.sum}")
    if not out:
        out.append(Finding("lock", where, True, f"provenance and SBOM match {lock.release}'s lock "
                                                f"({len(entry.packages)} packages, {len(want)} catalogues)"))
    return out


def verify_image(spec: str, key: Optional[Path] = None, lock_path: Optional[Path] = None,
                 lookaside: Optional[Path] = None, insecure: bool = False) -> list[Finding]:
    source = open_source(spec, insecure)
    lock = lock_digest = None
    if lock_path is not None:
        from builder.resolve.lock import load_lock
        try:
            raw = Path(lock_path).read_bytes()
        except OSError as exc:
            raise BuildError(f"cannot read the lock file {lock_path}: {exc}") from exc
        lock, lock_digest = load_lock(Path(lock_path)), hashlib.sha256(raw).hexdigest()
    verifier = None
    if key is not None:
        if not isinstance(source, RegistrySource):
            raise BuildError("signatures belong to published images, not to a layout: "
                             "verify docker://HOST/REPO:TAG with --key and --lookaside")
        if lookaside is None:
            raise BuildError("--key needs --lookaside: the directory the signatures were published to")
        verifier = Verifier(Path(key))
    findings: list[Finding] = []
    try:
        what = f"{source.label}: {source.top}"
        top = parse_document(source.manifest(source.top), what)
        platforms = check_index(top, what)["manifests"] if top.get("mediaType") == INDEX_MT or "manifests" in top \
            else [{"mediaType": MANIFEST_MT, "digest": source.top}]
        if verifier is not None and "manifests" in top:
            findings += _signature("index", verifier, lookaside, source, source.top)
        for desc in platforms:
            where = platform_label(desc, "image")
            if verifier is not None:
                findings += _signature(where, verifier, lookaside, source, desc["digest"])
            findings += _check_platform(source, desc, where, verifier, lock, lock_digest)
    finally:
        if verifier is not None:
            verifier.close()
    return findings


def _signature(where: str, verifier: Verifier, lookaside: Path, source: RegistrySource, digest: str) -> list[Finding]:
    problems = verify_manifest(verifier, lookaside, source.host, source.repo, digest, source.tag)
    if problems:
        return [Finding("signature", where, False, p) for p in problems]
    return [Finding("signature", where, True, f"{digest} signed by the key as {source.host}/{source.repo}"
                    + (f":{source.tag}" if source.tag else ""))]


def _check_platform(source, desc: dict, where: str, verifier: Optional[Verifier], lock: Optional[Lock],
                    lock_digest: Optional[str]) -> list[Finding]:
    out: list[Finding] = []
    digest = desc["digest"]
    manifest = read_manifest(source, digest)
    refs = descriptors({"manifests": source.referrers(digest)}, "manifests", f"{source.label}: referrers of {digest}")
    found = find_referrer_document(source, refs, attest.SPDX_MT, attest.SPDX_MT)
    sbom_doc: dict = {}
    if found is None:
        out.append(Finding("sbom", where, False, f"no SBOM ({attest.SPDX_MT}) refers to {digest}"))
    else:
        sbom_doc = parse_document(found[1], f"{source.label}: SBOM of {digest}")
        image = [p for p in sbom_doc.get("packages", []) if p.get("primaryPackagePurpose") == "CONTAINER"]
        sums = {c.get("checksumValue") for p in image for c in p.get("checksums", [])}
        if sums != {digest.split(":", 1)[1]}:
            out.append(Finding("sbom", where, False, f"the SBOM describes {', '.join(sorted(sums)) or 'no image'}, "
                                                     f"not {digest}"))
        listed = attest.sbom_packages(sbom_doc)
        have = installed_packages(source, manifest)
        for name, version in sorted(listed - have):
            out.append(Finding("sbom", where, False, f"the SBOM lists {name} {version}, local.sqlite does not have it"))
        for name, version in sorted(have - listed):
            out.append(Finding("sbom", where, False, f"local.sqlite has {name} {version}, the SBOM does not list it"))
        if listed == have and not out:
            out.append(Finding("sbom", where, True, f"{len(have)} packages, as in /{PKGDB}"))
    prov = find_referrer_document(source, refs, attest.INTOTO_MT, attest.INTOTO_MT)
    statement: dict = {}
    if prov is None:
        out.append(Finding("provenance", where, False, f"no provenance ({attest.INTOTO_MT}) refers to {digest}"))
    else:
        statement = parse_document(prov[1], f"{source.label}: provenance of {digest}")
        subjects = {s.get("digest", {}).get("sha256") for s in statement.get("subject", [])}
        if digest.split(":", 1)[1] not in subjects:
            out.append(Finding("provenance", where, False, f"the provenance is about {', '.join(sorted(map(str, subjects)))}, "
                                                           f"not {digest}"))
        else:
            out.append(Finding("provenance", where, True, f"statement for {digest}"))
    if verifier is not None:
        signed = find_referrer_document(source, refs, attest.INTOTO_MT, DSSE_MT)
        if signed is None:
            out.append(Finding("signature", where, False, "no signed (DSSE) provenance is attached"))
        else:
            try:
                envelope = parse_document(signed[1], f"{source.label}: DSSE provenance of {digest}")
                ptype, payload = dsse_open(verifier, envelope, f"DSSE provenance of {digest}")
                if prov is not None and payload != prov[1]:
                    out.append(Finding("signature", where, False, "the signed provenance differs from the attached statement"))
                elif ptype != attest.INTOTO_MT:
                    out.append(Finding("signature", where, False, f"the DSSE payload is {ptype}, not {attest.INTOTO_MT}"))
                else:
                    out.append(Finding("signature", where, True, "DSSE provenance signed by the key"))
            except SignatureError as exc:
                out.append(Finding("signature", where, False, str(exc)))
    if lock is not None and statement and sbom_doc:
        out += _lock_checks(where, statement, sbom_doc, lock, lock_digest)
    return out
