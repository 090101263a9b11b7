"""freebsd-images: the command line.

Exit codes: 0 success, 1 "differences/updates found" (diff, outdated), 2 errors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from builder.errors import BuildError, ConfigError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    def register(fn):
        COMMANDS[name] = (getattr(fn, "configure", lambda p: None), fn, help)
        return fn
    return register


def arguments(configure: Callable[[argparse.ArgumentParser], None]):
    def wrap(fn):
        fn.configure = configure
        return fn
    return wrap


def _project(args):
    from builder.project import load_project
    return load_project(args.project)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


@command("check", "validate families.yaml and every release file")
@arguments(lambda p: None)
def cmd_check(args) -> int:
    project = _project(args)
    print(f"ok: {len(project.family.flavours)} flavours ({', '.join(project.family.names)}), "
          f"{len(project.releases)} releases ({', '.join(project.releases)})")
    return 0


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--release", action="append", help="only this release (repeatable)")
    p.add_argument("--flavour", action="append", help="only this flavour (repeatable)")
    p.add_argument("--arch", action="append", help="only this arch, FreeBSD or OCI name (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("plan", "list the targets (image x release x arch) and their package sets")
@arguments(_plan_args)
def cmd_plan(args) -> int:
    from builder.plan import targets
    ts = targets(_project(args), args.release, args.flavour, args.arch)
    if args.json:
        json.dump({"targets": [t.to_json() for t in ts]}, sys.stdout, indent=2)
        print()
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


@command("generate", "write a deterministic offline pkgbase mirror for a release")
@arguments(_generate_args)
def cmd_generate(args) -> int:
    from builder.gen.repo import GenOptions, generate, tree_size
    project = _project(args)
    rel = project.release(args.release)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freebsd-images", description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=None,
                        help="project directory holding families.yaml and releases/ (default: $FREEBSD_IMAGES_PROJECT or .)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (configure, fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    # Import command modules that register themselves.
    from builder import commands  # noqa: F401
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        for d in exc.diagnostics:
            print(f"error: {d}", file=sys.stderr)
        return 2
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
