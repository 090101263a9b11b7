"""audit: what an image has installed, what its release's repositories have newer, and which FreeBSD
advisories cover what it has.

For a layout ref (``DIR:NAME:TAG``), a registry ref (``docker://HOST/REPO:TAG`` or ``@sha256:…``) or
a release archive (``FILE.txz``, or ``FILE.txz:NAME:TAG``), and for every platform manifest under it
(an index) or the one it names:

* installed: the packages registered in the image's own /var/db/pkg/local.sqlite, read from the
  layers as they stream by, whiteouts honoured (verify-image's reader; nothing is unpacked). Any
  FreeBSD image with a pkg database will do: ours, FreeBSD's, or one built FROM them. Our SBOM,
  when one is attached, is only compared with it (a note when they differ);
* freshness: each package's newest version in the catalogues of the image's release (the
  FreeBSD-runtime version, 14.2p1: 14.2, unless a release is given), with when that catalogue was
  built: the newer version has been out at least since then; and the image's own ``created``;
* advisories: the VuXML entries covering each package (``builder.resolve.vuxml``, pkg audit's
  rules), and the base system audited as FreeBSD-<release>_<patch> from FreeBSD-runtime, as
  FreeBSD's periodic script audits a jail. Entries for FreeBSD-kernel are about the kernel the
  container runs on, the host's: they are reported apart and are no finding of the image.

The work on what was read (``audit_packages``) is pure; reading images and catalogues is at the edges.
"""
from __future__ import annotations

import contextlib
import datetime
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterator, Mapping, Optional, Sequence

from builder.common.http import Transport
from builder.config.release import Release
from builder.errors import BuildError
from builder.oci import attest
from builder.oci.layout import INDEX_MT, Layout, check_index, descriptors, parse_document, platform_label
from builder.prove.verify_image import LayoutSource, find_referrer_document, installed_packages, open_source, read_manifest
from builder.resolve.catalogue import Catalogue
from builder.resolve.version import compare
from builder.resolve.vuxml import BASE, KERNEL, Match, VuXML, base_version, pkgbase_version

VERSION_PACKAGE = "FreeBSD-runtime"     # the userland: freebsd-version -u is in it
FAIL_ON = ("advisories", "stale")
DAY = 86400
HEADER = ("PACKAGE", "INSTALLED", "NEWEST", "ADVISORIES", "FIXED IN")


@dataclass(frozen=True)
class Advisory:
    """A VuXML entry covering an installed version."""
    vid: str
    topic: str
    references: tuple[str, ...]     # FreeBSD-SA-25:05.openssh, CVE-2025-26465
    range: str                      # the range that holds the version: "ge 14.2, lt 14.2_2"
    fixed: Optional[str]            # the first version out of it, as the package spells versions
    url: str

    @classmethod
    def of(cls, m: Match, spell: Callable[[str], str] = str) -> "Advisory":
        fixed = m.range.fixed
        return cls(m.vuln.vid, m.vuln.topic, m.vuln.references, m.range.human(),
                   spell(fixed) if fixed else None, m.vuln.url)

    def to_json(self) -> dict:
        return {"vid": self.vid, "topic": self.topic, "references": list(self.references), "range": self.range,
                "fixed": self.fixed, "url": self.url}


@dataclass(frozen=True)
class PackageAudit:
    name: str                       # the package, or "FreeBSD": the base system's userland
    installed: str
    newest: Optional[str]           # None: no repository of the release has it
    repository: Optional[str]       # the repository with the newest
    newest_since: Optional[int]     # when that repository's catalogue was built
    advisories: tuple[Advisory, ...] = ()
    audited_as: str = ""            # the base system: FreeBSD-14.2_1

    @property
    def stale(self) -> bool:
        return self.newest is not None and compare(self.installed, self.newest) < 0

    def to_json(self) -> dict:
        return {"name": self.name, "installed": self.installed, "newest": self.newest, "stale": self.stale,
                "repository": self.repository, "newest_since": _when(self.newest_since),
                "audited_as": self.audited_as or f"{self.name}-{self.installed}",
                "advisories": [a.to_json() for a in self.advisories]}


@dataclass(frozen=True)
class ReleaseCatalogues:
    """A release's catalogues for one arch, in repository priority order."""
    release: str
    arch: str
    catalogues: tuple[Catalogue, ...]


@dataclass(frozen=True)
class ImageAudit:
    ref: str
    platform: str                   # freebsd/amd64
    digest: str                     # the platform manifest
    created: Optional[str]          # the image config's
    release: str
    arch: str
    packages: tuple[PackageAudit, ...]
    kernel: tuple[Advisory, ...]    # entries for FreeBSD-kernel at the userland's version: the host's concern
    notes: tuple[str, ...]
    now: int

    def stale(self) -> list[PackageAudit]:
        return [p for p in self.packages if p.stale]

    def vulnerable(self) -> list[PackageAudit]:
        return [p for p in self.packages if p.advisories]

    def failed(self, fail_on: Collection[str] = FAIL_ON) -> bool:
        return bool(("stale" in fail_on and self.stale()) or ("advisories" in fail_on and self.vulnerable()))

    def age_days(self) -> Optional[int]:
        t = _epoch(self.created)
        return None if t is None else max(0, (self.now - t) // DAY)

    def to_json(self) -> dict:
        return {"ref": self.ref, "platform": self.platform, "digest": self.digest, "created": self.created,
                "age_days": self.age_days(), "release": self.release, "arch": self.arch,
                "stale": len(self.stale()), "vulnerable": len(self.vulnerable()),
                "advisories": len({a.vid for p in self.packages for a in p.advisories}),
                "packages": [p.to_json() for p in self.packages],
                "kernel_advisories": [a.to_json() for a in self.kernel], "notes": list(self.notes)}

    def heading(self) -> str:
        age = self.age_days()
        return (f"{self.ref} [{self.platform}] {self.digest}: release {self.release} ({self.arch}), created "
                f"{self.created or 'unknown'}" + (f" ({age} days ago)" if age is not None else ""))

    def rows(self) -> list[list[str]]:
        """The table: one row a package, one more for each further advisory."""
        out = []
        for p in self.packages:
            newest = "-" if p.newest is None else p.newest if not p.stale else \
                f"{p.newest} (out >= {max(0, (self.now - (p.newest_since or self.now)) // DAY)} days)"
            name = f"{p.name} (base system)" if p.audited_as else p.name
            first = [name, p.installed, newest]
            for i, a in enumerate(p.advisories or (None,)):
                cells = first if i == 0 else ["", "", ""]
                out.append(cells + (["-", ""] if a is None else
                                    [" ".join((a.vid[:8],) + a.references[:2]), a.fixed or "none known"]))
        return out

    def summary(self) -> str:
        n = len({a.vid for p in self.packages for a in p.advisories})
        return (f"{_count(len(self.packages), 'package', 'packages')}: {len(self.stale())} behind the release's "
                f"repositories, {len(self.vulnerable())} covered by {_count(n, 'advisory', 'advisories')}")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _when(t: Optional[int]) -> Optional[str]:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(created: Optional[str]) -> Optional[int]:
    """An RFC 3339 time (an image config's ``created``) in seconds, or None when it is none."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)", created or "")
    if m is None:
        return None
    zone = "+00:00" if m[2] == "Z" else m[2]
    return int(datetime.datetime.fromisoformat(m[1] + zone).timestamp())


# --- the audit of what was read (pure) ----------------------------------------------------

def release_of(installed: Collection[tuple[str, str]]) -> Optional[str]:
    """The release line the base system's version names: 14.2p1 -> 14.2, 15.snap20261120 -> 15. From
    FreeBSD-runtime, else from the other base packages (they share its version; static has no runtime)."""
    versions = dict(installed)
    names = [VERSION_PACKAGE] + sorted(n for n in versions if n.startswith("FreeBSD-") and n != VERSION_PACKAGE)
    for name in names:
        m = re.fullmatch(r"(\d+)\.(?:(\d+)(?:p\d+)?|snap\d+)", versions.get(name, ""))
        if m is not None:
            return f"{m[1]}.{m[2]}" if m[2] else m[1]
    return None


def _newest(name: str, catalogues: Sequence[Catalogue]) -> tuple[Optional[str], Optional[str], Optional[int]]:
    """(version, repository, catalogue built) of the newest version any of the catalogues has."""
    best: tuple[Optional[str], Optional[str], Optional[int]] = (None, None, None)
    for cat in catalogues:
        p = cat.packages.get(name)
        if p is not None and (best[0] is None or compare(p.version, best[0]) > 0):
            best = (p.version, cat.repository, cat.built or None)
    return best


def audit_packages(installed: Collection[tuple[str, str]], catalogues: Sequence[Catalogue],
                   vuxml: VuXML) -> tuple[tuple[PackageAudit, ...], tuple[Advisory, ...], tuple[str, ...]]:
    """(packages, kernel advisories, notes): each package with its newest version and the advisories
    covering it; the base system first, when FreeBSD-runtime says its version."""
    rows, notes = [], []
    versions = dict(installed)
    runtime = versions.get(VERSION_PACKAGE)
    base = base_version(runtime) if runtime else None
    kernel: tuple[Advisory, ...] = ()
    if base is not None:
        spell = pkgbase_version
        rows.append(PackageAudit(BASE, runtime, *_newest(VERSION_PACKAGE, catalogues),
                                 tuple(Advisory.of(m, spell) for m in vuxml.matches(BASE, base)),
                                 audited_as=f"{BASE}-{base}"))
        kernel = tuple(Advisory.of(m, spell) for m in vuxml.matches(KERNEL, base))
        if kernel:
            notes.append(f"{_count(len(kernel), 'advisory', 'advisories')} name{'s' if len(kernel) == 1 else ''} "
                         f"{KERNEL}-{base}: a container has no kernel of its own, it runs on its host's; "
                         f"{'it concerns' if len(kernel) == 1 else 'they concern'} hosts running that kernel, not this "
                         "image")
    elif runtime:
        notes.append(f"{VERSION_PACKAGE} {runtime} is not a release's patch level: VuXML names the base system "
                     f"by release ({BASE}-14.2_1), so the base system is not audited as a whole")
    else:
        notes.append(f"no {VERSION_PACKAGE} (no userland, no freebsd-version): the base system is not audited as "
                     f"{BASE}-<version>, its packages only by their own names")
    for name, version in sorted(installed):
        rows.append(PackageAudit(name, version, *_newest(name, catalogues),
                                 tuple(Advisory.of(m) for m in vuxml.matches(name, version))))
    return tuple(rows), kernel, tuple(notes)


# --- reading images and catalogues --------------------------------------------------------

CatalogueProvider = Callable[[str, str], ReleaseCatalogues]     # (release, OCI architecture) -> its catalogues


def release_catalogues(open_release: Callable[[str], tuple[Release, Transport]]) -> CatalogueProvider:
    """A provider that fetches each (release, arch)'s catalogues once a run, as a build reads them."""
    from builder.resolve.lock import fetch_catalogues
    seen: dict[tuple[str, str], ReleaseCatalogues] = {}

    def get(release: str, architecture: str) -> ReleaseCatalogues:
        if (release, architecture) not in seen:
            rel, transport = open_release(release)
            arch = rel.arch(architecture).name
            cats = fetch_catalogues(transport, rel, [arch])[arch]
            seen[(release, architecture)] = ReleaseCatalogues(release, arch, tuple(cats))
        return seen[(release, architecture)]
    return get


@contextlib.contextmanager
def _sources(ref: str, insecure: bool) -> Iterator[list[tuple[str, object]]]:
    """(label, source) of each image a ref names: a release archive is unpacked to a temporary layout
    (diff's reader, bounded) and may hold several refs."""
    path, _, name = ref.partition(":") if not ref.startswith("docker://") else (ref, "", "")
    whole = Path(ref)
    if not ref.startswith("docker://") and (whole.is_file() or Path(path).is_file()):
        from builder.prove.diff import open_source as open_archive
        archive = open_archive(str(whole if whole.is_file() else path))
        try:
            names = sorted(archive.layout.refs()) if whole.is_file() else [name]
            yield [(f"{archive.label}:{n}", LayoutSource(archive.layout, n)) for n in names]
        finally:
            archive.close()
    else:
        yield [(ref, open_source(ref, insecure))]


def _platforms(source, label: str) -> list[tuple[dict, str]]:
    """(descriptor, platform) of each platform manifest under the source's top document."""
    top = parse_document(source.manifest(source.top), f"{label}: {source.top}")
    if top.get("mediaType") != INDEX_MT and "manifests" not in top:
        return [({"digest": source.top}, "")]
    out = []
    for d in check_index(top, f"{label}: {source.top}")["manifests"]:
        p = d.get("platform") or {}
        if d.get("mediaType") == INDEX_MT or p.get("os", "freebsd") != "freebsd":
            continue        # a nested index, or an attestation manifest ("unknown/unknown"): no image
        out.append((d, platform_label(d, "")))
    if not out:
        raise BuildError(f"{label}: the index lists no FreeBSD platform manifest")
    return out


def _sbom_note(source, digest: str, installed: set[tuple[str, str]], label: str) -> Optional[str]:
    """Our SBOM as a cross-check of local.sqlite, never instead of it: a note when they differ."""
    refs = descriptors({"manifests": source.referrers(digest)}, "manifests", f"{label}: referrers of {digest}")
    found = find_referrer_document(source, refs, attest.SPDX_MT, attest.SPDX_MT)
    if found is None:
        return None
    listed = attest.sbom_packages(parse_document(found[1], f"{label}: SBOM of {digest}"))
    if listed == installed:
        return f"the attached SBOM lists the same {len(listed)} packages as local.sqlite"
    gone, extra = sorted(listed - installed), sorted(installed - listed)
    return (f"the attached SBOM differs from local.sqlite (audited: local.sqlite): SBOM only "
            f"{', '.join(f'{n}-{v}' for n, v in gone[:5]) or 'none'}; local.sqlite only "
            f"{', '.join(f'{n}-{v}' for n, v in extra[:5]) or 'none'}")


def _audit_platform(source, label: str, desc: dict, platform: str, vuxml: VuXML, catalogues: CatalogueProvider,
                    release: Optional[str], now: int) -> ImageAudit:
    digest = desc["digest"]
    manifest = read_manifest(source, digest)
    config = parse_document(source.blob(manifest["config"]["digest"]), f"{label}: config of {digest}")
    platform = platform or "/".join(str(x) for x in (config.get("os"), config.get("architecture"),
                                                     config.get("variant")) if x)
    where = f"{label} [{platform}]"
    installed = installed_packages(source, manifest)
    if not installed:
        raise BuildError(f"{where}: no package registered in /var/db/pkg/local.sqlite: not a FreeBSD image with "
                         "a pkg database; nothing to audit")
    release = release or release_of(installed)
    if release is None:
        raise BuildError(f"{where}: no base system package (FreeBSD-*) with a release version to tell the "
                         "image's release by; give it with --release")
    arch = str(config.get("architecture") or "")
    cats = catalogues(release, arch)
    packages, kernel, notes = audit_packages(installed, cats.catalogues, vuxml)
    sbom = _sbom_note(source, digest, installed, label)
    created = config.get("created") if isinstance(config.get("created"), str) else None
    return ImageAudit(label, platform, digest, created, release, cats.arch, packages, kernel,
                      notes + ((sbom,) if sbom else ()), now)


def audit_ref(ref: str, vuxml: VuXML, catalogues: CatalogueProvider, release: Optional[str] = None,
              insecure: bool = False, now: Optional[float] = None) -> list[ImageAudit]:
    """The audit of every platform image a ref names (an archive: of every ref in it)."""
    t = int(time.time() if now is None else now)
    with _sources(ref, insecure) as sources:
        return [_audit_platform(source, label, desc, platform, vuxml, catalogues, release, t)
                for label, source in sources for desc, platform in _platforms(source, label)]


def audit_layout(layout_dir: Path, ref: str, vuxml: VuXML, release: Release,
                 catalogues: Mapping[str, Sequence[Catalogue]], now: Optional[float] = None) -> list[ImageAudit]:
    """One ref of a layout (an index: every platform) against catalogues already fetched (arch -> catalogues,
    as ``fetch_catalogues`` returns them): what nightly calls after a build."""
    def given(name: str, architecture: str) -> ReleaseCatalogues:
        arch = release.arch(architecture).name
        if arch not in catalogues:
            raise BuildError(f"{layout_dir}:{ref}: no catalogues of {release.name} for {arch} were given")
        return ReleaseCatalogues(release.name, arch, tuple(catalogues[arch]))
    source = LayoutSource(Layout(Path(layout_dir)), ref)
    label = f"{layout_dir}:{ref}"
    t = int(time.time() if now is None else now)
    return [_audit_platform(source, label, desc, platform, vuxml, given, release.name, t)
            for desc, platform in _platforms(source, label)]
