"""freebsd-images: the command line. It parses arguments, calls the stages and prints; nothing imports it.

Exit codes: 0 success, 1 "differences/updates found" (diff, outdated, verify),
2 a refusal or error the user can act on, 3 an unexpected failure (a bug:
one line, the traceback with --debug), 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from builder.errors import BuildError, ConfigError

EXIT_REFUSED = 2
EXIT_UNEXPECTED = 3

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def register(fn):
        COMMANDS[name] = (configure, fn, help)
        return fn
    return register


class Out:
    """Where a command's words go: results on stdout, progress on stderr unless -q, details with -v."""

    def __init__(self, verbosity: int):
        self.verbosity = verbosity

    # One write per line: arches build in threads, and print() writes the newline separately.
    def log(self, msg: str) -> None:
        if self.verbosity >= 0:
            sys.stderr.write(msg + "\n")

    def detail(self, msg: str) -> None:
        if self.verbosity > 0:
            sys.stderr.write(msg + "\n")

    def warn(self, msg: str) -> None:
        sys.stderr.write(f"warning: {msg}\n")


def _out(args) -> Out:
    return Out(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _project(args):
    # loaded once per command: every release-level step shares it
    if getattr(args, "_loaded_project", None) is None:
        from builder.config.project import load_project
        args._loaded_project = load_project(args.project)
    return args._loaded_project


# --- shared options ----------------------------------------------------------------------

def add_release_options(p: argparse.ArgumentParser, release_positional: bool = True) -> None:
    if release_positional:
        p.add_argument("release", help="release name, e.g. 14.2")
    p.add_argument("--arch", action="append", help="only this arch, FreeBSD or OCI name (repeatable)")
    p.add_argument("--mirror", default=None, help="re-root repository URLs on this mirror (or $FREEBSD_IMAGES_MIRROR)")
    p.add_argument("--keys", type=Path, default=None,
                   help="trust this key directory instead (trusted/, revoked/, repo.pub; or $FREEBSD_IMAGES_KEYS)")
    p.add_argument("--lock", type=Path, default=None, help="lock file (default <lock-dir>/<release>.lock.json)")
    p.add_argument("--lock-dir", type=Path, default=None, help="directory of lock files (default the project's releases/)")
    p.add_argument("--cache-dir", type=Path, default=None, help="download cache (default $XDG_CACHE_HOME/freebsd-images)")
    _family_option(p)


def _allow_downgrade(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-downgrade", action="store_true",
                   help="accept catalogues older than the lock's, or locked packages going down (recorded)")


def _where(args):
    from builder.runs.context import Where
    return Where(project=args.project, arches=tuple(args.arch or ()), mirror=args.mirror, keys=args.keys,
                 lock=args.lock, lock_dir=args.lock_dir, cache_dir=args.cache_dir, family=args.family)


def _context(args, release: Optional[str] = None):
    from builder.runs.context import Context
    return Context.open(_where(args), release or args.release, _project(args))


# --- project ------------------------------------------------------------------------------

@command("check", "validate families.yaml, families/*.yaml and every release file")
def cmd_check(args) -> int:
    project = _project(args)
    fams = "; ".join(f"{f.name}: {', '.join(f.names)}" for f in project.families.values())
    print(f"ok: {len(project.families)} families ({fams}), "
          f"{len(project.releases)} releases ({', '.join(project.releases)})")
    return 0


def _family_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default=None,
                   help="image family: default (families.yaml) or NAME (families/NAME.yaml), e.g. official")


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--release", action="append", help="only this release (repeatable)")
    p.add_argument("--flavour", action="append", help="only this flavour (repeatable)")
    p.add_argument("--arch", action="append", help="only this arch, FreeBSD or OCI name (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _family_option(p)


@command("plan", "list the targets (image x release x arch) and their package sets", _plan_args)
def cmd_plan(args) -> int:
    from builder.config.plan import targets
    ts = targets(_project(args), args.release, args.flavour, args.arch, args.family)
    if args.json:
        print(json.dumps({"targets": [t.to_json() for t in ts]}, indent=2))
        return 0
    rows = [[t.image, t.release, f"{t.arch} ({t.platform})", t.parent or "-", " ".join(t.own_packages) or "-"]
            for t in ts]
    print(_table(rows, ["IMAGE", "RELEASE", "ARCH", "PARENT", "ADDS"]))
    return 0


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("release", help="release name, e.g. 14.2")
    p.add_argument("--out", required=True, type=Path, help="mirror root to write <ABI>/<repo>/ into")
    p.add_argument("--arch", action="append", help="only this FreeBSD arch (repeatable)")
    p.add_argument("--seed", default="freebsd-images")
    p.add_argument("--scale", type=float, default=1.0, help="payload size factor (1 = ~2 MB small image)")
    p.add_argument("--version", help="base package version (default: <release>p1 or <major>.snap<date>)")
    p.add_argument("--bump", action="append", default=[], metavar="PKG=VERSION",
                   help="give one package another version (repeatable)")
    p.add_argument("--zstd-level", type=int, default=3)


@command("generate", "write a deterministic offline pkgbase mirror for a release", _generate_args)
def cmd_generate(args) -> int:
    from builder.gen.repo import GenOptions, generate, tree_size
    rel = _project(args).release(args.release)
    bumps = []
    for b in args.bump:
        name, sep, ver = b.partition("=")
        if not sep:
            raise BuildError(f"--bump wants PKG=VERSION, got {b!r}")
        bumps.append((name, ver))
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "1731456000"))
    opts = GenOptions(seed=args.seed, scale=args.scale, epoch=epoch, version=args.version,
                      bumps=tuple(bumps), zstd_level=args.zstd_level)
    summary = generate(rel, args.out, args.arch, opts)
    for r in summary["repositories"]:
        print(f"wrote {r}")
    print(f"version {summary['version']}, {tree_size(args.out) / 1e6:.1f} MB; trust keys in {args.out / 'keys'}")
    return 0


# --- resolve ------------------------------------------------------------------------------

@command("lock", "resolve every flavour and arch of a release and write its lock file",
         lambda p: (add_release_options(p), _allow_downgrade(p)))
def cmd_lock(args) -> int:
    from builder.resolve.lock import fetch_catalogues, load_lock, relock, stale_catalogues, write_lock
    ctx = _context(args)
    out = _out(args)
    cats = fetch_catalogues(ctx.transport, ctx.release, ctx.arches)
    for s in stale_catalogues(cats, ctx.release.catalogue_max_age):
        out.warn(s)
    lock, _ = relock(ctx.release, ctx.family, cats, load_lock(ctx.lock_path), args.allow_downgrade, out.warn)
    changed = write_lock(ctx.lock_path, lock)
    n = sum(len(a.packages) for a in lock.arches.values())
    print(f"{'wrote' if changed else 'unchanged'} {ctx.lock_path}: {n} packages over {len(lock.arches)} arches, "
          f"SOURCE_DATE_EPOCH {lock.source_date_epoch}")
    return 0


@command("outdated", "list locked packages whose version moved in the catalogues (exit 1 if any)",
         lambda p: (add_release_options(p), p.add_argument("--json", action="store_true")))
def cmd_outdated(args) -> int:
    from builder.resolve.lock import fetch_catalogues, load_lock, outdated
    ctx = _context(args)
    lock = load_lock(ctx.lock_path)
    if lock is None:
        raise BuildError(f"no lock file at {ctx.lock_path}; run `freebsd-images lock {ctx.release.name}` first")
    ups = outdated(lock, fetch_catalogues(ctx.transport, ctx.release, ctx.arches))
    if args.json:
        print(json.dumps([u.to_json() for u in ups], indent=2))
    else:
        for u in ups:
            print(f"{u.name} {u.old} \u2192 {u.new or '(removed)'} ({', '.join(u.arches)})")
        if not ups:
            print(f"{ctx.release.name}: up to date")
    return 1 if ups else 0


@command("fetch", "download a release's locked packages into the cache",
         lambda p: (add_release_options(p), p.add_argument("--update", action="store_true"), _allow_downgrade(p)))
def cmd_fetch(args) -> int:
    ctx = _context(args)
    lock = ctx.ensure_lock(args.update, _out(args).warn, args.allow_downgrade)
    for arch in ctx.arches:
        paths = ctx.fetch_locked(lock, arch)
        print(f"{arch}: {len(paths)} packages verified in {ctx.cache.root}")
    return 0


@command("mirror", "copy a release's catalogues and locked packages into a local repository tree",
         lambda p: (add_release_options(p), p.add_argument("dest", type=Path)))
def cmd_mirror(args) -> int:
    from builder.runs.mirror import mirror_release
    ctx = _context(args)
    lock = ctx.ensure_lock(warn=_out(args).warn)
    for abi, n in mirror_release(ctx, lock, args.dest).items():
        print(f"{abi}: mirrored {n} packages into {args.dest / abi}")
    return 0


# --- build --------------------------------------------------------------------------------

def _build_args(p) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image to build, e.g. freebsd14.2-minimal")
    p.add_argument("--release", help="build this release's family (with --all or --flavour)")
    p.add_argument("--all", action="store_true", help="every flavour of --release")
    p.add_argument("--flavour", action="append", help="only this flavour of --release (repeatable)")
    p.add_argument("--out", type=Path, default=Path("build/out"),
                   help="output root; the layout is OUT/<release>/ (every family shares it: image names differ)")
    p.add_argument("--zstd", action="store_true", help="zstd-compressed layers instead of gzip")
    p.add_argument("--squash", action="store_true", help="one layer per image instead of one per flavour")
    p.add_argument("--archives", action="store_true",
                   help="also write release archives and CHECKSUM files (OUT/<release>/release/, "
                        "release-<family>/ for another family)")
    _sign_key(p, "with --archives, sign CHECKSUM.SHA256/SHA512 (detached, armoured: CHECKSUM.*.asc)")
    p.add_argument("--update", action="store_true", help="re-lock when the catalogues moved instead of refusing")
    _allow_downgrade(p)
    p.add_argument("--jobs", type=int, default=2, help="arches built in parallel")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="compression processes (default: one per core; 0: compress in the builder's own "
                        "process; never changes the bytes)")
    p.add_argument("--no-layer-cache", action="store_true",
                   help="build every layer even when the layer cache has it (the cache never changes the bytes)")
    p.add_argument("--epoch", type=int, default=None,
                   help="SOURCE_DATE_EPOCH for this build instead of the lock's (changes every digest)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_release_options(p, release_positional=False)


def _sign_key(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--sign-key", default=os.environ.get("FREEBSD_IMAGES_SIGN_KEY") or None, metavar="KEY",
                   help=f"{what}: an OpenPGP secret key file, or a key id or fingerprint in $GNUPGHOME "
                        "(default $FREEBSD_IMAGES_SIGN_KEY; a passphrase comes from $FREEBSD_IMAGES_SIGN_PASSPHRASE)")


def _selected(args) -> dict[str, list[str]]:
    from builder.config.plan import select
    chosen = select(_project(args), args.images, args.release, args.all, args.flavour, args.family)
    if args.lock and len(chosen) > 1:
        raise BuildError("--lock names one lock file; build one release at a time or use --lock-dir")
    return chosen


@command("build", "build images into an OCI layout (one per release) under --out", _build_args)
def cmd_build(args) -> int:
    from builder.oci.archive import archive_dir, write_archives
    from builder.runs.images import build_release, human_size
    out = _out(args)
    rows, doc = [], []
    for rel, flavours in _selected(args).items():
        ctx = _context(args, rel)
        lock = ctx.ensure_lock(args.update, out.warn, args.allow_downgrade, check=False)
        rb = build_release(ctx, lock, args.out, flavours, "zstd" if args.zstd else "gzip", args.squash, args.jobs,
                           log=out.log, warn=out.warn, epoch=args.epoch, workers=args.workers,
                           use_cache=not args.no_layer_cache)
        if args.archives:
            written = write_archives(rb, ctx.declared, args.out / rel / archive_dir(ctx.family.name))
            if getattr(args, "sign_key", None):
                from builder.oci.sign import Signer, sign_files
                with Signer.open(args.sign_key) as signer:
                    written += sign_files(signer, [w for w in written if w.name.startswith("CHECKSUM.")])
            for path in written:
                out.log(f"wrote {path}")
        for img in rb.images:
            rows.append([f"{img.name}:{img.tags[0]}", img.platform, str(len(img.layers)), human_size(img.size),
                         img.manifest.digest])
            doc.append(img.to_json() | {"layout": str(rb.layout), "index": rb.indexes[img.name].digest,
                                        "family": rb.family, "revision": rb.revision,
                                        "revision_in_image": rb.revision_in_images})
        out.log(f"{rel}: layout {rb.layout} ({rb.blobs_written} new blobs, SOURCE_DATE_EPOCH {rb.epoch} "
                f"from {rb.epoch_source})")
    if args.json:
        print(json.dumps({"images": doc}, indent=2))
    else:
        print(_table(rows, ["IMAGE", "ARCH", "LAYERS", "SIZE", "DIGEST"]))
    return 0


@command("gc", "remove blobs no ref of an OCI layout reaches",
         lambda p: (p.add_argument("layout", type=Path), p.add_argument("--dry-run", action="store_true")))
def cmd_gc(args) -> int:
    from builder.oci.layout import Layout
    gone = Layout(args.layout).gc(args.dry_run)
    print(f"{'would remove' if args.dry_run else 'removed'} {len(gone)} blobs from {args.layout}")
    return 0


# --- publish ------------------------------------------------------------------------------

def _publish_args(p) -> None:
    p.add_argument("layout", type=Path, help="OCI layout written by build (e.g. build/out/14.2)")
    p.add_argument("--to", required=True, help="registry and namespace, e.g. ghcr.io/freebsd or 127.0.0.1:5000/freebsd")
    p.add_argument("--image", action="append", help="only this image name (repeatable)")
    p.add_argument("--insecure", action="store_true", default=bool(os.environ.get("FREEBSD_IMAGES_REGISTRY_INSECURE")),
                   help="plain HTTP, local registries only (default $FREEBSD_IMAGES_REGISTRY_INSECURE)")
    p.add_argument("--dry-run", action="store_true", help="show what would be pushed, push nothing")
    p.add_argument("--user", default=os.environ.get("FREEBSD_IMAGES_REGISTRY_USER"),
                   help="user name (default $FREEBSD_IMAGES_REGISTRY_USER)")
    p.add_argument("--password-env", default="FREEBSD_IMAGES_REGISTRY_PASSWORD",
                   help="environment variable holding the password or token")
    p.add_argument("--chunk-size", type=int, default=8 << 20, help="PATCH chunk size for large blobs")
    p.add_argument("--json", action="store_true", help="print push statistics as JSON")
    _sign_key(p, "sign every pushed index and platform manifest (simple signing) and the provenance (DSSE)")
    p.add_argument("--lookaside", type=Path, default=os.environ.get("FREEBSD_IMAGES_LOOKASIDE") or None,
                   help="directory to write signatures into, laid out as skopeo/podman read a lookaside "
                        "(registries.d) (default $FREEBSD_IMAGES_LOOKASIDE; needed with --sign-key)")


@contextlib.contextmanager
def _signing(args):
    """The signing plan of --sign-key/--lookaside, or None; the temporary keyrings go on exit."""
    if not getattr(args, "sign_key", None):
        yield None
        return
    from builder.oci.sign import Signer, SigningPlan, Verifier
    if not args.lookaside:
        raise BuildError("--sign-key needs --lookaside (or $FREEBSD_IMAGES_LOOKASIDE): where the signatures go")
    with Signer.open(args.sign_key) as signer, Verifier.of_signer(signer) as verifier:
        yield SigningPlan(signer, verifier, Path(args.lookaside))


@command("publish", "push a layout's images (blobs, manifests, multi-arch indexes, tags) to a registry", _publish_args)
def cmd_publish(args) -> int:
    from builder.oci.layout import Layout
    from builder.oci.registry import (Registry, credentials, foreign_base_names, parse_destination, publish,
                                      targets_in_layout)
    if not (args.layout / "index.json").exists():
        raise BuildError(f"{args.layout}: not an OCI layout (no index.json)")
    layout = Layout(args.layout)
    host, ns = parse_destination(args.to)
    reg = Registry(host, insecure=args.insecure, auth=credentials(args.user, args.password_env),
                   chunk_size=args.chunk_size, monolithic_max=args.chunk_size)
    targets = targets_in_layout(layout, args.image)
    if not targets:
        raise BuildError(f"{args.layout}: no image to publish" + (f" named {', '.join(args.image)}" if args.image else ""))
    foreign = foreign_base_names(layout, targets, host, ns)
    if foreign:
        _out(args).warn(f"these images name parents outside {host}/{ns} (base.name, set at build time from the "
                        f"release file's publish.namespace): {', '.join(foreign[:3])}"
                        + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""))
    with _signing(args) as signing:
        stats = publish(layout, reg, ns, targets, args.dry_run, log=_out(args).log, signing=signing)
    summary = {"images": len(targets), **stats.to_json(), "dry_run": args.dry_run}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{host}/{ns}: {len(targets)} images; blobs uploaded {stats.uploaded} ({stats.uploaded_bytes} bytes), "
              f"mounted {stats.mounted}, already there {stats.skipped}; manifests pushed {stats.manifests}, "
              f"unchanged {stats.manifests_skipped}; referrers pushed {stats.referrers}, unchanged "
              f"{stats.referrers_unchanged}; signatures written {stats.signatures}"
              + (" (dry run)" if args.dry_run else ""))
    return 0


@command("assemble", "merge per-arch layouts (e.g. CI artifacts) into one layout with multi-arch indexes",
         lambda p: (p.add_argument("dest", type=Path), p.add_argument("layouts", type=Path, nargs="+")))
def cmd_assemble(args) -> int:
    from builder.oci.assemble import assemble
    refs = assemble(args.dest, args.layouts)
    print(f"{args.dest}: {len(refs)} refs from {len(args.layouts)} layouts")
    return 0


# --- prove --------------------------------------------------------------------------------

@command("diff", "explain every difference between two builds (layouts, release archives or docker:// refs)",
         lambda p: (p.add_argument("a"), p.add_argument("b"),
                    p.add_argument("--json", action="store_true", help="machine-readable output"),
                    p.add_argument("--insecure", action="store_true", help="plain HTTP for docker:// refs")))
def cmd_diff(args) -> int:
    from builder.prove.diff import diff, to_json
    diffs = diff(args.a, args.b, args.insecure)
    if args.json:
        print(to_json(diffs))
    elif diffs:
        for d in diffs:
            print(d.human())
        _out(args).log(f"{len(diffs)} differences")
    else:
        print("identical")
    return 1 if diffs else 0


@command("verify", "build twice under perturbation (TZ, umask, locale, hash seed, cache, parallelism) and diff",
         lambda p: (_build_args(p), p.add_argument("--work", type=Path, help="keep both builds here")))
def cmd_verify(args) -> int:
    from builder.oci.layout import Layout
    from builder.prove.verify import VerifyRequest, verify
    status = 0
    for rel, flavours in _selected(args).items():
        ctx = _context(args, rel)
        ctx.ensure_lock(args.update, _out(args).warn, args.allow_downgrade)
        req = VerifyRequest(ctx.project.root, rel, ctx.lock_path, tuple(flavours), tuple(args.arch or ()),
                            ctx.mirror, ctx.keys, args.zstd, args.squash, ctx.family.name)
        res = verify(req, args.work and args.work / rel)
        if res.differences:
            status = 1
            print(f"{rel}: NOT reproducible: {len(res.differences)} differences between {res.layouts[0]} and {res.layouts[1]}")
            for d in res.differences:
                print(d.human())
        else:
            print(f"{rel}: reproducible: {len(Layout(res.layouts[0]).refs())} refs identical across two perturbed builds")
    return status


def _verify_image_args(p) -> None:
    p.add_argument("ref", help="DIR:NAME:TAG (an OCI layout) or docker://HOST/REPO:TAG (or @sha256:...)")
    p.add_argument("--key", type=Path, help="public key file: the signatures (and signed provenance) must verify with it")
    p.add_argument("--lookaside", type=Path, default=os.environ.get("FREEBSD_IMAGES_LOOKASIDE") or None,
                   help="the signatures' lookaside directory (default $FREEBSD_IMAGES_LOOKASIDE)")
    p.add_argument("--lock", type=Path, help="the repository's lock file: the provenance and SBOM must match it")
    p.add_argument("--insecure", action="store_true", default=bool(os.environ.get("FREEBSD_IMAGES_REGISTRY_INSECURE")),
                   help="plain HTTP for docker:// refs")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("verify-image", "check an image's signature, SBOM (against its own local.sqlite) and provenance (against "
                         "the lock); exit 1 naming each mismatch", _verify_image_args)
def cmd_verify_image(args) -> int:
    from builder.prove.verify_image import verify_image
    findings = verify_image(args.ref, args.key, args.lock, args.lookaside, args.insecure)
    failed = [f for f in findings if not f.ok]
    if args.json:
        print(json.dumps({"ok": not failed, "findings": [f.__dict__ for f in findings]}, indent=2))
    else:
        for f in findings:
            print(f.human())
        print(f"{args.ref}: " + (f"{len(failed)} mismatches" if failed else "verified"))
    return 1 if failed else 0


# --- release-level runs -------------------------------------------------------------------

def _nightly_args(p) -> None:
    p.add_argument("releases", nargs="*", metavar="RELEASE", help="release lines (default: every file in releases/)")
    p.add_argument("--to", default=os.environ.get("FREEBSD_IMAGES_REGISTRY"),
                   help="publish to HOST/NAMESPACE (default $FREEBSD_IMAGES_REGISTRY; none: build and verify only)")
    p.add_argument("--insecure", action="store_true", default=bool(os.environ.get("FREEBSD_IMAGES_REGISTRY_INSECURE")),
                   help="plain HTTP registry (default $FREEBSD_IMAGES_REGISTRY_INSECURE)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("FREEBSD_IMAGES_OUT", "build/nightly")))
    p.add_argument("--state-dir", type=Path, default=None, help="where the last published locks live (default OUT/state)")
    p.add_argument("--report-dir", type=Path, default=None, help="report.md and report.json (default OUT/report)")
    p.add_argument("--no-verify", action="store_true", help="skip the second, perturbed build")
    _sign_key(p, "sign what is published (images, provenance)")
    p.add_argument("--lookaside", type=Path, default=os.environ.get("FREEBSD_IMAGES_LOOKASIDE") or None,
                   help="where signatures go (default $FREEBSD_IMAGES_LOOKASIDE, else OUT/lookaside)")
    _allow_downgrade(p)
    add_release_options(p, release_positional=False)
    p.set_defaults(keys=Path(os.environ["FREEBSD_IMAGES_KEYS"]) if os.environ.get("FREEBSD_IMAGES_KEYS") else None)


@command("nightly", "release engineering's nightly: outdated, lock, build, verify, publish what changed, report",
         _nightly_args)
def cmd_nightly(args) -> int:
    from builder.oci.registry import credentials
    from builder.runs.nightly import NightlyOptions, run
    releases = args.releases or list(_project(args).releases)
    opts = NightlyOptions(to=args.to, insecure=args.insecure, out=args.out,
                          state_dir=args.state_dir or args.out / "state", report_dir=args.report_dir or args.out / "report",
                          verify=not args.no_verify, auth=credentials(os.environ.get("FREEBSD_IMAGES_REGISTRY_USER")),
                          allow_downgrade=args.allow_downgrade)
    if args.sign_key and not args.lookaside:
        args.lookaside = args.out / "lookaside"
    with _signing(args) as signing:
        report = run([_context(args, r) for r in releases], replace(opts, signing=signing), _out(args).log)
    for r in report["releases"]:
        acts: dict[str, int] = {}
        for img in r["images"]:
            acts[img["action"]] = acts.get(img["action"], 0) + 1
        print(f"{r['release']}: reproducible={r['reproducible']} "
              + ", ".join(f"{n} {a}" for a, n in sorted(acts.items()))
              + f"; {len(r['changed_since_last_publish'])} package changes")
    print(f"report: {opts.report_dir / 'report.md'}")
    return 1 if any(r["reproducible"] is False for r in report["releases"]) else 0


@command("ci", "CI helpers: `ci render` writes the GitHub Actions nightly workflow (ci/github-nightly.yml)",
         lambda p: (p.add_argument("action", choices=["render"]),
                    p.add_argument("--out", type=Path, default=None, help="default <project>/ci/github-nightly.yml"),
                    p.add_argument("--check", action="store_true", help="exit 1 if the file on disk is stale")))
def cmd_ci(args) -> int:
    from builder.common.atomic import atomic_write_bytes
    from builder.runs.ci import is_current, render_workflow, workflow_path
    project = _project(args)
    path = args.out or workflow_path(project)
    text = render_workflow(project)
    if args.check:
        if not is_current(path, text):
            print(f"{path} is stale: run `freebsd-images ci render`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    atomic_write_bytes(path, text.encode())
    print(f"wrote {path}")
    return 0


# --- entry --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freebsd-images", description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=None,
                        help="project directory holding families.yaml and releases/ (default: $FREEBSD_IMAGES_PROJECT or .)")
    parser.add_argument("--debug", action="store_true", help="on failure, print the whole chain of causes")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="print only results and errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="print more about what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (configure, fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        configure(p)
        p.set_defaults(func=fn)
    return parser


def _causes(exc: BaseException) -> list[str]:
    out, seen = [], set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        out.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        for d in exc.diagnostics:
            print(f"error: {d}", file=sys.stderr)
        return EXIT_REFUSED
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        elif args.verbose:
            for c in _causes(exc):
                print(f"  caused by {c}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a result: never exit 1, which means "differences found"
        print(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        if args.debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return EXIT_UNEXPECTED
