"""The nightly release-engineering job, per release line:

freshness (outdated) -> lock -> build every flavour and arch -> verify ->
publish only images whose index digest differs from the registry's -> report
(Markdown and JSON: images, digests, sizes, packages changed since the last
publish, reproducibility). The lock last published is kept in the state
directory so "changed since the last publish" survives between runs.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from builder.common.atomic import atomic_write_bytes
from builder.common.log import Log
from builder.install.closure import Closure
from builder.oci.layout import Layout
from builder.oci.release import BuiltImage, ReleaseBuild
from builder.oci.registry import PushStats, PushTarget, Registry, publish, sign_target, targets_in_layout
from builder.oci.sign import SigningPlan, lookaside_dir
from builder.resolve.lock import Lock, Update, fetch_catalogues, load_lock, outdated, relock, stale_catalogues, write_lock
from builder.runs.context import Context, lock_name
from builder.runs.images import ImageOptions, build_release, human_size
from builder.prove.audit import ReleaseCatalogues, audit_layout, audit_ref
from builder.resolve.vuxml import load as load_vuxml
from builder.runs.verify import VerifyRequest, against, verify


@dataclass(frozen=True)
class NightlyOptions:
    to: Optional[str]                 # HOST/NAMESPACE, None: build and verify only
    insecure: bool
    out: Path
    state_dir: Path
    report_dir: Path
    verify: bool = True
    auth: Optional[tuple[str, str]] = None   # registry user and password
    allow_downgrade: bool = False            # accept a rollback of the lock (recorded in the report)
    signing: Optional[SigningPlan] = None    # sign what is published (FREEBSD_IMAGES_SIGN_KEY)
    allow_writer_drift: bool = False         # build with other writers than the pinned ones (recorded)
    vuxml: Optional[str] = None              # audit against this vuln.xml (file or URL); None: no audit


# --- the report: what report.json holds, typed; to_json/from_json round-trip it exactly ---------------------

@dataclass(frozen=True)
class PackageChange:
    """A package whose version or checksum moved since the last publish, on these arches."""
    package: str
    old: Optional[str]                # None: a new package
    new: Optional[str]                # None: removed
    arches: tuple[str, ...]

    def to_json(self) -> dict:
        return {"package": self.package, "old": self.old, "new": self.new, "arches": list(self.arches)}

    @classmethod
    def from_json(cls, doc: dict) -> "PackageChange":
        return cls(doc["package"], doc["old"], doc["new"], tuple(doc["arches"]))


@dataclass(frozen=True)
class Referrer:
    """An artifact (SBOM, provenance) attached to a platform manifest."""
    artifact_type: str
    digest: str

    def to_json(self) -> dict:
        return {"artifactType": self.artifact_type, "digest": self.digest}

    @classmethod
    def from_json(cls, doc: dict) -> "Referrer":
        return cls(doc["artifactType"], doc["digest"])


@dataclass(frozen=True)
class PlatformReport:
    arch: str                         # FreeBSD arch
    platform: str                     # OCI architecture
    digest: str                       # the platform manifest
    layers: int
    size: int
    closure: Optional[Closure]        # the shared-library closure's counts and accepted misses
    referrers: tuple[Referrer, ...]
    signatures: Optional[str]         # the lookaside directory of this manifest's signatures, when signed

    def to_json(self) -> dict:
        return {"arch": self.arch, "platform": self.platform, "digest": self.digest, "layers": self.layers,
                "size": self.size, "closure": self.closure.to_json() if self.closure else None,
                "referrers": [r.to_json() for r in self.referrers], "signatures": self.signatures}

    @classmethod
    def from_json(cls, doc: dict) -> "PlatformReport":
        closure = Closure.from_json(doc["closure"]) if doc["closure"] is not None else None
        return cls(doc["arch"], doc["platform"], doc["digest"], doc["layers"], doc["size"], closure,
                   tuple(map(Referrer.from_json, doc["referrers"])), doc["signatures"])


@dataclass(frozen=True)
class AdvisoryReport:
    """VuXML entries (vids) of an image: what the new build still has, and how it compares with the published one."""
    open: tuple[str, ...]             # in the new build
    fixed: tuple[str, ...]            # in the published image, not in the new build
    new: tuple[str, ...]              # in the new build, not in the published image: it is held back

    def to_json(self) -> dict:
        return {"open": list(self.open), "fixed": list(self.fixed), "new": list(self.new)}

    @classmethod
    def from_json(cls, doc: Optional[dict]) -> Optional["AdvisoryReport"]:
        return None if doc is None else cls(tuple(doc["open"]), tuple(doc["fixed"]), tuple(doc["new"]))


@dataclass(frozen=True)
class ImageReport:
    image: str
    tags: tuple[str, ...]
    index: str                        # the multi-arch index built
    action: str                       # published | unchanged | not published
    previous: Optional[str]           # the index the registry had under the first tag before this run
    signatures: Optional[str]         # the lookaside directory of the index's signatures, when signed
    platforms: tuple[PlatformReport, ...]
    advisories: Optional[AdvisoryReport] = None   # None: not audited (no --vuxml)

    def to_json(self) -> dict:
        return {"image": self.image, "tags": list(self.tags), "index": self.index, "action": self.action,
                "previous": self.previous, "signatures": self.signatures,
                "platforms": [p.to_json() for p in self.platforms],
                "advisories": self.advisories.to_json() if self.advisories else None}

    @classmethod
    def from_json(cls, doc: dict) -> "ImageReport":
        return cls(doc["image"], tuple(doc["tags"]), doc["index"], doc["action"], doc["previous"], doc["signatures"],
                   tuple(map(PlatformReport.from_json, doc["platforms"])), AdvisoryReport.from_json(doc.get("advisories")))


@dataclass(frozen=True)
class ReleaseReport:
    release: str
    family: str
    source_date_epoch: int
    epoch_source: str                 # the lock | the environment | --epoch
    layout: str
    outdated: tuple[Update, ...]      # locked packages that moved in the catalogues
    downgrades_accepted: tuple[str, ...]
    stale_catalogues: tuple[str, ...]
    changed_since_last_publish: tuple[PackageChange, ...]
    reproducible: Optional[bool]      # None: not verified
    differences: tuple[str, ...]      # between the two verification builds (the first 50)
    images: tuple[ImageReport, ...]
    published: bool                   # something was pushed
    signed: bool
    push: Optional[PushStats]         # None: no registry
    writer_drift: tuple[str, ...] = ()   # writers other than the pinned ones (--allow-writer-drift)
    unlike_independent: tuple[str, ...] = ()   # how the layout to publish differs from a cache-free build

    def to_json(self) -> dict:
        return {"release": self.release, "family": self.family, "source_date_epoch": self.source_date_epoch,
                "epoch_source": self.epoch_source, "layout": self.layout,
                "outdated": [u.to_json() for u in self.outdated],
                "downgrades_accepted": list(self.downgrades_accepted), "stale_catalogues": list(self.stale_catalogues),
                "changed_since_last_publish": [c.to_json() for c in self.changed_since_last_publish],
                "reproducible": self.reproducible, "differences": list(self.differences),
                "images": [i.to_json() for i in self.images], "published": self.published, "signed": self.signed,
                "push": self.push.to_json() if self.push else None, "writer_drift": list(self.writer_drift),
                "unlike_independent": list(self.unlike_independent)}

    @classmethod
    def from_json(cls, doc: dict) -> "ReleaseReport":
        return cls(doc["release"], doc["family"], doc["source_date_epoch"], doc["epoch_source"], doc["layout"],
                   tuple(Update(u["name"], u["old"], u["new"], tuple(u["arches"])) for u in doc["outdated"]),
                   tuple(doc["downgrades_accepted"]), tuple(doc["stale_catalogues"]),
                   tuple(map(PackageChange.from_json, doc["changed_since_last_publish"])), doc["reproducible"],
                   tuple(doc["differences"]), tuple(map(ImageReport.from_json, doc["images"])), doc["published"],
                   doc["signed"], PushStats(**doc["push"]) if doc["push"] is not None else None,
                   tuple(doc.get("writer_drift", ())), tuple(doc.get("unlike_independent", ())))


@dataclass(frozen=True)
class NightlyReport:
    releases: tuple[ReleaseReport, ...]

    def to_json(self) -> dict:
        return {"releases": [r.to_json() for r in self.releases]}

    @classmethod
    def from_json(cls, doc: dict) -> "NightlyReport":
        return cls(tuple(map(ReleaseReport.from_json, doc["releases"])))


# --- the run ------------------------------------------------------------------------------------------------

def changed_packages(old: Optional[Lock], new: Lock) -> list[PackageChange]:
    out: dict[tuple, list[str]] = {}
    for arch, al in sorted(new.arches.items()):
        before = old.arches[arch].packages if old and arch in old.arches else {}
        for name, p in sorted(al.packages.items()):
            q = before.get(name)
            if q is None or (q.version, q.sum) != (p.version, p.sum):
                out.setdefault((name, q.version if q else None, p.version), []).append(arch)
        for name in sorted(set(before) - set(al.packages)):
            out.setdefault((name, before[name].version, None), []).append(arch)
    return [PackageChange(n, o, v, tuple(a)) for (n, o, v), a in out.items()]


def _relock(ctx: Context, opts: NightlyOptions, log: Log) -> tuple[Lock, list[Update], list[str], list[str], dict]:
    """The release's lock brought up to the catalogues: (lock, updates found, stale catalogues, downgrades,
    the catalogues)."""
    release = ctx.source.release
    cats = fetch_catalogues(ctx.source.transport, release, ctx.arches)
    previous = load_lock(ctx.lock_path)
    fresh = outdated(previous, cats) if previous else []
    stale = stale_catalogues(cats, release.catalogue_max_age)
    for s in stale:
        log.warn(s)
    lock, accepted = relock(release, ctx.family, cats, previous, opts.allow_downgrade, warn=log.warn)
    write_lock(ctx.lock_path, lock)
    return lock, fresh, stale, accepted, cats


def _verify(ctx: Context, opts: NightlyOptions, rb: ReleaseBuild,
            log: Log) -> tuple[Optional[bool], tuple[str, ...], tuple[str, ...]]:
    """(reproducible, the first differences between two perturbed builds, the first differences between
    the layout to publish and the first of them); (None, (), ()) without verification."""
    if not opts.verify:
        return None, (), ()
    req = VerifyRequest(ctx.project.root, ctx.name, ctx.lock_path, arches=ctx.arches, mirror=ctx.source.mirror,
                        keys=ctx.source.keys, family=ctx.family.name, allow_writer_drift=opts.allow_writer_drift)
    work = opts.out / f".verify-{ctx.name}-{ctx.family.name}"
    res = verify(req, work)
    try:
        # the first build started from empty caches: what would be published must be byte for byte its output
        unlike = against(rb.layout, list(rb.refs), res.layouts[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if res.differences:
        # the published build must be one that reproduces
        log.info(f"{ctx.name}: NOT reproducible; publishing nothing")
    if unlike:
        log.warn(f"{ctx.name}: the layout to publish differs from an independent build without caches "
                 f"(a poisoned cache?); publishing nothing")
    return not res.differences, tuple(d.human() for d in res.differences[:50]), tuple(d.human() for d in unlike[:50])


def _push(layout: Layout, registry: Registry, ns: str, repo: str, t: PushTarget, current: Optional[str],
          signing: Optional[SigningPlan]) -> str:
    """Publish one image unless the registry has it under every tag already; the report's action."""
    if current == t.index_digest and all(registry.manifest_digest(repo, tag) == t.index_digest for tag in t.tags[1:]):
        if signing:
            # signing is idempotent: an image published before a key was configured gets signed now
            sign_target(registry.host, repo, t, layout.read_json(t.index_digest), signing, registry.stats)
        return "unchanged"
    publish(layout, registry, ns, [t], log=lambda m: None, signing=signing)
    return "published"


def _image_report(t: PushTarget, built: list[BuiltImage], action: str, current: Optional[str], repo: str,
                  lookaside: Optional[Path]) -> ImageReport:
    def signatures(digest: str) -> Optional[str]:
        return str(lookaside_dir(lookaside, repo, digest)) if lookaside else None
    platforms = tuple(PlatformReport(i.arch, i.platform, i.manifest.digest, len(i.layers), i.size,
                                     Closure.from_json(i.closure) if i.closure is not None else None,
                                     tuple(Referrer(r.artifact_type, r.digest) for r in i.referrers),
                                     signatures(i.manifest.digest))
                      for i in built)
    return ImageReport(t.name, tuple(t.tags), t.index_digest, action, current, signatures(t.index_digest), platforms)


def _publish(rb: ReleaseBuild, registry: Optional[Registry], ns: Optional[str], signing: Optional[SigningPlan],
             audit: Optional[Callable[[str, Optional[str]], AdvisoryReport]] = None) -> tuple[ImageReport, ...]:
    """Each image this run built, published when a registry is given and it changed, unless it has advisories
    the published image has not (a regression is held back, and reported)."""
    layout = Layout(rb.layout)
    lookaside = signing.lookaside if registry and signing else None
    # the layout keeps earlier builds' indexes (and families share it): publish only this run's
    ours = {d.digest for d in rb.indexes.values()}
    images = []
    for t in [t for t in targets_in_layout(layout) if t.index_digest in ours]:
        repo = f"{ns}/{t.name}" if ns else t.name
        current = registry.manifest_digest(repo, t.tags[0]) if registry else None
        found = audit(f"{t.name}:{t.tags[0]}", f"{registry.host}/{repo}:{t.tags[0]}" if current else None) \
            if audit else None
        if found and found.new and current and current != t.index_digest:
            action = "held: new advisories " + ", ".join(found.new)
        else:
            action = _push(layout, registry, ns, repo, t, current, signing) if registry else "not published"
        images.append(replace(_image_report(t, [i for i in rb.images if i.name == t.name], action, current, repo,
                                            lookaside), advisories=found))
    return tuple(images)


def _auditor(ctx: Context, opts: NightlyOptions, rb: ReleaseBuild,
             cats: dict) -> Optional[Callable[[str, Optional[str]], AdvisoryReport]]:
    """audit(ref in the layout, the published image or None) -> its advisories; None without --vuxml."""
    if not opts.vuxml:
        return None
    db = load_vuxml(opts.vuxml, ctx.source.transport)
    release = ctx.target.release

    def catalogues(_: str, architecture: str) -> ReleaseCatalogues:
        arch = release.arch(architecture).name
        return ReleaseCatalogues(release.name, arch, tuple(cats[arch]))

    def vids(found: list) -> set[str]:
        return {a.vid for image in found for p in image.packages for a in p.advisories}

    def audit(ref: str, published: Optional[str]) -> AdvisoryReport:
        now = vids(audit_layout(rb.layout, ref, db, release, cats))
        before = vids(audit_ref(f"docker://{published}", db, catalogues, release.name, opts.insecure)) \
            if published else set()
        return AdvisoryReport(tuple(sorted(now)), tuple(sorted(before - now)), tuple(sorted(now - before)))
    return audit


def run_release(ctx: Context, opts: NightlyOptions, log: Log) -> ReleaseReport:
    rel = ctx.name
    lock, fresh, stale, accepted, cats = _relock(ctx, opts, log)
    published_lock_path = opts.state_dir / lock_name(rel, ctx.family.name).replace(".lock.json", ".published.lock.json")
    changes = changed_packages(load_lock(published_lock_path), lock)
    log.info(f"{rel}: {len(fresh)} updates in the catalogues, {len(changes)} package changes since the last publish")

    rb = build_release(ctx, lock, opts.out, ImageOptions(allow_writer_drift=opts.allow_writer_drift), log)
    reproducible, differences, unlike = _verify(ctx, opts, rb, log)
    registry, ns = (Registry.for_destination(opts.to, insecure=opts.insecure, auth=opts.auth)
                    if opts.to and reproducible is not False and not unlike else (None, None))
    images = _publish(rb, registry, ns, opts.signing, _auditor(ctx, opts, rb, cats))
    if registry:
        write_lock(published_lock_path, lock)
    return ReleaseReport(
        release=rel, family=ctx.family.name, source_date_epoch=rb.epoch, epoch_source=rb.epoch_source,
        layout=str(rb.layout), outdated=tuple(fresh), downgrades_accepted=tuple(accepted),
        stale_catalogues=tuple(stale), changed_since_last_publish=tuple(changes), reproducible=reproducible,
        differences=differences, images=images, published=any(i.action == "published" for i in images),
        signed=bool(registry and opts.signing), push=registry.stats if registry else None,
        writer_drift=rb.writer_drift, unlike_independent=unlike)


# --- the Markdown report ------------------------------------------------------------------------------------

_REPRODUCIBLE = {True: "reproducible", False: "**NOT reproducible**", None: "not verified"}


def _images_markdown(r: ReleaseReport) -> list[str]:
    """The table of images, then what is attached to them and the libraries accepted missing."""
    lines = ["| image | tags | arch | layers | size | ELF files | dynamic | libraries | unresolved | digest | action |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    accepted = []
    for img in r.images:
        for p in img.platforms:
            c = p.closure
            # unresolved: the misses accepted in families.yaml (any other one fails the build)
            counts = " | ".join(map(str, (c.elf_files, c.dynamic, c.libraries, len(c.accepted)) if c else ("-",) * 4))
            lines.append(f"| {img.image} | {', '.join(img.tags)} | {p.platform} | {p.layers} | "
                         f"{human_size(p.size)} | {counts} | `{p.digest}` | {img.action} |")
            accepted += [f"- {img.image} ({p.platform}): {m.elf} needs {m.soname}: {reason}"
                         for m, reason in (p.closure.accepted if p.closure else ())]
    lines.append("")
    attached = [f"- {img.image} ({p.platform}) `{p.digest}`: "
                + ", ".join(f"{ref.artifact_type} `{ref.digest}`" for ref in p.referrers)
                + (f"; signatures in `{p.signatures}`" if p.signatures else "")
                for img in r.images for p in img.platforms if p.referrers or p.signatures]
    if attached:
        lines += ["Referrers (SBOM, provenance) attached to each platform manifest"
                  + (", and signatures" if r.signed else "") + ":", ""] + attached + [""]
    if accepted:
        lines += ["Unresolved shared libraries accepted in families.yaml:", ""] + accepted + [""]
    audited = [(img.image, img.advisories) for img in r.images if img.advisories is not None]
    if audited:
        lines += ["Advisories (FreeBSD's VuXML, as `pkg audit` matches them):", ""]
        lines += [f"- {name}: " + "; ".join(f"{what} {', '.join(vids)}" for what, vids in
                                            (("fixed by this build:", a.fixed), ("still open:", a.open),
                                             ("new, so not published:", a.new)) if vids) or f"- {name}: none"
                  for name, a in audited]
        lines.append("")
    return lines


def _release_markdown(r: ReleaseReport) -> list[str]:
    lines = [f"## {r.release}" + ("" if r.family == "default" else f" ({r.family} family)"), "",
             f"SOURCE_DATE_EPOCH {r.source_date_epoch} (from {r.epoch_source}); {_REPRODUCIBLE[r.reproducible]}.", ""]
    if r.changed_since_last_publish:
        lines += ["Packages changed since the last publish:", ""]
        lines += [f"- {c.package} {c.old or '(new)'} \u2192 {c.new or '(removed)'} ({', '.join(c.arches)})"
                  for c in r.changed_since_last_publish]
        lines.append("")
    for title, items in (("Downgrades accepted with --allow-downgrade", r.downgrades_accepted),
                         ("Catalogues older than the release's catalogue-max-age", r.stale_catalogues),
                         ("Built with other writers than the pinned ones (--allow-writer-drift)", r.writer_drift)):
        if items:
            lines += [f"**{title}:**", ""] + [f"- {d}" for d in items] + [""]
    lines += _images_markdown(r)
    if r.differences:
        lines += ["Differences between the two verification builds:", "", "```"] + list(r.differences) + ["```", ""]
    if r.unlike_independent:
        lines += ["**Not published: the layout differs from an independent build without caches:**", "", "```"]
        lines += list(r.unlike_independent) + ["```", ""]
    return lines


def markdown(report: NightlyReport) -> str:
    lines = ["# FreeBSD container images: nightly report", ""]
    for r in report.releases:
        lines += _release_markdown(r)
    return "\n".join(lines)


def run(contexts: list[Context], opts: NightlyOptions, log: Log) -> NightlyReport:
    report = NightlyReport(tuple(run_release(ctx, opts, log) for ctx in contexts))
    opts.report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(opts.report_dir / "report.json",
                       (json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(opts.report_dir / "report.md", markdown(report).encode())
    return report
