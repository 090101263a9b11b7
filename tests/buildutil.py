"""Helpers shared by the build tests: a project on the fixture repository, tool runners."""
from __future__ import annotations

import json
import hashlib
import os
import subprocess
from pathlib import Path

from builder.common.log import Log
from builder.layers.build import build_arch
from builder.layers.plan import LayerOptions
from builder.runs.context import Context, RunOptions
from builder.oci.layout import Layout
from tests.conftest import PKGREPO, demo_project  # noqa: F401  (demo_project: one implementation, conftest's)

KEYS = PKGREPO / "keys"
REFERENCE = PKGREPO / "reference" / "FreeBSD:14:amd64"

FIXTURE_RELEASE = """
release: "14.2"
branch: releng/14.2
major: 14
kind: release
arches:
  amd64: {{platform: amd64}}
repositories:
  base: {{name: FreeBSD-base, url: "file://{repo}/${{ABI}}/{base}", signature-type: fingerprints, fingerprints: {keys}, priority: 10}}
  ports: {{name: FreeBSD, url: "file://{repo}/${{ABI}}/latest", signature-type: pubkey, pubkey: {keys}/repo.pub}}
image:
  name: "freebsd{{{{ release }}}}-{{{{ flavour }}}}"
  tags: {{immutable: ["{{{{ version }}}}"]}}
"""

REFERENCE_FAMILY = """
schema: 1
flavours:
  reference:
    description: what pkg -r ROOT install put into the reference root
    packages: [FreeBSD-runtime, FreeBSD-caroot, FreeBSD-zoneinfo, FreeBSD-utilities, {name: pkg, repository: ports}]
"""


def fixture_release_yaml(base: str = "base_release_2") -> str:
    return FIXTURE_RELEASE.format(repo=PKGREPO, keys=KEYS, base=base)


def reference_project(tmp_path: Path) -> Path:
    """A project whose one release reads the fixture repository made by FreeBSD's pkg."""
    proj = tmp_path / "refproject"
    (proj / "releases").mkdir(parents=True)
    (proj / "families.yaml").write_text(REFERENCE_FAMILY)
    (proj / "releases" / "14.2.yaml").write_text(fixture_release_yaml())
    return proj


def context(project: Path, release: str = "14.2", cache: Path | None = None, **kw) -> Context:
    where = RunOptions(project=project, arches=tuple(kw.get("arch") or ()), mirror=kw.get("mirror"), keys=kw.get("keys"),
                  lock=kw.get("lock"), lock_dir=kw.get("lock_dir"), cache_dir=cache)
    return Context.open(where, release)


def build_one_arch(ctx: Context, arch: str, out: Path, epoch: int = 1731456000, warn=None, **opts):
    lock = ctx.ensure_lock()
    layout = Layout(out).init()

    def sink(write):
        return layout.put_stream(write)[0]

    paths = ctx.fetch_locked(lock, arch)
    more = {"warn": warn} if warn is not None else {}
    results = build_arch(ctx.family, ctx.target.release, arch, lock.arches[arch],
                         paths, LayerOptions(epoch=epoch, **opts), sink, **more)
    return results, layout


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


def reachable_by_hand(root: Path) -> set[str]:
    """Every digest an OCI layout's index.json reaches, walked here with plain JSON, following the
    image-spec (index -> manifests, manifest -> config and layers) rather than the layout's own walk."""
    blobs = Path(root) / "blobs" / "sha256"
    seen: set[str] = set()
    todo = list(json.loads((Path(root) / "index.json").read_text())["manifests"])
    while todo:
        desc = todo.pop()
        if desc["digest"] in seen:
            continue
        seen.add(desc["digest"])
        if desc["mediaType"] not in (INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE):
            continue
        doc = json.loads((blobs / desc["digest"].split(":", 1)[1]).read_bytes())
        if desc["mediaType"] == INDEX_MEDIA_TYPE:
            todo += doc["manifests"]
        else:
            todo += [doc["config"]] + doc["layers"]
    return seen


def walk_tree(root: Path) -> dict:
    """path -> (type, mode, size, sha256 or link target) of an unpacked tree, as the model's tree() gives it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = "/" + str(p.relative_to(root))
            st = p.lstat()
            mode = st.st_mode & 0o7777
            if p.is_symlink():
                out[rel] = ("l", 0o777, 0, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d", mode, 0, "")
            else:
                out[rel] = ("f", mode, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def build_demo_family(mirror: Path, tmp: Path):
    """The demo family, both arches, built in-process: (ReleaseBuild, Context, tmp)."""
    from builder.runs.images import build_release
    ctx = context(demo_project(tmp), cache=tmp / "cache", mirror=f"file://{mirror}", keys=mirror / "keys",
                  lock_dir=tmp / "locks")
    lock = ctx.ensure_lock()
    return build_release(ctx, lock, tmp / "out", log=Log(-1)), ctx, tmp


def tree(fs) -> list[tuple[str, str, int, int, str]]:
    """(path, type, mode, size, sha256-or-target) per node of a filesystem model: what a consumer of
    the image should see (compared with what umoci unpacks)."""
    out = []
    for p in sorted(fs.nodes, key=lambda p: tuple(p.strip("/").split("/"))):
        n = fs.nodes[p]
        kind = {"file": "f", "hardlink": "f", "dir": "d", "symlink": "l"}[n.kind]
        out.append((p, kind, n.mode, n.size if kind == "f" else 0,
                    n.target if kind == "l" else (n.sha256 if kind == "f" else "")))
    return out


def read_members(path: Path, what: str, wanted: set[str]) -> dict[str, bytes]:
    """Whole members of a package or catalogue archive, by name."""
    from builder.common.archive import iter_tar
    out: dict[str, bytes] = {}
    with open(path, "rb") as fh:
        for member, tar in iter_tar(fh, what):
            if member.name in wanted and member.isfile():
                f = tar.extractfile(member)
                out[member.name] = f.read() if f else b""
    return out
