"""freebsd-images: the command line. It parses arguments, calls the stages and prints; nothing imports it.

Every option is declared once, in OPTIONS; a command names the options it takes. Options not given on
the command line are resolved in one place (``resolve``): from the option's environment variable, else
its default.

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
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional

from builder.common.log import Log
from builder.errors import BuildError, ConfigError

EXIT_REFUSED = 2
EXIT_UNEXPECTED = 3

DESCRIPTION = ("Build FreeBSD OCI container images from pkgbase packages, reproducibly: lock a release's packages, "
               "build its images, prove that a second build is identical, and publish them.")
EPILOG = ("exit status: 0 success; 1 differences or updates found (diff, outdated, verify, verify-image); "
          "2 a refusal or error you can act on; 3 an internal error (--debug shows the traceback); 130 interrupted")


@dataclass(frozen=True)
class Option:
    """One command-line argument, declared once: every command naming it gets the same flags, help and default."""
    flags: tuple[str, ...]                  # ("--arch",), ("-q", "--quiet"); a positional: (its name,)
    help: str
    type: Optional[Callable[[str], Any]] = None
    default: Any = None                     # when neither the command line nor ``env`` gives a value
    env: Optional[str] = None               # read when the option is not given (an empty value is unset)
    action: Optional[str] = None            # argparse's: store_true, append, count
    nargs: Optional[str] = None
    metavar: Optional[str] = None
    choices: Optional[tuple[str, ...]] = None
    required: bool = False
    default_help: str = ""                  # the default in words, when its value does not say it
    key: str = ""                           # the table's key, when two options share a flag (--out)

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def dest(self) -> str:
        return self.flags[-1].lstrip("-").replace("-", "_")

    def help_text(self) -> str:
        shown = self.default_help or (str(self.default) if isinstance(self.default, (str, Path, int, float))
                                      and not isinstance(self.default, bool) and self.action is None else "")
        if self.env:
            return f"{self.help} (default ${self.env}" + (f", else {shown})" if shown else ")")
        return f"{self.help} (default {shown})" if shown else self.help

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kw = {k: v for k, v in (("type", self.type), ("action", self.action), ("nargs", self.nargs),
                                ("metavar", self.metavar), ("choices", self.choices)) if v is not None}
        if self.positional:
            parser.add_argument(self.dest, help=self.help_text(), **kw)
        else:
            # None: "not given", so that resolve() can tell the environment and the default apart
            parser.add_argument(*self.flags, default=None, required=self.required, help=self.help_text(), **kw)

    def value(self, given: Any, environ: Mapping[str, str]) -> Any:
        if given is not None:
            return given
        raw = environ.get(self.env) if self.env else None
        if raw:
            if self.action == "store_true":
                return True
            try:
                return self.type(raw) if self.type else raw
            except ValueError:
                raise BuildError(f"${self.env}={raw!r} is not a valid {self.flags[-1]}") from None
        return self.default


def _positional(name: str, help: str, **kw) -> Option:
    return Option((name,), help, **kw)


_ROWS = (
    # global
    Option(("--project",), "project directory holding families.yaml and releases/", type=Path,
           env="FREEBSD_IMAGES_PROJECT", default_help="the current directory"),
    Option(("--debug",), "on failure, print the whole chain of causes", action="store_true", default=False),
    Option(("-q", "--quiet"), "print only results and errors", action="count", default=0),
    Option(("-v", "--verbose"), "print more about what happens", action="count", default=0),
    # where a release's packages come from and its lock lives
    Option(("--arch",), "only this arch, FreeBSD or OCI name (repeatable)", action="append"),
    Option(("--mirror",), "re-root repository URLs on this mirror", env="FREEBSD_IMAGES_MIRROR"),
    Option(("--keys",), "trust this key directory instead (trusted/, revoked/, repo.pub)", type=Path,
           env="FREEBSD_IMAGES_KEYS"),
    Option(("--lock",), "lock file", type=Path, default_help="<lock-dir>/<release>.lock.json"),
    Option(("--lock-dir",), "directory of lock files", type=Path, default_help="the project's releases/"),
    Option(("--cache-dir",), "download cache", type=Path, default_help="$XDG_CACHE_HOME/freebsd-images"),
    Option(("--family",), "image family: default (families.yaml) or NAME (families/NAME.yaml), e.g. official"),
    Option(("--update",), "re-lock when the catalogues moved instead of refusing", action="store_true", default=False),
    Option(("--allow-downgrade",), "accept catalogues older than the lock's, or locked packages going down (recorded)",
           action="store_true", default=False),
    # what to build
    Option(("--release",), "only this release (repeatable)", action="append", key="releases"),
    Option(("--release",), "build this release's family (with --all or --flavour)"),
    Option(("--all",), "every flavour of --release", action="store_true", default=False),
    Option(("--flavour",), "only this flavour (repeatable)", action="append"),
    Option(("--out",), "output root; the layout is OUT/<release>/ (every family shares it: image names differ)",
           type=Path, default=Path("build/out")),
    Option(("--zstd",), "zstd-compressed layers instead of gzip", action="store_true", default=False),
    Option(("--squash",), "one layer per image instead of one per flavour", action="store_true", default=False),
    Option(("--archives",), "also write release archives and CHECKSUM files (OUT/<release>/release/, "
           "release-<family>/ for another family), signed with --sign-key", action="store_true", default=False),
    Option(("--jobs",), "arches built in parallel", type=int, default=2),
    Option(("--workers",), "compression processes (0: compress in the builder's own process; never changes the "
           "bytes)", type=int, default=os.cpu_count() or 1, default_help="one per core"),
    Option(("--no-layer-cache",), "build every layer even when the layer cache has it (the cache never changes "
           "the bytes)", action="store_true", default=False),
    Option(("--epoch",), "SOURCE_DATE_EPOCH for this build instead of the lock's (changes every digest)", type=int),
    Option(("--allow-writer-drift",), "build even when the libraries that write the bytes (SQLite, libdeflate, "
           "libzstd) are not the pinned versions: warned, and recorded in every image and the nightly report",
           action="store_true", default=False),
    Option(("--keep",), "keep the scratch projects and rebuilds here", type=Path,
           default_help="a temporary directory, removed"),
    Option(("--from",), "a published image (DIR:NAME:TAG or docker://HOST/REPO:TAG): mirror exactly the packages its "
           "build recipes lock, from the release's repositories or --mirror", metavar="REF", key="from-image"),
    Option(("--against",), "also compare the first build (made without caches) with the layouts under this "
           "output root (OUT/<release>/, as build --out wrote them): exit 2 naming every difference",
           type=Path, metavar="OUT"),
    Option(("--work",), "keep both builds here", type=Path, default_help="a temporary directory, removed"),
    # registries and signatures
    Option(("--to",), "registry and namespace to publish to, e.g. ghcr.io/freebsd or 127.0.0.1:5000/freebsd "
           "(nightly without it: build and verify only)", env="FREEBSD_IMAGES_REGISTRY"),
    Option(("--insecure",), "plain HTTP to the registry (local registries only)", action="store_true", default=False,
           env="FREEBSD_IMAGES_REGISTRY_INSECURE"),
    Option(("--user",), "registry user name", env="FREEBSD_IMAGES_REGISTRY_USER"),
    Option(("--password-env",), "environment variable holding the registry password or token",
           default="FREEBSD_IMAGES_REGISTRY_PASSWORD"),
    Option(("--image",), "only this image name (repeatable)", action="append"),
    Option(("--chunk-size",), "PATCH chunk size for large blobs", type=int, default=8 << 20, default_help="8 MiB"),
    Option(("--sign-key",), "sign with this OpenPGP secret key: a key file, or a key id or fingerprint in "
           "$GNUPGHOME (a passphrase comes from $FREEBSD_IMAGES_SIGN_PASSPHRASE)", metavar="KEY",
           env="FREEBSD_IMAGES_SIGN_KEY"),
    Option(("--lookaside",), "directory of the image signatures, laid out as the lookaside (registries.d) skopeo and "
           "podman read: written with --sign-key (nightly: OUT/lookaside without this), read by verify-image",
           type=Path, env="FREEBSD_IMAGES_LOOKASIDE"),
    Option(("--key",), "public key file: the signatures (and signed provenance) must verify with it", type=Path),
    Option(("--lock",), "the repository's lock file: the provenance and SBOM must match it", type=Path,
           key="expected-lock"),
    # nightly
    Option(("--out",), "output root: layouts, state/, report/ (and lookaside/)", type=Path,
           default=Path("build/nightly"), env="FREEBSD_IMAGES_OUT", key="nightly-out"),
    Option(("--state-dir",), "where the last published locks live", type=Path, default_help="OUT/state"),
    Option(("--report-dir",), "report.md and report.json", type=Path, default_help="OUT/report"),
    Option(("--no-verify",), "skip the second, perturbed build", action="store_true", default=False),
    # generate
    Option(("--out",), "mirror root to write <ABI>/<repo>/ into", type=Path, required=True, key="mirror-out"),
    Option(("--seed",), "seed of every generated byte: another seed, another mirror", default="freebsd-images"),
    Option(("--scale",), "payload size factor (1 = ~2 MB small image)", type=float, default=1.0),
    Option(("--version",), "base package version", default_help="<release>p1 or <major>.snap<date>"),
    Option(("--bump",), "give one package another version (repeatable)", action="append", metavar="PKG=VERSION",
           default=()),
    Option(("--zstd-level",), "zstd level of the generated packages", type=int, default=3),
    # audit
    Option(("--release",), "the release whose repositories give the newest versions", key="audit-release",
           default_help="the image's FreeBSD-runtime version: 14.2p1 is 14.2"),
    Option(("--vuxml",), "FreeBSD's vulnerability database: a vuln.xml file or URL (xz, gzip, bzip2, zstd or plain)",
           metavar="FILE|URL", env="FREEBSD_IMAGES_VUXML",
           default_help="the one FreeBSD publishes, as pkg audit fetches it (vuxml.freebsd.org)"),
    Option(("--fail-on",), "what makes the exit status 1 (repeatable)", action="append",
           choices=("advisories", "stale"), default_help="both: advisories and stale packages"),
    # output and the rest
    Option(("--json",), "machine-readable output (JSON)", action="store_true", default=False),
    Option(("--dry-run",), "show what would be done, change nothing", action="store_true", default=False),
    Option(("--out",), "the workflow file", type=Path, default_help="<project>/ci/github-nightly.yml",
           key="workflow-out"),
    Option(("--check",), "exit 1 if the file on disk is stale", action="store_true", default=False),
)
OPTIONS: dict[str, Option] = {o.key or o.flags[-1].lstrip("-"): o for o in _ROWS}   # two rows, one key: a test fails

GLOBAL_OPTIONS = ("project", "debug", "quiet", "verbose")
RELEASE_OPTIONS = ("arch", "mirror", "keys", "lock", "lock-dir", "cache-dir", "family")
SELECT_OPTIONS = ("release", "all", "flavour", "zstd", "squash", "update", "allow-downgrade",
                  "allow-writer-drift") + RELEASE_OPTIONS

RELEASE = _positional("release", "release name, e.g. 14.2")
IMAGES = _positional("images", "image to build, e.g. freebsd14.2-minimal", nargs="*", metavar="IMAGE")
LAYOUT = _positional("layout", "OCI layout written by build (e.g. build/out/14.2)", type=Path)


class Command(NamedTuple):
    arguments: tuple[Option, ...]           # its positionals, then the options it takes
    func: Callable[[argparse.Namespace], int]
    help: str


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, options: tuple[str, ...] = (), positionals: tuple[Option, ...] = ()):
    def register(fn):
        COMMANDS[name] = Command(tuple(positionals) + tuple(OPTIONS[k] for k in options), fn, help)
        return fn
    return register


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> argparse.Namespace:
    """The parsed arguments, each option not given taken from its environment variable, else its default (the
    one place the command line reads the environment), and the run's ``log``."""
    # by position: a test swaps a command for a plain (arguments, func, help) tuple
    rows = tuple(OPTIONS[k] for k in GLOBAL_OPTIONS) + tuple(COMMANDS[args.command][0])
    values = dict(vars(args))
    values.update((o.dest, o.value(values.get(o.dest), environ)) for o in rows)
    return argparse.Namespace(**values, log=Log(values["verbose"] - values["quiet"]), _loaded_project=None)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _project(args):
    # loaded once per command: every release-level step shares it
    if args._loaded_project is None:
        from builder.config.project import load_project
        args._loaded_project = load_project(args.project)
    return args._loaded_project


def _context(args, release: Optional[str] = None):
    from builder.runs.context import Context, RunOptions
    opts = RunOptions(project=args.project, arches=tuple(args.arch or ()), mirror=args.mirror, keys=args.keys,
                      lock=args.lock, lock_dir=args.lock_dir, cache_dir=args.cache_dir, family=args.family)
    return Context.open(opts, release or args.release, _project(args))


# --- project ------------------------------------------------------------------------------

@command("check", "validate families.yaml, families/*.yaml and every release file; with --release, resolve "
                  "every flavour's packages against that release's catalogues too",
         options=("release",) + RELEASE_OPTIONS)
def cmd_check(args) -> int:
    project = _project(args)
    fams = "; ".join(f"{f.name}: {', '.join(f.names)}" for f in project.families.values())
    if args.release:
        from builder.resolve.lock import fetch_catalogues, make_lock
        ctx = _context(args)
        lock = make_lock(ctx.source.release, ctx.family, fetch_catalogues(ctx.source.transport, ctx.source.release,
                                                                           list(ctx.arches)), args.log.warn)
        n = sum(len(a.packages) for a in lock.arches.values())
        print(f"ok: family {ctx.family.name} resolves for {ctx.name} ({', '.join(ctx.arches)}): {n} packages")
        return 0
    print(f"ok: {len(project.families)} families ({fams}), "
          f"{len(project.releases)} releases ({', '.join(project.releases)})")
    return 0


@command("plan", "list the targets (image x release x arch) and their package sets",
         options=("releases", "flavour", "arch", "json", "family"))
def cmd_plan(args) -> int:
    from builder.config.plan import targets
    ts = targets(_project(args), args.release, args.flavour, args.arch, args.family)
    if args.json:
        print(json.dumps({"targets": [t.to_json() for t in ts]}, indent=2))
        return 0
    rows = [[t.image, t.release, f"{t.arch} ({t.platform})", t.parent or "-", " ".join(t.cmd) or "-",
             " ".join(t.own_packages) or "-"] for t in ts]
    print(_table(rows, ["IMAGE", "RELEASE", "ARCH", "PARENT", "CMD", "ADDS"]))
    return 0


@command("generate", "write a deterministic offline pkgbase mirror for a release",
         options=("mirror-out", "arch", "seed", "scale", "version", "bump", "zstd-level"), positionals=(RELEASE,))
def cmd_generate(args) -> int:
    from builder.common.epoch import source_date_epoch
    from builder.gen.repo import GenOptions, generate, tree_size
    rel = _project(args).release(args.release)
    bumps = []
    for b in args.bump:
        name, sep, ver = b.partition("=")
        if not sep:
            raise BuildError(f"--bump wants PKG=VERSION, got {b!r}")
        bumps.append((name, ver))
    epoch = source_date_epoch()
    opts = GenOptions(seed=args.seed, scale=args.scale, epoch=1731456000 if epoch is None else epoch,
                      version=args.version, bumps=tuple(bumps), zstd_level=args.zstd_level)
    arches = [rel.arch(a).name for a in args.arch] if args.arch else None
    summary = generate(rel, args.out, arches, opts)
    for r in summary["repositories"]:
        print(f"wrote {r}")
    print(f"version {summary['version']}, {tree_size(args.out) / 1e6:.1f} MB; trust keys in {args.out / 'keys'}")
    return 0


# --- resolve ------------------------------------------------------------------------------

@command("lock", "resolve every flavour and arch of a release and write its lock file",
         options=RELEASE_OPTIONS + ("allow-downgrade",), positionals=(RELEASE,))
def cmd_lock(args) -> int:
    from builder.resolve.lock import fetch_catalogues, load_lock, relock, stale_catalogues, write_lock
    ctx = _context(args)
    release = ctx.source.release
    cats = fetch_catalogues(ctx.source.transport, release, ctx.arches)
    for s in stale_catalogues(cats, release.catalogue_max_age):
        args.log.warn(s)
    lock, _ = relock(release, ctx.family, cats, load_lock(ctx.lock_path), args.allow_downgrade, args.log.warn)
    changed = write_lock(ctx.lock_path, lock)
    n = sum(len(a.packages) for a in lock.arches.values())
    print(f"{'wrote' if changed else 'unchanged'} {ctx.lock_path}: {n} packages over {len(lock.arches)} arches, "
          f"SOURCE_DATE_EPOCH {lock.source_date_epoch}")
    return 0


@command("outdated", "list locked packages whose version moved in the catalogues (exit 1 if any)",
         options=RELEASE_OPTIONS + ("json",), positionals=(RELEASE,))
def cmd_outdated(args) -> int:
    from builder.resolve.lock import fetch_catalogues, load_lock, outdated
    ctx = _context(args)
    lock = load_lock(ctx.lock_path)
    if lock is None:
        raise BuildError(f"no lock file at {ctx.lock_path}; run `freebsd-images lock {ctx.name}` first")
    ups = outdated(lock, fetch_catalogues(ctx.source.transport, ctx.source.release, ctx.arches))
    if args.json:
        print(json.dumps([u.to_json() for u in ups], indent=2))
    else:
        for u in ups:
            print(f"{u.name} {u.old} \u2192 {u.new or '(removed)'} ({', '.join(u.arches)})")
        if not ups:
            print(f"{ctx.name}: up to date")
    return 1 if ups else 0


@command("fetch", "download a release's locked packages into the cache",
         options=RELEASE_OPTIONS + ("update", "allow-downgrade"), positionals=(RELEASE,))
def cmd_fetch(args) -> int:
    ctx = _context(args)
    lock = ctx.ensure_lock(args.update, args.log.warn, args.allow_downgrade)
    for arch in ctx.arches:
        paths = ctx.fetch_locked(lock, arch)
        print(f"{arch}: {len(paths)} packages verified in {ctx.source.cache.root}")
    return 0


@command("mirror", "copy a release's catalogues and locked packages into a local repository tree; or, with --from, "
                   "the packages a published image was built from",
         options=RELEASE_OPTIONS + ("from-image", "insecure"),
         positionals=(_positional("release", "release name, e.g. 14.2 (not with --from)", nargs="?"),
                      _positional("dest", "directory to copy into, as <ABI>/<repo>/", type=Path)))
def cmd_mirror(args) -> int:
    from builder.runs.mirror import mirror_image, mirror_release
    source = vars(args)["from"]
    if source:
        if args.release:
            raise BuildError("mirror --from REF takes the release from the image's recipe: give DEST only")
        for abi, n in mirror_image(source, args.dest, args.mirror, args.insecure, args.cache_dir, args.log).items():
            print(f"{abi}: mirrored {n} packages into {args.dest / abi}")
        return 0
    if not args.release:
        raise BuildError("mirror wants RELEASE DEST, or --from REF DEST")
    ctx = _context(args)
    lock = ctx.ensure_lock(warn=args.log.warn)
    for abi, n in mirror_release(ctx, lock, args.dest).items():
        print(f"{abi}: mirrored {n} packages into {args.dest / abi}")
    return 0


# --- build --------------------------------------------------------------------------------

def _selected(args) -> dict[str, list[str]]:
    from builder.config.plan import select
    chosen = select(_project(args), args.images, args.release, args.all, args.flavour, args.family)
    if args.lock and len(chosen) > 1:
        raise BuildError("--lock names one lock file; build one release at a time or use --lock-dir")
    return chosen


@command("build", "build images into an OCI layout (one per release) under --out",
         options=SELECT_OPTIONS + ("out", "archives", "sign-key", "jobs", "workers", "no-layer-cache", "epoch", "json"),
         positionals=(IMAGES,))
def cmd_build(args) -> int:
    from builder.runs.archives import write_release_archives
    from builder.runs.images import ImageOptions, build_release, human_size
    rows, doc = [], []
    for rel, flavours in _selected(args).items():
        ctx = _context(args, rel)
        lock = ctx.ensure_lock(args.update, args.log.warn, args.allow_downgrade, check=False)
        opts = ImageOptions(flavours=tuple(flavours), compression="zstd" if args.zstd else "gzip", squash=args.squash,
                            epoch=args.epoch, jobs=args.jobs, workers=args.workers, use_cache=not args.no_layer_cache,
                            allow_writer_drift=args.allow_writer_drift)
        rb = build_release(ctx, lock, args.out, opts, args.log)
        if args.archives:
            for path in write_release_archives(rb, ctx, args.out, args.sign_key):
                args.log.info(f"wrote {path}")
        for img in rb.images:
            rows.append([f"{img.name}:{img.tags[0]}", img.platform, str(len(img.layers)), human_size(img.size),
                         img.manifest.digest])
            doc.append(img.to_json() | {"layout": str(rb.layout), "index": rb.indexes[img.name].digest,
                                        "family": rb.family, "revision": rb.revision,
                                        "revision_in_image": rb.revision_in_images})
        args.log.info(f"{rel}: layout {rb.layout} ({rb.blobs_written} new blobs, SOURCE_DATE_EPOCH {rb.epoch} "
                      f"from {rb.epoch_source})")
    if args.json:
        print(json.dumps({"images": doc}, indent=2))
    else:
        print(_table(rows, ["IMAGE", "ARCH", "LAYERS", "SIZE", "DIGEST"]))
    return 0


@command("gc", "remove blobs no ref of an OCI layout reaches", options=("dry-run",),
         positionals=(_positional("layout", "OCI layout to collect", type=Path),))
def cmd_gc(args) -> int:
    from builder.oci.layout import Layout
    gone = Layout(args.layout).gc(args.dry_run)
    print(f"{'would remove' if args.dry_run else 'removed'} {len(gone)} blobs from {args.layout}")
    return 0


# --- publish ------------------------------------------------------------------------------

@contextlib.contextmanager
def _signing(sign_key: Optional[str], lookaside: Optional[Path]):
    """The signing plan of --sign-key/--lookaside, or None; the temporary keyrings go on exit."""
    if not sign_key:
        yield None
        return
    from builder.oci.sign import Signer, SigningPlan, Verifier
    if not lookaside:
        raise BuildError("--sign-key needs --lookaside (or $FREEBSD_IMAGES_LOOKASIDE): where the signatures go")
    with Signer.open(sign_key) as signer, Verifier.of_signer(signer) as verifier:
        yield SigningPlan(signer, verifier, Path(lookaside))


@command("publish", "push a layout's images (blobs, manifests, multi-arch indexes, tags) to a registry",
         options=("to", "image", "insecure", "dry-run", "user", "password-env", "chunk-size", "json", "sign-key",
                  "lookaside"),
         positionals=(LAYOUT,))
def cmd_publish(args) -> int:
    from builder.oci.layout import Layout
    from builder.oci.registry import Registry, credentials, foreign_base_names, publish, targets_in_layout
    if not args.to:
        raise BuildError("publish needs --to HOST/NAMESPACE (or $FREEBSD_IMAGES_REGISTRY)")
    if not (args.layout / "index.json").exists():
        raise BuildError(f"{args.layout}: not an OCI layout (no index.json)")
    layout = Layout(args.layout)
    reg, ns = Registry.for_destination(args.to, args.insecure, credentials(args.user, args.password_env),
                                       chunk_size=args.chunk_size, monolithic_max=args.chunk_size)
    targets = targets_in_layout(layout, args.image)
    if not targets:
        raise BuildError(f"{args.layout}: no image to publish" + (f" named {', '.join(args.image)}" if args.image else ""))
    foreign = foreign_base_names(layout, targets, reg.host, ns)
    if foreign:
        args.log.warn(f"these images name parents outside {reg.host}/{ns} (base.name, set at build time from the "
                      f"release file's publish.namespace): {', '.join(foreign[:3])}"
                      + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""))
    with _signing(args.sign_key, args.lookaside) as signing:
        stats = publish(layout, reg, ns, targets, args.dry_run, log=args.log.info, signing=signing)
    if args.json:
        print(json.dumps({"images": len(targets), **stats.to_json(), "dry_run": args.dry_run}, indent=2))
    else:
        print(f"{reg.host}/{ns}: {len(targets)} images; blobs uploaded {stats.uploaded} ({stats.uploaded_bytes} bytes), "
              f"mounted {stats.mounted}, already there {stats.skipped}; manifests pushed {stats.manifests}, "
              f"unchanged {stats.manifests_skipped}; referrers pushed {stats.referrers}, unchanged "
              f"{stats.referrers_unchanged}; signatures written {stats.signatures}"
              + (" (dry run)" if args.dry_run else ""))
    return 0


@command("assemble", "merge per-arch layouts (e.g. CI artifacts) into one layout with multi-arch indexes",
         positionals=(_positional("dest", "layout to write (created when missing)", type=Path),
                      _positional("layouts", "per-arch layouts to merge into it", type=Path, nargs="+")))
def cmd_assemble(args) -> int:
    from builder.oci.assemble import assemble
    refs = assemble(args.dest, args.layouts)
    print(f"{args.dest}: {len(refs)} refs from {len(args.layouts)} layouts")
    return 0


# --- prove --------------------------------------------------------------------------------

@command("reproduce", "rebuild published images from the build recipe attached to each and compare, digest for "
                      "digest (exit 1 naming every difference)",
         options=("mirror", "insecure", "keep", "cache-dir", "allow-writer-drift", "json"),
         positionals=(_positional("refs", "an image: DIR:NAME:TAG (an OCI layout) or docker://HOST/REPO:TAG; an index "
                                          "is reproduced platform by platform", nargs="+", metavar="REF"),))
def cmd_reproduce(args) -> int:
    from builder.runs.reproduce import ReproduceOptions, reproduce
    status, doc = 0, []
    for n, ref in enumerate(args.refs):
        keep = args.keep / str(n) if args.keep and len(args.refs) > 1 else args.keep
        opts = ReproduceOptions(mirror=args.mirror, insecure=args.insecure, keep=keep, cache_dir=args.cache_dir,
                                allow_writer_drift=args.allow_writer_drift)
        for o in reproduce(ref, opts, args.log):
            doc.append({"ref": ref, "image": o.image, "platform": o.platform, "published": o.published,
                        "rebuilt": o.rebuilt, "identical": o.identical,
                        "differences": [d.human() for d in o.differences]})
            if o.identical:
                print(f"{ref} [{o.platform}]: reproduced: {o.published}")
                continue
            status = 1
            print(f"{ref} [{o.platform}]: NOT reproduced: published {o.published}, rebuilt {o.rebuilt}")
            for d in o.differences:
                print(d.human())
    if args.json:
        print(json.dumps({"reproduced": status == 0, "platforms": doc}, indent=2))
    return status


@command("diff", "explain every difference between two builds (layouts, release archives or docker:// refs)",
         options=("json", "insecure"),
         positionals=(_positional("a", "a build: an OCI layout, a release archive or a docker:// ref"),
                      _positional("b", "the other build, likewise")))
def cmd_diff(args) -> int:
    from builder.prove.diff import diff, to_json
    diffs = diff(args.a, args.b, args.insecure)
    if args.json:
        print(to_json(diffs))
    elif diffs:
        for d in diffs:
            print(d.human())
        args.log.info(f"{len(diffs)} differences")
    else:
        print("identical")
    return 1 if diffs else 0


@command("verify", "build twice under perturbation (TZ, umask, locale, hash seed, cache, parallelism) and diff",
         options=SELECT_OPTIONS + ("work", "against"), positionals=(IMAGES,))
def cmd_verify(args) -> int:
    from builder.oci.layout import Layout
    from builder.runs.verify import VerifyRequest, against, verify
    status = 0
    for rel, flavours in _selected(args).items():
        ctx = _context(args, rel)
        ctx.ensure_lock(args.update, args.log.warn, args.allow_downgrade)
        req = VerifyRequest(ctx.project.root, rel, ctx.lock_path, tuple(flavours), tuple(args.arch or ()),
                            ctx.source.mirror, ctx.source.keys, args.zstd, args.squash, ctx.family.name,
                            args.allow_writer_drift)
        res = verify(req, args.work and args.work / rel)
        if args.against:
            unlike = against(args.against / rel, None, res.layouts[0])
            if unlike:
                print(f"{rel}: {args.against / rel} differs from an independent build without caches:")
                for d in unlike:
                    print(d.human())
                raise BuildError(f"{rel}: {args.against / rel} is not what its inputs build: {len(unlike)} differences")
            print(f"{rel}: {args.against / rel} matches an independent build without caches")
        if res.differences:
            status = 1
            print(f"{rel}: NOT reproducible: {len(res.differences)} differences between {res.layouts[0]} and {res.layouts[1]}")
            for d in res.differences:
                print(d.human())
        else:
            print(f"{rel}: reproducible: {len(Layout(res.layouts[0]).refs())} refs identical across two perturbed builds")
    return status


@command("verify-image", "check an image's signature, SBOM (against its own local.sqlite) and provenance (against "
                         "the lock); exit 1 naming each mismatch",
         options=("key", "lookaside", "expected-lock", "insecure", "json"),
         positionals=(_positional("ref", "DIR:NAME:TAG (an OCI layout) or docker://HOST/REPO:TAG (or @sha256:...)"),))
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


@command("audit", "list an image's packages, the newer versions its release's repositories have and the FreeBSD "
                  "advisories (VuXML) covering them; exit 1 on findings (--fail-on)",
         options=("audit-release", "mirror", "keys", "vuxml", "fail-on", "insecure", "json"),
         positionals=(_positional("refs", "an image: DIR:NAME:TAG (an OCI layout), docker://HOST/REPO:TAG (or "
                                          "@sha256:...) or a release archive FILE.txz[:NAME:TAG]; an index is audited "
                                          "platform by platform", nargs="+", metavar="REF"),))
def cmd_audit(args) -> int:
    from builder.common.http import Transport
    from builder.prove.audit import FAIL_ON, HEADER, audit_ref, release_catalogues
    from builder.resolve.vuxml import load
    from builder.runs.context import Context, RunOptions

    def opened(release: str):
        ctx = Context.open(RunOptions(project=args.project, mirror=args.mirror, keys=args.keys), release,
                           _project(args))
        return ctx.source.release, ctx.source.transport

    fail_on = tuple(args.fail_on or FAIL_ON)
    vuxml = load(args.vuxml, Transport())
    catalogues = release_catalogues(opened)
    audits = [a for ref in args.refs for a in audit_ref(ref, vuxml, catalogues, args.release, args.insecure)]
    failed = any(a.failed(fail_on) for a in audits)
    if args.json:
        print(json.dumps({"vuxml": vuxml.summary(), "fail_on": list(fail_on), "findings": failed,
                          "images": [a.to_json() for a in audits]}, indent=2))
        return 1 if failed else 0
    db = vuxml.summary()
    args.log.info(f"vuln.xml: {db['entries']} entries, newest {db['newest'] or 'undated'} ({db['source']})")
    for a in audits:
        print(a.heading())
        print(_table(a.rows(), list(HEADER)))
        for note in a.notes:
            print(f"note: {note}")
        print(f"{a.summary()}\n")
    return 1 if failed else 0


# --- release-level runs -------------------------------------------------------------------

@command("nightly", "release engineering's nightly: outdated, lock, build, verify, publish what changed, report",
         options=("to", "insecure", "user", "password-env", "nightly-out", "state-dir", "report-dir", "no-verify",
                  "sign-key", "lookaside", "allow-downgrade", "allow-writer-drift", "vuxml") + RELEASE_OPTIONS,
         positionals=(_positional("releases", "release lines (default: every file in releases/)", nargs="*",
                                  metavar="RELEASE"),))
def cmd_nightly(args) -> int:
    from builder.oci.registry import credentials
    from builder.runs.nightly import NightlyOptions, run
    releases = args.releases or list(_project(args).releases)
    opts = NightlyOptions(to=args.to, insecure=args.insecure, out=args.out,
                          state_dir=args.state_dir or args.out / "state", report_dir=args.report_dir or args.out / "report",
                          verify=not args.no_verify, auth=credentials(args.user, args.password_env),
                          allow_downgrade=args.allow_downgrade, allow_writer_drift=args.allow_writer_drift,
                          vuxml=args.vuxml)
    with _signing(args.sign_key, args.lookaside or args.out / "lookaside") as signing:
        report = run([_context(args, r) for r in releases], replace(opts, signing=signing), args.log)
    for r in report.releases:
        acts = Counter(img.action for img in r.images)
        print(f"{r.release}: reproducible={r.reproducible} "
              + ", ".join(f"{n} {a}" for a, n in sorted(acts.items()))
              + f"; {len(r.changed_since_last_publish)} package changes")
    print(f"report: {opts.report_dir / 'report.md'}")
    unlike = [r for r in report.releases if r.unlike_independent]
    for r in unlike:
        print(f"{r.release}: nothing published: the layout to publish differs from an independent build without "
              "caches (a poisoned cache?):")
        print("\n".join(r.unlike_independent))
    return 2 if unlike else 1 if any(r.reproducible is False for r in report.releases) else 0


@command("ci", "CI helpers: `ci render` writes the GitHub Actions nightly workflow (ci/github-nightly.yml)",
         options=("workflow-out", "check"),
         positionals=(_positional("action", "what to do: render the workflow", choices=("render",)),))
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
    parser = argparse.ArgumentParser(prog="freebsd-images", description=DESCRIPTION, epilog=EPILOG)
    for key in GLOBAL_OPTIONS:
        OPTIONS[key].add_to(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (arguments, fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        for option in arguments:
            option.add_to(p)
        p.set_defaults(func=fn)
    return parser


def _shown(path: str) -> str:
    """A path as the user would type it: relative to the working directory when it lies below it."""
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return path if rel.startswith("..") else rel


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
        args = resolve(args, os.environ)
        return args.func(args)
    except ConfigError as exc:
        for d in exc.diagnostics:
            # FILE:LINE:COL first, as compilers print it: editors and terminals jump to it
            print(f"{_shown(d.file)}:{d.line}:{d.column}: error: {d.message}", file=sys.stderr)
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
