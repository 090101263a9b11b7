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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from builder.common.atomic import atomic_write_bytes
from builder.runs.context import Context, lock_name
from builder.runs.images import build_release, human_size
from builder.resolve.lock import Lock, fetch_catalogues, load_lock, outdated, relock, stale_catalogues, write_lock
from builder.oci.layout import Layout
from builder.oci.registry import Registry, parse_destination, publish, sign_target, targets_in_layout
from builder.oci.sign import SigningPlan, lookaside_dir
from builder.prove.verify import VerifyRequest, verify


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


def changed_packages(old: Optional[Lock], new: Lock) -> list[dict]:
    out: dict[tuple, list[str]] = {}
    for arch, al in sorted(new.arches.items()):
        before = old.arches[arch].packages if old and arch in old.arches else {}
        for name, p in sorted(al.packages.items()):
            q = before.get(name)
            if q is None or (q.version, q.sum) != (p.version, p.sum):
                out.setdefault((name, q.version if q else None, p.version), []).append(arch)
        for name in sorted(set(before) - set(al.packages)):
            out.setdefault((name, before[name].version, None), []).append(arch)
    return [{"package": n, "old": o, "new": v, "arches": a} for (n, o, v), a in out.items()]


def _closure_counts(closure: Optional[dict]) -> Optional[dict]:
    if closure is None:
        return None
    keep = ("elf_files", "dynamic", "libraries", "needed", "unresolved")
    return {k: closure[k] for k in keep} | {"accepted": closure["accepted"]}


def run_release(ctx: Context, opts: NightlyOptions, log) -> dict:
    rel = ctx.release.name
    cats = fetch_catalogues(ctx.transport, ctx.release, ctx.arches)
    previous = load_lock(ctx.lock_path)
    fresh = [u.to_json() for u in outdated(previous, cats)] if previous else []
    stale = stale_catalogues(cats, ctx.release.catalogue_max_age)
    for s in stale:
        log(f"warning: {s}")
    lock, accepted = relock(ctx.release, ctx.family, cats, previous, opts.allow_downgrade,
                            warn=lambda m: log(f"warning: {m}"))
    write_lock(ctx.lock_path, lock)
    published_lock_path = opts.state_dir / lock_name(rel, ctx.family.name).replace(".lock.json", ".published.lock.json")
    published = load_lock(published_lock_path)
    changes = changed_packages(published, lock)
    log(f"{rel}: {len(fresh)} updates in the catalogues, {len(changes)} package changes since the last publish")

    rb = build_release(ctx, lock, opts.out, log=log, warn=lambda m: log(f"warning: {m}"))
    reproducible = None
    differences: list[str] = []
    if opts.verify:
        req = VerifyRequest(ctx.project.root, rel, ctx.lock_path, arches=tuple(ctx.arches), mirror=ctx.mirror,
                            keys=ctx.keys, family=ctx.family.name)
        work = opts.out / f".verify-{rel}-{ctx.family.name}"
        res = verify(req, work)
        shutil.rmtree(work, ignore_errors=True)
        reproducible = not res.differences
        differences = [d.human() for d in res.differences[:50]]
        # the published build must be one that reproduces
        if res.differences:
            log(f"{rel}: NOT reproducible; publishing nothing")

    layout = Layout(rb.layout)
    images = []
    pushed_any = False
    registry = None
    host = ns = None
    if opts.to and reproducible is not False:
        host, ns = parse_destination(opts.to)
        registry = Registry(host, insecure=opts.insecure, auth=opts.auth)
    ours = {i.name for i in rb.images}   # families share the layout: publish only what this run built
    for t in [t for t in targets_in_layout(layout) if t.name in ours]:
        repo = f"{ns}/{t.name}" if ns else t.name
        current = registry.manifest_digest(repo, t.tags[0]) if registry else None
        action = "not published"
        if registry:
            if current == t.index_digest and all(registry.manifest_digest(repo, tag) == t.index_digest
                                                 for tag in t.tags[1:]):
                action = "unchanged"
                if opts.signing:
                    # signing is idempotent: an image published before a key was configured gets signed now
                    sign_target(registry.host, repo, t, layout.read_json(t.index_digest), opts.signing, registry.stats)
            else:
                publish(layout, registry, ns, [t], log=lambda m: None, signing=opts.signing)
                action = "published"
                pushed_any = True
        built = [i for i in rb.images if i.name == t.name]

        def signatures(digest: str) -> Optional[str]:
            if not (registry and opts.signing):
                return None
            return str(lookaside_dir(opts.signing.lookaside, repo, digest))
        images.append({"image": t.name, "tags": list(t.tags), "index": t.index_digest, "action": action,
                       "previous": current, "signatures": signatures(t.index_digest),
                       "platforms": [{"arch": i.arch, "platform": i.platform, "digest": i.manifest.digest,
                                      "layers": len(i.layers), "size": i.size, "closure": _closure_counts(i.closure),
                                      "referrers": [{"artifactType": r.artifact_type, "digest": r.digest}
                                                    for r in i.referrers],
                                      "signatures": signatures(i.manifest.digest)}
                                     for i in built]})
    if registry:
        write_lock(published_lock_path, lock)
    stats = registry.stats if registry else None
    return {"release": rel, "family": ctx.family.name, "source_date_epoch": rb.epoch, "epoch_source": rb.epoch_source, "layout": str(rb.layout), "outdated": fresh, "downgrades_accepted": accepted, "stale_catalogues": stale,
            "changed_since_last_publish": changes, "reproducible": reproducible, "differences": differences,
            "images": images, "published": pushed_any, "signed": bool(registry and opts.signing),
            "push": stats.to_json() if stats else None}


def markdown(report: dict) -> str:
    lines = ["# FreeBSD container images: nightly report", ""]
    for r in report["releases"]:
        rep = {True: "reproducible", False: "**NOT reproducible**", None: "not verified"}[r["reproducible"]]
        fam = r.get("family", "default")
        lines += [f"## {r['release']}" + ("" if fam == "default" else f" ({fam} family)"), "", f"SOURCE_DATE_EPOCH {r['source_date_epoch']} (from {r.get('epoch_source', 'the lock')}); {rep}.", ""]
        if r["changed_since_last_publish"]:
            lines += ["Packages changed since the last publish:", ""]
            lines += [f"- {c['package']} {c['old'] or '(new)'} \u2192 {c['new'] or '(removed)'} ({', '.join(c['arches'])})"
                      for c in r["changed_since_last_publish"]]
            lines.append("")
        for title, key in (("Downgrades accepted with --allow-downgrade", "downgrades_accepted"),
                           ("Catalogues older than the release's catalogue-max-age", "stale_catalogues")):
            if r.get(key):
                lines += [f"**{title}:**", ""] + [f"- {d}" for d in r[key]] + [""]
        lines += ["| image | tags | arch | layers | size | ELF files | dynamic | libraries | unresolved | digest | action |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        accepted = []
        for img in r["images"]:
            for p in img["platforms"]:
                c = p.get("closure") or {}
                counts = " | ".join(str(c.get(k, "-")) for k in ("elf_files", "dynamic", "libraries", "unresolved"))
                lines.append(f"| {img['image']} | {', '.join(img['tags'])} | {p['platform']} | {p['layers']} | "
                             f"{human_size(p['size'])} | {counts} | `{p['digest']}` | {img['action']} |")
                accepted += [f"- {img['image']} ({p['platform']}): {a['elf']} needs {a['soname']}: {a['reason']}"
                             for a in c.get("accepted", [])]
        lines.append("")
        attached = [f"- {img['image']} ({p['platform']}) `{p['digest']}`: "
                    + ", ".join(f"{r['artifactType']} `{r['digest']}`" for r in p.get("referrers") or [])
                    + (f"; signatures in `{p['signatures']}`" if p.get("signatures") else "")
                    for img in r["images"] for p in img["platforms"] if p.get("referrers") or p.get("signatures")]
        if attached:
            lines += ["Referrers (SBOM, provenance) attached to each platform manifest"
                      + (", and signatures" if r.get("signed") else "") + ":", ""] + attached + [""]
        if accepted:
            lines += ["Unresolved shared libraries accepted in families.yaml:", ""] + accepted + [""]
        if r["differences"]:
            lines += ["Differences between the two verification builds:", "", "```"] + r["differences"] + ["```", ""]
    return "\n".join(lines)


def run(contexts: list[Context], opts: NightlyOptions, log: Callable[[str], None]) -> dict:
    report = {"releases": []}
    for ctx in contexts:
        report["releases"].append(run_release(ctx, opts, log))
    opts.report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(opts.report_dir / "report.json", (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(opts.report_dir / "report.md", markdown(report).encode())
    return report
