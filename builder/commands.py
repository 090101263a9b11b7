"""Release-level commands: lock, outdated, fetch, mirror."""
from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from builder.atomic import atomic_write_bytes
from builder.cli import arguments, command
from builder.context import Context, add_release_options
from builder.errors import BuildError
from builder.lock import check_lock, fetch_catalogues, load_lock, make_lock, outdated, write_lock
from builder.repo.client import fetch_package


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


@command("lock", "resolve every flavour and arch of a release and write its lock file")
@arguments(add_release_options)
def cmd_lock(args) -> int:
    ctx = Context.from_args(args)
    cats = fetch_catalogues(ctx.transport, ctx.release, ctx.arches)
    lock = make_lock(ctx.release, ctx.project.family, cats, warn=_warn)
    changed = write_lock(ctx.lock_path, lock)
    n = sum(len(a.packages) for a in lock.arches.values())
    print(f"{'wrote' if changed else 'unchanged'} {ctx.lock_path}: {n} packages over {len(lock.arches)} arches, "
          f"SOURCE_DATE_EPOCH {lock.source_date_epoch}")
    return 0


@command("outdated", "list locked packages whose version moved in the catalogues (exit 1 if any)")
@arguments(lambda p: (add_release_options(p), p.add_argument("--json", action="store_true")))
def cmd_outdated(args) -> int:
    import json
    ctx = Context.from_args(args)
    lock = load_lock(ctx.lock_path)
    if lock is None:
        raise BuildError(f"no lock file at {ctx.lock_path}; run `freebsd-images lock {ctx.release.name}` first")
    ups = outdated(lock, fetch_catalogues(ctx.transport, ctx.release, ctx.arches))
    if args.json:
        print(json.dumps([u.__dict__ | {"arches": list(u.arches)} for u in ups], indent=2))
    else:
        for u in ups:
            print(f"{u.name} {u.old} \u2192 {u.new or '(removed)'} ({', '.join(u.arches)})")
        if not ups:
            print(f"{ctx.release.name}: up to date")
    return 1 if ups else 0


def fetch_locked(ctx: Context, lock, arch: str, names=None, jobs: int = 4) -> dict[str, Path]:
    """Download (or take from the cache) the locked packages of one arch."""
    al = lock.arches[arch]
    wanted = [al.packages[n] for n in (names or sorted(al.packages))]

    def one(p):
        from builder.repo.catalogue import RemotePackage
        rp = RemotePackage(name=p.name, origin=p.origin, version=p.version, abi=al.abi, arch="", repopath=p.path,
                           sum=p.sum, pkgsize=p.size, flatsize=0, deps=(), shlibs_required=(), shlibs_provided=(),
                           annotations=(), raw={}, repository=p.repository)
        return p.name, fetch_package(ctx.transport, ctx.cache, ctx.release.repository(p.repository), al.abi, rp)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(one, wanted))


def ensure_lock(ctx: Context, update: bool = False):
    """The release's lock: used when present and still valid, else made (and written)."""
    cats = fetch_catalogues(ctx.transport, ctx.release, ctx.arches)
    lock = load_lock(ctx.lock_path)
    if lock is not None and not update:
        check_lock(lock, cats)
        return lock
    lock = make_lock(ctx.release, ctx.project.family, cats, warn=_warn)
    write_lock(ctx.lock_path, lock)
    return lock


@command("fetch", "download a release's locked packages into the cache")
@arguments(lambda p: (add_release_options(p), p.add_argument("--update", action="store_true")))
def cmd_fetch(args) -> int:
    ctx = Context.from_args(args)
    lock = ensure_lock(ctx, args.update)
    for arch in ctx.arches:
        paths = fetch_locked(ctx, lock, arch)
        print(f"{arch}: {len(paths)} packages verified in {ctx.cache.root}")
    return 0


@command("mirror", "copy a release's catalogues and locked packages into a local repository tree")
@arguments(lambda p: (add_release_options(p), p.add_argument("dest", type=Path)))
def cmd_mirror(args) -> int:
    ctx = Context.from_args(args)
    lock = ensure_lock(ctx)
    for arch in ctx.arches:
        abi = ctx.release.abi(arch)
        paths = fetch_locked(ctx, lock, arch)
        for repo in ctx.release.repositories:
            base = repo.url_for(abi).rstrip("/")
            dest = args.dest / abi / base.rsplit("/", 1)[1]
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("meta.conf", "meta", "data.pkg", "packagesite.pkg"):
                try:
                    atomic_write_bytes(dest / name, ctx.transport.fetch_bytes(f"{base}/{name}"))
                except BuildError:
                    if name in ("meta.conf", "data.pkg"):
                        raise
            for n, p in lock.arches[arch].packages.items():
                if p.repository == repo.key:
                    target = dest / p.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(paths[n], str(target) + ".tmp")
                    Path(str(target) + ".tmp").replace(target)
        print(f"{abi}: mirrored {len(paths)} packages into {args.dest / abi}")
    return 0


def _build_args(p) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image to build, e.g. freebsd14.2-minimal")
    p.add_argument("--release", help="build this release's family (with --all or --flavour)")
    p.add_argument("--all", action="store_true", help="every flavour of --release")
    p.add_argument("--flavour", action="append", help="only this flavour of --release (repeatable)")
    p.add_argument("--out", type=Path, default=Path("build/out"), help="output root; the layout is OUT/<release>/")
    p.add_argument("--zstd", action="store_true", help="zstd-compressed layers instead of gzip")
    p.add_argument("--squash", action="store_true", help="one layer per image instead of one per flavour")
    p.add_argument("--archives", action="store_true", help="also write release archives and CHECKSUM files")
    p.add_argument("--update", action="store_true", help="re-lock when the catalogues moved instead of refusing")
    p.add_argument("--jobs", type=int, default=2, help="arches built in parallel")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_release_options(p, release_positional=False)


def build_targets(project, args) -> dict[str, list[str]]:
    """release -> flavours, from image names or --release/--all/--flavour."""
    from builder.plan import parse_image
    out: dict[str, list[str]] = {}
    for image in args.images:
        rel, fl = parse_image(project, image)
        out.setdefault(rel, []).append(fl)
    if args.release:
        if not (args.all or args.flavour):
            raise BuildError("--release needs --all or --flavour")
        project.release(args.release)
        out.setdefault(args.release, []).extend(project.family.names if args.all else args.flavour)
    if not out:
        raise BuildError("nothing to build: name an image (e.g. freebsd14.2-minimal) or --release R --all")
    if args.lock and len(out) > 1:
        raise BuildError("--lock names one lock file; build one release at a time or use --lock-dir")
    return out


@command("build", "build images into an OCI layout (one per release) under --out")
@arguments(_build_args)
def cmd_build(args) -> int:
    import json
    from builder.cli import _table
    from builder.images import build_release, human_size
    from builder.project import load_project
    project = load_project(args.project)
    rows, doc = [], []
    for rel, flavours in build_targets(project, args).items():
        ctx = Context.from_args(args, rel)
        lock = ensure_lock(ctx, args.update)
        rb = build_release(ctx, lock, args.out, sorted(set(flavours), key=project.family.names.index),
                           "zstd" if args.zstd else "gzip", args.squash, args.jobs)
        if args.archives:
            from builder.oci.archive import write_archives
            for path in write_archives(rb, ctx.project.release(rel), args.out / rel / "release"):
                print(f"wrote {path}", file=sys.stderr)
        for img in rb.images:
            rows.append([f"{img.name}:{img.tags[0]}", img.platform, str(len(img.layers)), human_size(img.size),
                         img.manifest.digest])
            doc.append({"image": img.name, "tags": list(img.tags), "arch": img.arch, "platform": img.platform,
                        "layers": len(img.layers), "size": img.size, "digest": img.manifest.digest,
                        "config": img.config.digest, "version": img.version, "layout": str(rb.layout),
                        "index": rb.indexes[img.name].digest})
        print(f"{rel}: layout {rb.layout} ({rb.blobs_written} new blobs, SOURCE_DATE_EPOCH {rb.epoch})",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"images": doc}, indent=2))
    else:
        print(_table(rows, ["IMAGE", "ARCH", "LAYERS", "SIZE", "DIGEST"]))
    return 0


@command("gc", "remove blobs no ref of an OCI layout reaches")
@arguments(lambda p: (p.add_argument("layout", type=Path), p.add_argument("--dry-run", action="store_true")))
def cmd_gc(args) -> int:
    from builder.oci.layout import Layout
    gone = Layout(args.layout).gc(args.dry_run)
    print(f"{'would remove' if args.dry_run else 'removed'} {len(gone)} blobs from {args.layout}")
    return 0


def _publish_args(p) -> None:
    p.add_argument("layout", type=Path, help="OCI layout written by build (e.g. build/out/14.2)")
    p.add_argument("--to", required=True, help="registry and namespace, e.g. ghcr.io/freebsd or 127.0.0.1:5000/freebsd")
    p.add_argument("--image", action="append", help="only this image name (repeatable)")
    p.add_argument("--insecure", action="store_true", help="plain HTTP (local registries only)")
    p.add_argument("--dry-run", action="store_true", help="show what would be pushed, push nothing")
    p.add_argument("--user", default=os.environ.get("FREEBSD_IMAGES_REGISTRY_USER"),
                   help="user name (default $FREEBSD_IMAGES_REGISTRY_USER)")
    p.add_argument("--password-env", default="FREEBSD_IMAGES_REGISTRY_PASSWORD",
                   help="environment variable holding the password or token")
    p.add_argument("--chunk-size", type=int, default=8 << 20, help="PATCH chunk size for large blobs")
    p.add_argument("--json", action="store_true", help="print push statistics as JSON")


@command("publish", "push a layout's images (blobs, manifests, multi-arch indexes, tags) to a registry")
@arguments(_publish_args)
def cmd_publish(args) -> int:
    import json
    from builder.oci.layout import Layout
    from builder.oci.registry import Registry, parse_destination, publish, targets_in_layout
    layout = Layout(args.layout)
    if not (args.layout / "index.json").exists():
        raise BuildError(f"{args.layout}: not an OCI layout (no index.json)")
    host, ns = parse_destination(args.to)
    auth = (args.user, os.environ.get(args.password_env, "")) if args.user else None
    reg = Registry(host, insecure=args.insecure, auth=auth, chunk_size=args.chunk_size,
                   monolithic_max=args.chunk_size)
    targets = targets_in_layout(layout, args.image)
    if not targets:
        raise BuildError(f"{args.layout}: no image to publish" + (f" named {', '.join(args.image)}" if args.image else ""))
    stats = publish(layout, reg, ns, targets, args.dry_run, log=lambda m: print(m, file=sys.stderr))
    summary = {"images": len(targets), "uploaded": stats.uploaded, "uploaded_bytes": stats.uploaded_bytes,
               "mounted": stats.mounted, "skipped": stats.skipped, "manifests": stats.manifests,
               "manifests_skipped": stats.manifests_skipped, "requests": stats.requests, "dry_run": args.dry_run}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{host}/{ns}: {len(targets)} images; blobs uploaded {stats.uploaded} ({stats.uploaded_bytes} bytes), "
              f"mounted {stats.mounted}, already there {stats.skipped}; manifests pushed {stats.manifests}, "
              f"unchanged {stats.manifests_skipped}" + (" (dry run)" if args.dry_run else ""))
    return 0


@command("diff", "explain every difference between two builds (layouts, release archives or docker:// refs)")
@arguments(lambda p: (p.add_argument("a"), p.add_argument("b"),
                      p.add_argument("--json", action="store_true", help="machine-readable output"),
                      p.add_argument("--insecure", action="store_true", help="plain HTTP for docker:// refs")))
def cmd_diff(args) -> int:
    from builder.diff import diff, to_json
    diffs = diff(args.a, args.b, args.insecure)
    if args.json:
        print(to_json(diffs))
    elif diffs:
        for d in diffs:
            print(d.human())
        print(f"{len(diffs)} differences", file=sys.stderr)
    else:
        print("identical")
    return 1 if diffs else 0


@command("verify", "build twice under perturbation (TZ, umask, locale, hash seed, cache, parallelism, order) and diff")
@arguments(lambda p: (_build_args(p), p.add_argument("--work", type=Path, help="keep both builds here")))
def cmd_verify(args) -> int:
    from builder.project import load_project
    from builder.verify import verify
    project = load_project(args.project)
    status = 0
    for rel, flavours in build_targets(project, args).items():
        ctx = Context.from_args(args, rel)
        ensure_lock(ctx, args.update)
        argv = ["--release", rel] + [x for f in flavours for x in ("--flavour", f)] + ["--lock", str(ctx.lock_path.resolve())]
        for a in args.arch or []:
            argv += ["--arch", a]
        if args.mirror:
            argv += ["--mirror", args.mirror]
        if args.keys:
            argv += ["--keys", str(args.keys.resolve())]
        if args.cache_dir:
            argv += ["--cache-dir", str(args.cache_dir.resolve())]
        argv += [f for f, on in (("--zstd", args.zstd), ("--squash", args.squash)) if on]
        try:
            res = verify(argv, rel, args.work and args.work / rel, project.root)
        except RuntimeError as exc:
            raise BuildError(str(exc)) from None
        if res.differences:
            status = 1
            print(f"{rel}: NOT reproducible: {len(res.differences)} differences between {res.layouts[0]} and {res.layouts[1]}")
            for d in res.differences:
                print(d.human())
        else:
            n = len(_layout_refs(res.layouts[0]))
            print(f"{rel}: reproducible: {n} refs identical across two perturbed builds")
    return status


def _layout_refs(path: Path) -> dict:
    from builder.oci.layout import Layout
    return Layout(path).refs()


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
    add_release_options(p, release_positional=False)
    p.set_defaults(keys=Path(os.environ["FREEBSD_IMAGES_KEYS"]) if os.environ.get("FREEBSD_IMAGES_KEYS") else None)


@command("nightly", "release engineering's nightly: outdated, lock, build, verify, publish what changed, report")
@arguments(_nightly_args)
def cmd_nightly(args) -> int:
    from builder.nightly import NightlyOptions, run
    from builder.project import load_project
    project = load_project(args.project)
    releases = args.releases or list(project.releases)
    opts = NightlyOptions(to=args.to, insecure=args.insecure, out=args.out,
                          state_dir=args.state_dir or args.out / "state", report_dir=args.report_dir or args.out / "report",
                          verify=not args.no_verify)
    report = run(args, releases, opts)
    for r in report["releases"]:
        acts = {}
        for img in r["images"]:
            acts[img["action"]] = acts.get(img["action"], 0) + 1
        print(f"{r['release']}: reproducible={r['reproducible']} "
              + ", ".join(f"{n} {a}" for a, n in sorted(acts.items()))
              + f"; {len(r['changed_since_last_publish'])} package changes")
    print(f"report: {opts.report_dir / 'report.md'}")
    return 1 if any(r["reproducible"] is False for r in report["releases"]) else 0


@command("ci", "CI helpers: `ci render` writes the GitHub Actions nightly workflow (ci/github-nightly.yml)")
@arguments(lambda p: (p.add_argument("action", choices=["render"]),
                      p.add_argument("--out", type=Path, default=None, help="default <project>/ci/github-nightly.yml"),
                      p.add_argument("--check", action="store_true", help="exit 1 if the file on disk is stale")))
def cmd_ci(args) -> int:
    from builder.ci import render_workflow
    from builder.project import load_project
    project = load_project(args.project)
    path = args.out or project.root / "ci" / "github-nightly.yml"
    text = render_workflow(project)
    if args.check:
        current = path.read_text() if path.exists() else None
        if current != text:
            print(f"{path} is stale: run `freebsd-images ci render`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    atomic_write_bytes(path, text.encode())
    print(f"wrote {path}")
    return 0


@command("assemble", "merge per-arch layouts (e.g. CI artifacts) into one layout with multi-arch indexes")
@arguments(lambda p: (p.add_argument("dest", type=Path), p.add_argument("layouts", type=Path, nargs="+")))
def cmd_assemble(args) -> int:
    from builder.oci.assemble import assemble
    refs = assemble(args.dest, args.layouts)
    print(f"{args.dest}: {len(refs)} refs from {len(args.layouts)} layouts")
    return 0
