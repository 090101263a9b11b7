"""What is in an image and how it was made: SPDX 2.3 SBOMs and in-toto/SLSA provenance statements,
attached to each platform manifest as OCI 1.1 artifact manifests (referrers).

Pure functions of the build's results, like the image documents themselves: every
time is the build epoch, every identifier is derived from the image digest or a
package name, JSON is written canonically. Two builds of one lock give the same
bytes, so anyone who rebuilds can compare the published SBOM and provenance by
digest. Signing is not done here (builder.oci.sign): signatures are not
deterministic and never enter the layout.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from builder import FORMAT_VERSION, __version__
from builder.config.release import Release
from builder.errors import BuildError
from builder.common.http import http_url
from builder.oci.image import TOOL, rfc3339
from builder.oci.layout import EMPTY_BLOB, EMPTY_MT, MANIFEST_MT, Descriptor, Layout, canonical
from builder.resolve.lock import ArchLock

SPDX_MT = "application/spdx+json"
INTOTO_MT = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
# URNs rather than made-up URLs: they name this tool's build template and builder, nothing to fetch.
BUILD_TYPE = "urn:freebsd-images:build-type:pkgbase-oci-image:v1"
BUILDER_ID = "urn:freebsd-images:builder"
SUPPLIER = "Organization: The FreeBSD Project"
CREATED = "org.opencontainers.image.created"
NAMESPACE_BASE = "https://www.FreeBSD.org/"

# FreeBSD ports' license names (Mk/bsd.licenses.db.mk), as pkg manifests carry them, to SPDX identifiers.
SPDX_LICENSES = {
    "AGPLv3": "AGPL-3.0-only", "AGPLv3+": "AGPL-3.0-or-later", "APACHE10": "Apache-1.0",
    "APACHE11": "Apache-1.1", "APACHE20": "Apache-2.0", "ART10": "Artistic-1.0", "ART20": "Artistic-2.0",
    "ARTPERL10": "Artistic-1.0-Perl", "BSD0CLAUSE": "0BSD", "BSD2CLAUSE": "BSD-2-Clause",
    "BSD3CLAUSE": "BSD-3-Clause", "BSD4CLAUSE": "BSD-4-Clause", "BSL": "BSL-1.0", "CC0-1.0": "CC0-1.0",
    "CDDL": "CDDL-1.0", "CPAL-1.0": "CPAL-1.0", "ClArtistic": "ClArtistic", "EPL": "EPL-1.0",
    "GPLv1": "GPL-1.0-only", "GPLv1+": "GPL-1.0-or-later", "GPLv2": "GPL-2.0-only",
    "GPLv2+": "GPL-2.0-or-later", "GPLv3": "GPL-3.0-only", "GPLv3+": "GPL-3.0-or-later",
    "ISCL": "ISC", "LGPL20": "LGPL-2.0-only", "LGPL20+": "LGPL-2.0-or-later", "LGPL21": "LGPL-2.1-only",
    "LGPL21+": "LGPL-2.1-or-later", "LGPL3": "LGPL-3.0-only", "LGPL3+": "LGPL-3.0-or-later",
    "LPPL10": "LPPL-1.0", "LPPL11": "LPPL-1.1", "LPPL12": "LPPL-1.2", "LPPL13": "LPPL-1.3a",
    "LPPL13a": "LPPL-1.3a", "LPPL13b": "LPPL-1.3b", "LPPL13c": "LPPL-1.3c", "MIT": "MIT",
    "MPL10": "MPL-1.0", "MPL11": "MPL-1.1", "MPL20": "MPL-2.0", "NCSA": "NCSA", "OFL10": "OFL-1.0",
    "OFL11": "OFL-1.1", "OpenSSL": "OpenSSL", "OSL": "OSL-3.0", "PostgreSQL": "PostgreSQL",
    "PSFL": "PSF-2.0", "RUBY": "Ruby", "UNLICENSE": "Unlicense", "WTFPL": "WTFPL", "ZLIB": "Zlib",
    "ZPL21": "ZPL-2.1",
}
# names that already are SPDX identifiers pass through (newer pkgbase manifests use them)
_SPDX_IDS = set(SPDX_LICENSES.values())
LOGIC = {"single": " AND ", "and": " AND ", "multi": " AND ", "or": " OR ", "dual": " OR "}


@dataclass(frozen=True)
class PackageRecord:
    """One installed package, as the SBOM describes it."""
    name: str
    version: str
    origin: str
    sha256: str                       # of the .pkg file, from the signed catalogue (the lock's sum)
    download: str                     # repository URL as declared + the package's path
    licenses: tuple[str, ...] = ()
    license_logic: str = "single"
    deps: tuple[str, ...] = ()
    comment: str = ""
    homepage: str = ""


@dataclass(frozen=True)
class ImageSubject:
    """The platform manifest an attestation is about."""
    name: str                         # freebsd14.2-minimal
    tag: str                          # its first (immutable) tag
    version: str                      # FreeBSD version, e.g. 14.2p1
    platform: str                     # OCI architecture
    manifest: Descriptor


def package_records(manifests: dict[str, dict], locked: ArchLock, release: Release) -> list[PackageRecord]:
    """The image's registered packages (name -> manifest) joined with what the lock says of their files.

    ``release`` must be the release as declared: its URLs, not a mirror's, name where packages come from.
    """
    repos = {r.key: r for r in release.repositories}
    out = []
    for name in sorted(manifests):
        m = manifests[name]
        lp = locked.packages[name]
        if m.get("version", lp.version) != lp.version:
            # the lock is the signed catalogue's word: an SBOM must not name a version nobody signed
            raise BuildError(f"package {name}: its +MANIFEST says version {m.get('version')}, the lock (its signed "
                             f"catalogue entry) says {lp.version}; refusing")
        repo = repos.get(lp.repository)
        base = http_url(repo.url_for(locked.abi)) if repo else ""
        out.append(PackageRecord(
            name=name, version=lp.version, origin=m.get("origin", lp.origin), sha256=lp.sum,
            download=f"{base.rstrip('/')}/{lp.path.lstrip('/')}" if base else "",
            licenses=tuple(m.get("licenses") or ()), license_logic=m.get("licenselogic") or "single",
            deps=tuple(sorted(m.get("deps") or ())), comment=m.get("comment") or "", homepage=m.get("www") or ""))
    return out


def _spdx_id(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)


def _license_ref(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9.-]", "-", name)
    if clean != name:
        # sanitising lost something: "Foo+Bar" and "Foo Bar" must stay two licences
        clean += "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return "LicenseRef-FreeBSD-" + clean


def license_refs(names: Iterable[str]) -> dict[str, str]:
    """Ports licence name -> LicenseRef id, for the names with no SPDX identifier; distinct names, distinct ids.

    A name sanitising leaves alone keeps its plain id (LicenseRef-FreeBSD-PD);
    one it changes gets a hash of itself. A name made to look like another's
    hashed id still gets an id of its own: the names are taken in sorted order
    and a taken id gets a counter.
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for n in sorted(set(names)):
        if n in SPDX_LICENSES or n in _SPDX_IDS:
            continue
        ref, k = _license_ref(n), 1
        while ref in taken:
            k += 1
            ref = f"{_license_ref(n)}-{k}"
        taken.add(ref)
        out[n] = ref
    return out


def license_expression(names: tuple[str, ...], logic: str,
                       refs: Optional[dict[str, str]] = None) -> tuple[str, dict[str, str]]:
    """(SPDX license expression, LicenseRef id -> ports name for the names that map to no SPDX id).

    ``refs`` (from ``license_refs``) are the ids of the whole document, so that
    two packages never give one id to two names; by default, these names' own.
    """
    refs = license_refs(names) if refs is None else refs
    ids, used = [], {}
    for n in names:
        if n in SPDX_LICENSES:
            ids.append(SPDX_LICENSES[n])
        elif n in _SPDX_IDS:
            ids.append(n)
        else:
            used[refs[n]] = n
            ids.append(refs[n])
    ids = list(dict.fromkeys(ids))
    if not ids:
        return "NOASSERTION", {}
    return LOGIC.get(logic, " AND ").join(ids), used


# What SPDX tools take for a URL (spdx-tools' uri_validators wants a DNS name with a
# letter TLD), in RFC 3986's characters only: no blank, no control character.
_URL = re.compile(r"(https?|ftp)://([A-Za-z0-9]+(?:[-.][A-Za-z0-9]+)*\.[A-Za-z]{2,63})(:[0-9]{1,5})?"
                  r"(/[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*)?")
# An external reference locator: one printable word (spdx-tools refuses a blank in category OTHER).
_LOCATOR = re.compile(r"[!-~]+")


def _download(url: str) -> str:
    # SPDX wants a URL with a lower-case host; pkg's file:// test mirrors have none to give
    m = _URL.fullmatch(url)
    if not m:
        return "NOASSERTION"
    return f"{m.group(1)}://{m.group(2).lower()}{m.group(3) or ''}{m.group(4) or ''}"


def sbom(subject: ImageSubject, packages: list[PackageRecord], epoch: int,
         namespace_base: str = NAMESPACE_BASE) -> dict:
    """SPDX 2.3 (JSON) of one platform manifest: the image and every package registered in it."""
    hexd = subject.manifest.digest.split(":", 1)[1]
    image_id = "SPDXRef-Image"
    ids: dict[str, str] = {}
    for p in packages:               # sorted by name: a collision after sanitising gets a stable suffix
        sid = _spdx_id("Package", p.name)
        n = 1
        while sid in ids.values():
            n += 1
            sid = f"{_spdx_id('Package', p.name)}-{n}"
        ids[p.name] = sid
    extracted: dict[str, str] = {}
    spdx_packages = [{
        "SPDXID": image_id,
        "name": subject.name,
        "versionInfo": subject.version,
        "primaryPackagePurpose": "CONTAINER",
        "supplier": SUPPLIER,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "checksums": [{"algorithm": "SHA256", "checksumValue": hexd}],
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": f"pkg:oci/{subject.name}@sha256%3A{hexd}"
                                              f"?arch={subject.platform}&tag={subject.tag}"}],
    }]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    refs = license_refs(n for p in packages for n in p.licenses)
    for p in packages:
        spdx_packages.append(_package(p, ids, refs, extracted))
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": ids[p.name]})
        relationships += [{"spdxElementId": ids[p.name], "relationshipType": "DEPENDS_ON",
                           "relatedSpdxElement": ids[d]} for d in p.deps if d in ids]
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{subject.name}@{subject.manifest.digest}",
        # unique per image without a random UUID: the manifest digest is
        "documentNamespace": f"{namespace_base.rstrip('/')}/spdx/{subject.name}/sha256-{hexd}",
        "creationInfo": {"created": rfc3339(epoch), "creators": [f"Tool: {TOOL}-{__version__}", SUPPLIER]},
        "packages": spdx_packages,
        "relationships": relationships,
    }
    if extracted:
        doc["hasExtractedLicensingInfos"] = [
            {"licenseId": ref, "name": name,
             "extractedText": f"The package manifest names the license {name!r} (a FreeBSD ports license "
                              "name), which has no SPDX License List identifier."}
            for ref, name in sorted(extracted.items())]
    return doc


def _package(p: PackageRecord, ids: dict[str, str], refs: dict[str, str], extracted: dict[str, str]) -> dict:
    """One package's SPDX entry; the LicenseRefs it uses are added to ``extracted``."""
    expr, used = license_expression(p.licenses, p.license_logic, refs)
    extracted.update(used)
    pkg: dict = {
        "SPDXID": ids[p.name],
        "name": p.name,
        "versionInfo": p.version,
        "supplier": SUPPLIER,
        "downloadLocation": _download(p.download),
        "filesAnalyzed": False,
        "checksums": [{"algorithm": "SHA256", "checksumValue": p.sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": expr,
        "copyrightText": "NOASSERTION",
    }
    notes = []
    # Manifest text an SPDX validator would refuse is left out, and the comment says so.
    if _LOCATOR.fullmatch(p.origin):
        pkg["externalRefs"] = [{"referenceCategory": "OTHER", "referenceType": "freebsd-pkg-origin",
                                "referenceLocator": p.origin,
                                "comment": "the package's origin in the FreeBSD source or ports tree"}]
    else:
        notes.append(f"origin {p.origin!r} left out: not a valid external reference locator (one printable word)")
    if p.comment:
        pkg["summary"] = p.comment
    if p.homepage and _download(p.homepage) != "NOASSERTION":
        pkg["homepage"] = _download(p.homepage)
    elif p.homepage:
        notes.append(f"homepage {p.homepage!r} left out: not a valid URL")
    absent = [d for d in p.deps if d not in ids]
    if absent:
        notes.append("declared dependencies not installed in this image: " + ", ".join(absent))
    if notes:
        pkg["comment"] = "; ".join(notes)
    return pkg


def sbom_packages(doc: dict) -> set[tuple[str, str]]:
    """(name, version) of every package an SBOM of ours lists, the image itself left out."""
    return {(p["name"], p.get("versionInfo", "")) for p in doc.get("packages", [])
            if p.get("primaryPackagePurpose") != "CONTAINER"}


def provenance(subject: ImageSubject, parameters: dict, dependencies: list[dict], epoch: int,
               commit: str, build_env: str) -> dict:
    """An in-toto Statement v1 with a SLSA Provenance v1 predicate for one platform manifest.

    ``parameters``: release, arch, flavour, compression, squash (what the build was asked for);
    ``dependencies``: resource descriptors of families.yaml, the release file, the lock file and
    every catalogue (name, uri, digest). ``commit`` is the project's git commit or "unknown".
    """
    deps = list(dependencies)
    if commit != "unknown":
        deps.insert(0, {"name": "project", "digest": {"gitCommit": commit}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"{subject.name}:{subject.tag}-{subject.platform}",
                     "digest": {"sha256": subject.manifest.digest.split(":", 1)[1]}}],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": dict(parameters, source_date_epoch=epoch),
                "internalParameters": {"project_commit": commit, "build_environment": build_env},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID,
                            "version": {TOOL: __version__, "format": str(FORMAT_VERSION)}},
                "metadata": {},
            },
        },
    }


def artifact_manifest(subject: Descriptor, artifact_type: str, layer: Descriptor,
                      annotations: dict[str, str]) -> dict:
    """An OCI 1.1 artifact manifest: empty config, one layer, the subject it refers to."""
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MT,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_MT, "digest": Layout.digest_of(EMPTY_BLOB), "size": len(EMPTY_BLOB)},
        "layers": [layer.to_json()],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
        "annotations": dict(annotations),
    }


def referrer_descriptor(manifest_bytes: bytes, manifest: dict) -> Descriptor:
    """How a referrers list names an artifact manifest: with its artifactType and annotations."""
    return Descriptor(MANIFEST_MT, Layout.digest_of(manifest_bytes), len(manifest_bytes),
                      tuple(sorted((manifest.get("annotations") or {}).items())),
                      artifact_type=manifest.get("artifactType"))


def attach(layout: Layout, subject: Descriptor, artifact_type: str, media_type: str, data: bytes,
           epoch: int, annotations: Optional[dict[str, str]] = None) -> Descriptor:
    """Write the document and its artifact manifest into the layout; the descriptor for index.json."""
    layout.put_bytes(EMPTY_BLOB)
    digest, size = layout.put_bytes(data)
    man = artifact_manifest(subject, artifact_type, Descriptor(media_type, digest, size),
                            {CREATED: rfc3339(epoch), **(annotations or {})})
    raw = canonical(man)
    layout.put_bytes(raw)
    return referrer_descriptor(raw, man)


def find_referrer(layout: Layout, descs: list[Descriptor], artifact_type: str, media_type: str) -> Optional[dict]:
    """The first referrer of that type whose document has that media type: its manifest."""
    for d in descs:
        if d.artifact_type == artifact_type:
            man = layout.read_json(d.digest)
            if man.get("layers") and man["layers"][0].get("mediaType") == media_type:
                return man
    return None
