"""Build the family's root filesystems for one arch and write each flavour's layer.

Plain data in, plain data out: locked package files and the family go in; per flavour, the
filesystem model, the layer blob(s) and what was installed come out. ``build_arch`` plans first
(layers/plan.py: keys, cache hits, which filesystems to assemble), then runs one ``build_flavour``
per step, in family order, each from a copy of its parent's filesystem, so each layer holds exactly
the flavour's delta. A flavour is built in named steps: assemble, post-install, package database,
checks, write layer.
"""
from __future__ import annotations

import hashlib
import posixpath
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from builder.common import compress
from builder.common.hashing import file_digest
from builder.common.templates import render_file
from builder.config.family import Family
from builder.config.release import Release
from builder.errors import BuildError, ConfigError
from builder.install import certctl, closure, dbtools, mtree, pkgconf
from builder.install.fsmodel import FileSystem, Node, delta
from builder.install.pkgdb import Registration, build_pkgdb, writer_version
from builder.install.scan import install
from builder.install.scripts import recognise
from builder.layers.cache import CacheEntry, LayerCache, ScanCache
from builder.layers.plan import (KeyInputs, LayerOptions, LayerStep, image_version, layer_keys, schedule,
                                 wanted_flavours)
from builder.layers.source import Packages, PackageSource
from builder.layers.writer import IdMap, LayerInfo, PackageFile, write_layer
from builder.resolve.lock import ArchLock

PKGDB_PATH = "/var/db/pkg/local.sqlite"
MAX_KEY_FILE = 64 << 10

# BlobSink(write) runs write(fh) into a new blob and returns its LayerInfo.
BlobSink = Callable[[Callable], LayerInfo]
# progress(flavour, its result or None when it starts, seconds it took)
Progress = Callable[[str, Optional["FlavourResult"], float], None]


@dataclass
class FlavourResult:
    flavour: str
    parent: Optional[str]
    arch: str
    fs: Optional[FileSystem]              # None for a cached layer no flavour is built on
    layers: list[LayerInfo]               # bottom first, the whole image's layers
    history: list[str]                    # one line per layer: what it installed
    installed: list[str]                  # registered packages, sorted
    added: list[str]                      # packages this flavour added
    version: str                          # FreeBSD version (the version package's version)
    config: object = None                 # the resolved ImageConfig
    description: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    closure: Optional[closure.Closure] = None   # the image's shared-library closure
    reused: bool = False                  # its top layer came from the layer cache
    # each registered package's +MANIFEST without its file lists: what an SBOM says of it
    manifests: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class ArchJob:
    """What every flavour of one arch is built with."""
    family: Family
    release: Release                      # as declared: its URLs are written into the image
    arch: str
    lock: ArchLock
    opts: LayerOptions
    sink: BlobSink
    repo_names: dict[str, str]
    version: str
    warn: Callable[[str], None]
    cache: Optional[LayerCache] = None
    workers: Optional[compress.Workers] = None

    def where(self, fname: str) -> str:
        # the platform as the image's refs name it (arm64), not FreeBSD's arch (aarch64)
        return (f"{self.release.name}/{self.release.arch(self.arch).platform} image {self.release.render_name(fname)} "
                f"(flavour {fname})")


# --- the pieces a flavour's filesystem is assembled from ---------------------------------------

def _generated(path: str, data: bytes, mode: int, epoch: int, tool: str, uname: str = "root",
               gname: str = "wheel") -> Node:
    return Node(path, "file", mode, uname, gname, epoch, len(data), hashlib.sha256(data).hexdigest(),
                source=f"generated:{tool}", data=data)


def _skeleton(fs: FileSystem, package: str, specs: tuple[str, ...], source: PackageSource, epoch: int) -> None:
    """The directories of the package's mtree specs (/etc/mtree/BSD.*.dist): what installworld makes."""
    by_path = {n.path for n in source.scanned(package).nodes}
    for spec in specs:
        path = f"/etc/mtree/{spec}"
        if path not in by_path:
            raise BuildError(f"skeleton: package {package} has no {path}")
        root = mtree.SPEC_ROOTS.get(spec)
        if root is None:
            raise BuildError(f"skeleton: no known root for mtree spec {spec}")
        text = source.member(package, path).decode("utf-8", "replace")
        for e in mtree.parse(text, root, f"{package}:{path}"):
            if e.type != "dir" or e.path == "/" or e.path in fs.nodes:
                continue
            fs.add(Node(e.path, "dir", e.mode, e.uname, e.gname, epoch, source="skeleton"), "skeleton")


def render_files(family: Family, release: Release, fname: str, arch: str) -> tuple[bytes, ...]:
    """A flavour's files as written into the image: templates rendered, inline contents as they are."""
    return tuple(render_file(family.base_dir, f.template, f"flavour {fname}", release=release,
                             repository=release.repository("base"), repositories={r.key: r for r in release.repositories},
                             flavour=fname, arch=arch, abi=release.abi(arch)).encode()
                 if f.template else f.content.encode() for f in family.resolve(fname).files)


def trust_roots(release: Release, keys: tuple[str, ...]) -> list[tuple[str, list[tuple[str, Path]]]]:
    """(image directory, [(image path, file)]) per repository whose trust roots an image gets.

    From the project's keys/ (laid out like /usr/share/keys), where pkg's configuration in the
    image looks for them: what FreeBSD's own image script copies from share/keys in the source
    tree. The one walk both the layer key and the image use."""
    root = Path(release.base_dir).resolve()
    out = []
    for key in keys:
        repo = release.repository(key)
        if repo.signature_type != "fingerprints" or repo.fingerprints is None:
            continue
        src = Path(repo.fingerprints).resolve()
        if src != root and root not in src.parents:
            raise BuildError(f"repository {key} trusts {repo.fingerprints}, outside the project {root}")
        if not (src / "trusted").is_dir():
            raise BuildError(f"repository {key} ({repo.name}) trusts {repo.fingerprints}, which has no "
                             "trusted/ directory: copy FreeBSD's /usr/share/keys/<dir> into keys/ (keys/README.md)")
        files = []
        for sub in ("trusted", "revoked"):
            for f in sorted((src / sub).iterdir()) if (src / sub).is_dir() else ():
                if f.name.startswith(".") or f.is_symlink() or not f.is_file():
                    continue
                if f.stat().st_size > MAX_KEY_FILE:
                    raise BuildError(f"{f} is larger than {MAX_KEY_FILE} bytes: not a fingerprint file")
                files.append((f"{repo.image_fingerprints}/{sub}/{f.name}", f))
        out.append((repo.image_fingerprints, files))
    return out


def _trust(fs: FileSystem, release: Release, keys: tuple[str, ...], epoch: int, what: str) -> None:
    """The trust roots of these repositories into the image; paths already there are left as they are."""
    for dest, files in trust_roots(release, keys):
        for d in (posixpath.dirname(dest), dest, f"{dest}/trusted", f"{dest}/revoked"):
            if d not in fs.nodes:
                fs.add(Node(d, "dir", 0o755, "root", "wheel", epoch, source="trust"), what)
        for path, f in files:
            if path not in fs.nodes:
                fs.add(_generated(path, f.read_bytes(), 0o644, epoch, "trust"), what)


def key_inputs(family: Family, release: Release, fname: str, arch: str) -> KeyInputs:
    """What a flavour's layer key covers that lives in files: read here, at the edge, for the plan."""
    fl = family.resolve(fname)
    return KeyInputs(rendered=render_files(family, release, fname, arch),
                     trust=tuple((path, file_digest(f)) for _, files in trust_roots(release, fl.trust)
                                 for path, f in files))


def _extract(fs: FileSystem, ex, source: PackageSource, release: Release, epoch: int) -> None:
    """Files of a package put into the image without installing (registering) the package."""
    by_path: dict[str, Node] = {}
    owner: dict[str, str] = {}
    for n in release.map_packages([ex.package]):
        for node in source.scanned(n).nodes:
            if node.path not in by_path:
                by_path[node.path] = node
                owner[node.path] = n
    what = f"extract from {ex.package}"
    for p in ex.paths:
        if p not in by_path:
            raise BuildError(f"package {ex.package} has no {p} to extract")
        if p not in fs.nodes:
            fs.add(replace(by_path[p], owner=""), what)
    for d in ex.under:
        below = sorted((p for p in by_path if p.startswith(d.rstrip("/") + "/")),
                       key=lambda p: tuple(p.strip("/").split("/")))
        if not below:
            raise BuildError(f"package {ex.package} has nothing under {d} to extract")
        for p in below:
            node = by_path[p]
            if node.kind == "hardlink" and node.target not in fs.nodes and node.target not in below:
                raise BuildError(f"{what}: {p} is a hard link to {node.target}, which is not extracted")
            if p not in fs.nodes:
                fs.add(replace(node, owner=""), what)
    for src, dst in ex.copies:
        node = by_path.get(src)
        if node is None or node.kind not in ("file", "hardlink"):
            raise BuildError(f"package {ex.package} has no file {src} to copy to {dst}")
        if dst not in fs.nodes:
            data = source.member(owner[src], node.target if node.kind == "hardlink" else node.path)
            fs.add(_generated(dst, data, node.mode, epoch, f"extract:{ex.package}", node.uname, node.gname), what)


# --- post-install work -------------------------------------------------------------------------

def _done_below(parent: Optional[FileSystem], fs: FileSystem, inputs: list[str], tool: str,
                outputs: Optional[list[str]] = None) -> bool:
    """Whether the parent ran ``tool`` on these very inputs and its outputs are still in place.

    The tools are pure functions of their inputs' bytes, so running them again would write the
    same bytes: a flavour that adds no user, service or certificate keeps its parent's databases.
    ``outputs`` None means every node the tool generated in the parent (certctl's links).
    """
    if parent is None:
        return False
    made = [p for p, n in parent.nodes.items() if n.source == f"generated:{tool}"] if outputs is None else outputs
    still = [p for p, n in fs.nodes.items() if n.source == f"generated:{tool}"] if outputs is None else outputs
    return (bool(made) and made == still
            and all(p in parent.nodes and p in fs.nodes and parent.nodes[p].same_as(fs.nodes[p]) for p in inputs)
            and all(parent.nodes.get(p) is not None and parent.nodes[p].source == f"generated:{tool}"
                    and fs.nodes.get(p) is parent.nodes[p] for p in made))


# tool -> (its one input, the outputs and their modes, the function of the input's bytes: looked up
# when called, so a test can count the calls)
_DATABASES = {
    "pwd_mkdb": ("/etc/master.passwd", (("/etc/passwd", 0o644), ("/etc/pwd.db", 0o644), ("/etc/spwd.db", 0o600)),
                 lambda data: dbtools.pwd_mkdb(data)),
    "services_mkdb": ("/etc/services", (("/var/db/services.db", 0o644),),
                      lambda data: {"/var/db/services.db": dbtools.services_mkdb(data)}),
    "cap_mkdb": ("/etc/login.conf", (("/etc/login.conf.db", 0o644),),
                 lambda data: {"/etc/login.conf.db": dbtools.cap_mkdb(data)}),
}


def _post_install(fs: FileSystem, actions: set[str], source: PackageSource, epoch: int,
                  parent: Optional[FileSystem] = None) -> None:
    # pwd_mkdb runs whenever there is a master.passwd: the official static
    # image has its databases too, though no package script ran there.
    for tool in ("pwd_mkdb", "services_mkdb", "cap_mkdb"):
        src, outputs, make = _DATABASES[tool]
        if (tool != "pwd_mkdb" and tool not in actions) or src not in fs.nodes:
            continue
        if _done_below(parent, fs, [src], tool, [p for p, _ in outputs]):
            continue
        made = make(source.read(fs, [src])[src])
        for path, mode in outputs:
            fs.add(_generated(path, made[path], mode, epoch, tool), tool, allow_replace=True)
    if "certctl" in actions:
        _certctl(fs, source, epoch, parent)


def _certctl(fs: FileSystem, source: PackageSource, epoch: int, parent: Optional[FileSystem]) -> None:
    def certs(tree: FileSystem) -> list[str]:
        return sorted(p for p, n in tree.nodes.items() if certctl.wanted(p) and n.kind in ("file", "hardlink"))

    inputs = certs(fs)
    # an added or removed certificate is a changed input too
    if parent is not None and certs(parent) == inputs and _done_below(parent, fs, inputs, "certctl"):
        return
    for old in [p for p in fs.nodes if p.startswith(("/etc/ssl/certs/", "/etc/ssl/untrusted/", "/etc/ssl/blacklisted/"))
                and fs.nodes[p].source == "generated:certctl"]:
        del fs.nodes[old]
    for link in certctl.rehash(source.read(fs, inputs)):
        fs.add(Node(link.path, "symlink", 0o777, mtime=epoch, sha256=hashlib.sha256(link.target.encode()).hexdigest(),
                    target=link.target, source="generated:certctl"), "certctl", allow_replace=True)


# --- one flavour, in named steps ---------------------------------------------------------------

def assemble(job: ArchJob, fname: str, source: PackageSource, parent: Optional[FlavourResult],
             rendered: tuple[bytes, ...]) -> tuple[FileSystem, set[str]]:
    """The flavour's filesystem from its parent's, and the post-install actions its packages ask for:
    skeleton, packages, extracted files, trust roots, the flavour's files, removals."""
    fl = job.family.resolve(fname)
    epoch = job.opts.epoch
    fs = parent.fs.copy() if parent else FileSystem()
    before = set(parent.installed) if parent else set()
    if fl.skeleton and (parent is None or job.family.resolve(parent.flavour).skeleton != fl.skeleton):
        _skeleton(fs, job.release.map_packages([fl.skeleton.package])[0], fl.skeleton.specs, source, epoch)
    actions: set[str] = set(fl.post_install)
    ignored = dict(fl.ignore_scripts)
    for name in job.lock.flavours[fname].packages:
        sp = source.scanned(name)
        actions |= recognise(name, sp.manifest.get("scripts") or {}, ignored)
        if name not in before:
            install(fs, sp)
    for ex in fl.extract:
        _extract(fs, ex, source, job.release, epoch)
    # build_flavour names the image and flavour: these name only the step
    _trust(fs, job.release, fl.trust, epoch, "trust roots")
    for f, data in zip(fl.files, rendered):
        fs.add(_generated(f.path, data, f.mode, epoch, "family", f.uname, f.gname), "the flavour's files",
               allow_replace=True)
    for r in fl.remove:
        fs.remove(r)
    return fs, actions


def package_database(job: ArchJob, fname: str, fs: FileSystem, source: PackageSource) -> None:
    """pkg's local.sqlite registering the flavour's packages, as `pkg install` would leave it."""
    entry = job.lock.flavours[fname]
    automatic = set(entry.automatic)
    regs = []
    for name in sorted(entry.packages):
        sp = source.scanned(name)
        repo = job.lock.packages[name].repository
        regs.append(Registration(sp.manifest, job.repo_names.get(repo, repo), name in automatic,
                                 tuple(sorted(sp.config.items()))))
    if regs:
        db = build_pkgdb(regs, job.opts.epoch, job.release.pkgdb_user_version)
        fs.add(_generated(PKGDB_PATH, db, 0o644, job.opts.epoch, "pkg"), "pkg", allow_replace=True)


def check_image(job: ArchJob, fname: str, fs: FileSystem, source: PackageSource) -> closure.Closure:
    """pkg's configuration names trust roots the image has; every ELF file finds its libraries."""
    fl = job.family.resolve(fname)
    untrusted = pkgconf.problems(fs, lambda paths: source.read(fs, paths))
    if untrusted:
        raise BuildError("pkg's configuration names trust roots the image does not have:\n  "
                         + "\n  ".join(untrusted) + "\n  Install them with the flavour's `trust: [REPOSITORY...]` "
                         "(from keys/) or point the configuration at a directory the image has")
    where = job.where(fname)
    links, unused = closure.check(fs, where, static=fl.static, accept=fl.accept_missing,
                                  read=lambda paths: source.read(fs, paths), providers=source.providers,
                                  installed=list(job.lock.flavours[fname].packages))
    for miss, reason in links.accepted:
        job.warn(f"{where}: {miss.elf} ({miss.package}) needs {miss.kind} {miss.soname}, which is not in the image; "
                 f"accepted in families.yaml: {reason}")
    own = set(job.family.flavours[fname].accept_missing)
    for a in unused:
        if a in own:
            job.warn(f"{where}: accept-missing-libraries entry {a.elf} / {a.soname} matches nothing that is missing; "
                     "remove it from families.yaml")
    return links


def write_flavour_layer(job: ArchJob, step: LayerStep, fs: FileSystem, source: PackageSource,
                        parent: Optional[FlavourResult], actions: set[str], links: closure.Closure) -> FlavourResult:
    """The flavour's layer (its delta over the parent, or the whole tree when squashed), into the sink
    and the layer cache."""
    fname, opts = step.flavour, job.opts
    names = sorted(job.lock.flavours[fname].packages)
    added = sorted(set(names) - set(parent.installed if parent else ()))
    history = f"{fname}: {', '.join(added) if added else 'no packages'}" + (
        " + " + ", ".join(sorted(actions)) if actions else "")
    if opts.squash or parent is None:
        nodes, whiteouts = list(fs.nodes.values()), []
        if opts.squash:
            history = f"{fname}: " + ", ".join(names)
    else:
        nodes, whiteouts = delta(parent.fs, fs)
    described = {n: _describe(source.scanned(n).manifest) for n in names}
    # only the packages whose bytes go into this layer
    pkg_files = {n: PackageFile(source.path(n), source.scanned(n).sha256)
                 for n in sorted({x.source[4:] for x in nodes if x.source.startswith("pkg:")})}
    ids = _ids(fs, source)
    info = job.sink(lambda fh: write_layer(fh, nodes, whiteouts, pkg_files, ids, opts.epoch, opts.compression,
                                           job.workers))
    entry = CacheEntry(layer=info, history=history, installed=tuple(names), added=tuple(added),
                       closure=links.to_json(), manifests=described)
    if job.cache:
        job.cache.put(step.key, entry)
        if step.keep_fs:
            job.cache.put_fs(step.key, fs)
    return _result(job, fname, parent, entry, fs, links, reused=False)


def _result(job: ArchJob, fname: str, parent: Optional[FlavourResult], entry: CacheEntry, fs: Optional[FileSystem],
            links: Optional[closure.Closure], reused: bool) -> FlavourResult:
    fl = job.family.resolve(fname)
    below = parent is not None and not job.opts.squash
    return FlavourResult(
        flavour=fname, parent=parent.flavour if parent else None, arch=job.arch, fs=fs,
        layers=(list(parent.layers) if below else []) + [entry.layer],
        history=(list(parent.history) if below else []) + [entry.history], installed=list(entry.installed),
        added=list(entry.added), version=job.version, config=fl.config, description=fl.description,
        versions={n: job.lock.packages[n].version for n in entry.installed}, closure=links, reused=reused,
        manifests=dict(entry.manifests))


def reuse(job: ArchJob, fname: str, entry: CacheEntry, fs: Optional[FileSystem],
          parent: Optional[FlavourResult]) -> FlavourResult:
    """A flavour whose layer the cache holds; ``fs`` only when a flavour built on it needs it."""
    links = closure.Closure.from_json(entry.closure) if entry.closure else None
    for miss, reason in links.accepted if links else ():
        job.warn(f"{job.where(fname)}: {miss.elf} ({miss.package}) needs {miss.kind} {miss.soname}; "
                 f"accepted in families.yaml: {reason}")
    return _result(job, fname, parent, entry, fs, links, reused=True)


def build_flavour(job: ArchJob, step: LayerStep, source: PackageSource, parent: Optional[FlavourResult],
                  rendered: tuple[bytes, ...], hit: Optional[CacheEntry]) -> FlavourResult:
    """One flavour whose filesystem is assembled: every refusal names the image, arch and flavour once."""
    try:
        fs, actions = assemble(job, step.flavour, source, parent, rendered)
        _post_install(fs, actions, source, job.opts.epoch, parent.fs if parent else None)
        fs.verify("the assembled filesystem")
        package_database(job, step.flavour, fs, source)
        if hit is not None:
            # Its layer is cached: the filesystem was assembled only for the flavours built on it,
            # and the checks below passed when the layer was built (the entry holds their results).
            job.cache.put_fs(step.key, fs)
            return reuse(job, step.flavour, hit, fs, parent)
        links = check_image(job, step.flavour, fs, source)
        return write_flavour_layer(job, step, fs, source, parent, actions, links)
    except ConfigError:
        raise
    except BuildError as exc:
        where = job.where(step.flavour)
        raise BuildError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from exc


# --- one arch ----------------------------------------------------------------------------------

def plan_arch(job: ArchJob, wanted: list[str]) -> tuple[list[LayerStep], dict[str, CacheEntry],
                                                        dict[str, FileSystem], dict[str, tuple[bytes, ...]]]:
    """The steps for one arch, with the cache entries and filesystems they reuse and each flavour's files.

    The plan is pure; this is its edge: files are read for the keys, the cache asked for hits, and a
    filesystem the plan wants from the cache that turns out damaged is dropped and the plan made again."""
    family, release = job.family, job.release
    inputs = {}
    for f in wanted:
        try:
            inputs[f] = key_inputs(family, release, f, job.arch)
        except ConfigError:
            raise
        except BuildError as exc:
            raise BuildError(f"{job.where(f)}: {exc}") from exc
    env = {"layers": compress.versions()[job.opts.compression], "pkgdb": writer_version()}
    keys = layer_keys(family, release, job.arch, job.lock, job.opts, wanted, inputs, job.repo_names, env)
    hits = {f: e for f in wanted if job.cache and (e := job.cache.get(keys[f])) is not None}
    parents = {f: family.flavours[f].parent for f in wanted}
    bases = frozenset({family.flavours[f].parent for f in family.names} - {None})
    loaded: dict[str, FileSystem] = {}
    fs_ok = set(hits)
    while True:
        steps = schedule(wanted, parents, keys, frozenset(hits), frozenset(fs_ok), bases)
        missing = [s.flavour for s in steps if s.load_fs and s.flavour not in loaded]
        for f in missing:
            got = job.cache.get_fs(keys[f])
            if got is None:
                fs_ok.discard(f)
                break
            loaded[f] = got
        else:
            return steps, hits, loaded, {f: inputs[f].rendered for f in wanted}


def build_arch(family: Family, release: Release, arch: str, lock: ArchLock, packages: Packages,
               opts: LayerOptions, sink: BlobSink, flavours: Optional[list[str]] = None,
               repo_names: Optional[dict[str, str]] = None, warn: Callable[[str], None] = lambda m: None,
               cache: Optional[LayerCache] = None, scans_cache: Optional[ScanCache] = None,
               workers: Optional[compress.Workers] = None, progress: Progress = lambda *a: None) -> dict[str, FlavourResult]:
    """Every flavour (or those named, with their ancestors) for one arch.

    ``release`` must be the release as declared (not re-rooted on a mirror): its URLs are written
    into the image. ``packages`` may be a function that fetches the named packages (PackageSource).
    ``workers`` compress the layers' blocks (speed only, never the bytes). ``progress(flavour, result,
    seconds)`` is told when a flavour starts (result None) and as soon as its layer is done.
    """
    job = ArchJob(family=family, release=release, arch=arch, lock=lock, opts=opts, sink=sink,
                  repo_names=repo_names or {r.key: r.name for r in release.repositories},
                  version=image_version(release, lock), warn=warn, cache=cache, workers=workers)
    source = PackageSource(f"{release.name}/{release.arch(arch).platform}", arch, opts.epoch, lock, packages,
                           scans_cache)
    steps, hits, loaded, rendered = plan_arch(job, wanted_flavours(family, flavours))
    # The packages of the layers to write, fetched together (in parallel) rather than one by one.
    source.fetch([n for s in steps if s.write for n in lock.flavours[s.flavour].packages if source.available(n)])
    results: dict[str, FlavourResult] = {}
    for step in steps:
        parent = results[step.parent] if step.parent else None
        start = time.monotonic()
        progress(step.flavour, None, 0.0)
        if step.assemble:
            results[step.flavour] = build_flavour(job, step, source, parent, rendered[step.flavour],
                                                  hits.get(step.flavour))
        else:
            results[step.flavour] = reuse(job, step.flavour, hits[step.flavour], loaded.get(step.flavour), parent)
        progress(step.flavour, results[step.flavour], time.monotonic() - start)
    return results


DESCRIBING = ("name", "origin", "version", "comment", "www", "maintainer", "licenses", "licenselogic", "deps")


def _describe(manifest: dict) -> dict:
    return {k: manifest[k] for k in DESCRIBING if k in manifest}


def _ids(fs: FileSystem, source: PackageSource) -> IdMap:
    have = [p for p in ("/etc/master.passwd", "/etc/group") if p in fs.nodes and fs.nodes[p].kind == "file"]
    got = source.read(fs, have)
    return IdMap(got.get("/etc/master.passwd"), got.get("/etc/group"))
