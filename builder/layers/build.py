"""Build the family's root filesystems for one arch and write each flavour's layer.

Plain data in, plain data out: locked package files and the family go in;
per flavour, the filesystem model, the layer blob(s) and what was installed
come out. Flavours are built in family order, each from a copy of its
parent's filesystem, so each layer holds exactly the flavour's delta.
"""
from __future__ import annotations

import hashlib
import posixpath
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Union


from builder.common import compress
from builder.install import mtree
from builder.common.templates import render_file
from builder.config.family import Family, ResolvedFlavour
from builder.config.release import Release
from builder.errors import BuildError
from builder.install.fsmodel import FileSystem, Node, delta
from builder.install.scan import ScannedPackage, install, read_member, scan_package
from builder.layers.writer import IdMap, LayerInfo, PackageFile, write_layer
from builder.resolve.lock import ArchLock
from builder.install.pkgdb import Registration, build_pkgdb, writer_version
from builder.layers.cache import SCAN_ENTRY, LayerCache, ScanCache, layer_key
from builder.install import certctl, closure, dbtools, pkgconf
from builder.install.scripts import recognise

PKGDB_PATH = "/var/db/pkg/local.sqlite"

# BlobSink(write) runs write(fh) into a new blob and returns its LayerInfo.
BlobSink = Callable[[Callable], LayerInfo]


@dataclass(frozen=True)
class BuildOptions:
    epoch: int
    compression: str = "gzip"     # gzip | zstd
    squash: bool = False          # one layer per image instead of one per flavour


@dataclass
class FlavourResult:
    flavour: str
    parent: Optional[str]
    arch: str
    fs: FileSystem
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


class _Contents:
    """Small file contents from packages or generated nodes.

    A package's config files come from its scan (which keeps them for the
    pkg database); any other member is read in one pass over its package per
    request, and remembered: every flavour's post-install work asks for the
    same files (master.passwd, the CA certificates) again.
    """

    def __init__(self, package_path: Callable[[str], Path], scanned: Callable[[str], ScannedPackage]):
        self.package_path = package_path
        self.scanned = scanned
        self.seen: dict[tuple[str, str], bytes] = {}

    def read(self, fs: FileSystem, paths: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        per_pkg: dict[str, dict[str, list[str]]] = {}   # package -> member -> every path naming it (hard links)
        for p in paths:
            node = fs.nodes[p]
            if node.data is not None:
                out[p] = node.data
            elif node.source.startswith("pkg:"):
                pkg, member = node.source[4:], node.target if node.kind == "hardlink" else node.path
                got = self.seen.get((pkg, member))
                if got is None:
                    got = self.scanned(pkg).config.get(member)
                if got is not None:
                    out[p] = got
                else:
                    per_pkg.setdefault(pkg, {}).setdefault(member, []).append(p)
        for pkg, members in sorted(per_pkg.items()):
            got = read_member(self.package_path(pkg), pkg, set(members))
            for member, ps in members.items():
                self.seen[(pkg, member)] = got[member]
                for p in ps:
                    out[p] = got[member]
        return out


def _generated(path: str, data: bytes, mode: int, epoch: int, tool: str, uname: str = "root",
               gname: str = "wheel") -> Node:
    return Node(path, "file", mode, uname, gname, epoch, len(data), hashlib.sha256(data).hexdigest(),
                source=f"generated:{tool}", data=data)


def _skeleton(fs: FileSystem, fl: ResolvedFlavour, contents: _Contents, scanned: Callable[[str], ScannedPackage],
              epoch: int) -> None:
    skel = fl.skeleton
    pkg = scanned(skel.package)
    by_path = {n.path: n for n in pkg.nodes}
    tmp = FileSystem({n.path: n for n in pkg.nodes})
    specs = {}
    for spec in skel.specs:
        path = f"/etc/mtree/{spec}"
        if path not in by_path:
            raise BuildError(f"skeleton: package {skel.package} has no {path}")
        specs[spec] = path
    texts = contents.read(tmp, sorted(specs.values()))
    for spec in skel.specs:
        root = mtree.SPEC_ROOTS.get(spec)
        if root is None:
            raise BuildError(f"skeleton: no known root for mtree spec {spec}")
        for e in mtree.parse(texts[specs[spec]].decode("utf-8", "replace"), root, f"{skel.package}:{specs[spec]}"):
            if e.type != "dir" or e.path == "/" or e.path in fs.nodes:
                continue
            fs.add(Node(e.path, "dir", e.mode, e.uname, e.gname, epoch, source="skeleton"), "skeleton")


def _render(base_dir: Path, template: str, release: Release, flavour: str, arch: str) -> bytes:
    return render_file(base_dir, template, f"flavour {flavour}", release=release, repository=release.repository("base"),
                       repositories={r.key: r for r in release.repositories}, flavour=flavour, arch=arch,
                       abi=release.abi(arch)).encode()


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


def _post_install(fs: FileSystem, actions: set[str], contents: _Contents, epoch: int,
                  parent: Optional[FileSystem] = None) -> None:
    def put(path: str, data: bytes, mode: int, tool: str) -> None:
        fs.add(_generated(path, data, mode, epoch, tool), tool, allow_replace=True)

    pwd = ["/etc/passwd", "/etc/pwd.db", "/etc/spwd.db"]
    if "/etc/master.passwd" in fs.nodes and not _done_below(parent, fs, ["/etc/master.passwd"], "pwd_mkdb", pwd):
        # pwd_mkdb runs whenever there is a master.passwd: the official static
        # image has its databases too, though no package script ran there.
        out = dbtools.pwd_mkdb(contents.read(fs, ["/etc/master.passwd"])["/etc/master.passwd"])
        put("/etc/passwd", out["/etc/passwd"], 0o644, "pwd_mkdb")
        put("/etc/pwd.db", out["/etc/pwd.db"], 0o644, "pwd_mkdb")
        put("/etc/spwd.db", out["/etc/spwd.db"], 0o600, "pwd_mkdb")
    if ("services_mkdb" in actions and "/etc/services" in fs.nodes
            and not _done_below(parent, fs, ["/etc/services"], "services_mkdb", ["/var/db/services.db"])):
        put("/var/db/services.db", dbtools.services_mkdb(contents.read(fs, ["/etc/services"])["/etc/services"]),
            0o644, "services_mkdb")
    if ("cap_mkdb" in actions and "/etc/login.conf" in fs.nodes
            and not _done_below(parent, fs, ["/etc/login.conf"], "cap_mkdb", ["/etc/login.conf.db"])):
        put("/etc/login.conf.db", dbtools.cap_mkdb(contents.read(fs, ["/etc/login.conf"])["/etc/login.conf"]),
            0o644, "cap_mkdb")
    if "certctl" in actions:
        def certs(tree: FileSystem) -> list[str]:
            return sorted(p for p, n in tree.nodes.items() if certctl.wanted(p) and n.kind in ("file", "hardlink"))

        inputs = certs(fs)
        # an added or removed certificate is a changed input too
        if parent is None or certs(parent) != inputs or not _done_below(parent, fs, inputs, "certctl"):
            for old in [p for p in fs.nodes if p.startswith(("/etc/ssl/certs/", "/etc/ssl/untrusted/",
                                                              "/etc/ssl/blacklisted/"))
                        and fs.nodes[p].source == "generated:certctl"]:
                del fs.nodes[old]
            for link in certctl.rehash(contents.read(fs, inputs)):
                fs.add(Node(link.path, "symlink", 0o777, mtime=epoch,
                            sha256=hashlib.sha256(link.target.encode()).hexdigest(), target=link.target,
                            source="generated:certctl"), "certctl", allow_replace=True)


MAX_KEY_FILE = 64 << 10


def _trust(fs: FileSystem, release: Release, keys: tuple[str, ...], epoch: int, what: str) -> None:
    """The trust roots of these repositories, from the project's keys/ (laid out like /usr/share/keys),
    where pkg's configuration in the image looks for them: what FreeBSD's own image script copies
    from share/keys in the source tree. Paths already in the image are left as they are."""
    root = Path(release.base_dir).resolve()
    for key in keys:
        repo = release.repository(key)
        if repo.signature_type != "fingerprints" or repo.fingerprints is None:
            continue
        src = Path(repo.fingerprints).resolve()
        if src != root and root not in src.parents:
            raise BuildError(f"{what}: repository {key} trusts {repo.fingerprints}, outside the project {root}")
        if not (src / "trusted").is_dir():
            raise BuildError(f"{what}: repository {key} ({repo.name}) trusts {repo.fingerprints}, which has no "
                             "trusted/ directory: copy FreeBSD's /usr/share/keys/<dir> into keys/ (keys/README.md)")
        dest = repo.image_fingerprints
        for d in (posixpath.dirname(dest), dest, f"{dest}/trusted", f"{dest}/revoked"):
            if d not in fs.nodes:
                fs.add(Node(d, "dir", 0o755, "root", "wheel", epoch, source="trust"), what)
        for sub in ("trusted", "revoked"):
            if not (src / sub).is_dir():
                continue
            for f in sorted((src / sub).iterdir()):
                if f.name.startswith(".") or f.is_symlink() or not f.is_file():
                    continue
                if f.stat().st_size > MAX_KEY_FILE:
                    raise BuildError(f"{what}: {f} is larger than {MAX_KEY_FILE} bytes: not a fingerprint file")
                path = f"{dest}/{sub}/{f.name}"
                if path not in fs.nodes:
                    fs.add(_generated(path, f.read_bytes(), 0o644, epoch, "trust"), what)


def _extract(fs: FileSystem, ex, scanned: Callable[[str], ScannedPackage], release: Release,
             package_path: Callable[[str], Path], epoch: int, fname: str) -> None:
    """Files of a package put into the image without installing (registering) the package."""
    names = release.map_packages([ex.package])
    by_path: dict[str, Node] = {}
    owner: dict[str, str] = {}
    for n in names:
        for node in scanned(n).nodes:
            if node.path not in by_path:
                by_path[node.path] = node
                owner[node.path] = n
    what = f"flavour {fname}: extract from {ex.package}"
    for p in ex.paths:
        if p not in by_path:
            raise BuildError(f"flavour {fname}: package {ex.package} has no {p} to extract")
        if p not in fs.nodes:
            fs.add(replace(by_path[p], owner=""), f"extract from {ex.package}")
    for d in ex.under:
        below = sorted((p for p in by_path if p.startswith(d.rstrip("/") + "/")),
                       key=lambda p: tuple(p.strip("/").split("/")))
        if not below:
            raise BuildError(f"flavour {fname}: package {ex.package} has nothing under {d} to extract")
        for p in below:
            node = by_path[p]
            if node.kind == "hardlink" and node.target not in fs.nodes and node.target not in below:
                raise BuildError(f"{what}: {p} is a hard link to {node.target}, which is not extracted")
            if p not in fs.nodes:
                fs.add(replace(node, owner=""), f"extract from {ex.package}")
    for src, dst in ex.copies:
        node = by_path.get(src)
        if node is None or node.kind not in ("file", "hardlink"):
            raise BuildError(f"flavour {fname}: package {ex.package} has no file {src} to copy to {dst}")
        if dst in fs.nodes:
            continue
        member = node.target if node.kind == "hardlink" else node.path
        data = read_member(package_path(owner[src]), owner[src], {member})[member]
        fs.add(_generated(dst, data, node.mode, epoch, f"extract:{ex.package}", node.uname, node.gname), what)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _reads(fl: ResolvedFlavour, release: Release, names: list[str]) -> list[str]:
    """Every package a flavour's layer is made from: installed, extracted from, or the skeleton's."""
    read = [e.package for e in fl.extract] + ([fl.skeleton.package] if fl.skeleton else [])
    return sorted(set(names) | set(release.map_packages(read)))


def _trust_files(release: Release, keys: tuple[str, ...]) -> list[tuple[str, str]]:
    """(image path, sha256) of the key files _trust would install: part of a layer's cache key."""
    out = []
    for key in keys:
        repo = release.repository(key)
        if repo.signature_type == "fingerprints" and repo.fingerprints is not None:
            for f in sorted(Path(repo.fingerprints).glob("*/*")):
                if f.is_file() and not f.is_symlink():
                    where = f"{repo.image_fingerprints}/{f.relative_to(repo.fingerprints).as_posix()}"
                    out.append((where, hashlib.sha256(f.read_bytes()).hexdigest()))
    return out


def build_arch(family: Family, release: Release, arch: str, lock: ArchLock,
               packages: Union[dict[str, Path], Callable[[list[str]], dict[str, Path]]],
               opts: BuildOptions, sink: BlobSink, flavours: Optional[list[str]] = None,
               repo_names: Optional[dict[str, str]] = None,
               warn: Callable[[str], None] = _warn, cache: Optional[LayerCache] = None,
               scans_cache: Optional[ScanCache] = None,
               workers: Optional[compress.Workers] = None) -> dict[str, FlavourResult]:
    """Every flavour (or those named, with their ancestors) for one arch.

    ``release`` must be the release as declared (not re-rooted on a mirror):
    its URLs are written into the image. ``packages`` may be a function that
    fetches the named packages: a package is fetched only when its bytes are
    needed (a layer to write, a file to read), never for a layer in ``cache``
    or for a scan in ``scans_cache``. ``workers`` compress the layers' blocks
    (speed only, never the bytes).
    """
    epoch = opts.epoch
    wanted = family.names
    if flavours:
        need = {link for f in flavours for link in family.chain(f)}
        wanted = [f for f in wanted if f in need]
    repo_names = repo_names or {r.key: r.name for r in release.repositories}
    fetched: dict[str, Path] = {}

    def fetch(names: list[str]) -> None:
        names = [n for n in names if n not in fetched]
        if names:
            fetched.update(packages(sorted(names)) if callable(packages) else {n: packages[n] for n in names})

    def package_path(name: str) -> Path:
        if name not in lock.packages or (not callable(packages) and name not in packages):
            raise BuildError(f"{release.name}/{arch}: package {name} is not in the lock file")
        fetch([name])
        return fetched[name]

    scans: dict[str, ScannedPackage] = {}

    def scanned(name: str) -> ScannedPackage:
        if name not in scans:
            locked = lock.packages.get(name)
            key = layer_key(scan=name, sum=locked.sum, arch=arch, epoch=epoch, entry=SCAN_ENTRY) if locked else ""
            got = scans_cache.get(key) if scans_cache and locked else None
            if got is None:
                got = scan_package(package_path(name), name, arch, epoch)
                if scans_cache and locked:
                    scans_cache.put(key, got)
            scans[name] = got
        return scans[name]

    contents = _Contents(package_path, scanned)

    def providers() -> dict[str, list[str]]:
        # Only on failure: scanning the whole lock costs a pass over packages no flavour may need.
        out: dict[str, set[str]] = {}
        for name in sorted(n for n in lock.packages if callable(packages) or n in packages):
            sp = scanned(name)
            for lib in sp.manifest.get("shlibs_provided") or ():
                out.setdefault(lib, set()).add(name)
            for node in sp.nodes:
                if node.elf is not None and node.elf.shared_object:
                    for key in {node.elf.soname, node.path.rsplit("/", 1)[1]} - {None}:
                        out.setdefault(key, set()).add(name)
        return {k: sorted(v) for k, v in out.items()}

    results: dict[str, FlavourResult] = {}
    version_pkg = lock.packages.get(release.version_package)
    version = version_pkg.version if version_pkg else release.name

    # Every layer's key first, from the config, the lock and the rendered files: no package is opened.
    keys: dict[str, str] = {}
    rendered: dict[str, list[tuple[object, bytes]]] = {}
    env = {"layers": compress.versions()[opts.compression], "pkgdb": writer_version()}
    for fname in wanted:
        fl = family.resolve(fname)
        entry = lock.flavours.get(fname)
        if entry is None:
            raise BuildError(f"{release.name}/{arch}: flavour {fname} is not in the lock file; run `freebsd-images lock`")
        rendered[fname] = [(f, _render(family.base_dir, f.template, release, fname, arch) if f.template
                            else f.content.encode()) for f in fl.files]
        locked = {n: lock.packages[n] for n in _reads(fl, release, list(entry["packages"])) if n in lock.packages}
        keys[fname] = layer_key(parent=keys.get(family.flavours[fname].parent), flavour=fl,
                                files=[data for _, data in rendered[fname]], lock=entry, packages=locked,
                                trust=_trust_files(release, fl.trust),
                                release=[release.name, release.abi(arch), repo_names, release.pkgdb_user_version,
                                         version], epoch=epoch, compression=opts.compression, squash=opts.squash,
                                env=env)
    hits = {f: cache.get(keys[f]) for f in wanted} if cache else {}
    # A flavour whose layer is not cached is built, from its parent's filesystem: the cache's
    # copy of it when it has one (loaded), else rebuilt from the parent's packages, which needs
    # the grandparent's filesystem, and so on down.
    loaded: dict[str, FileSystem] = {}
    need_fs: set[str] = set()
    for f in wanted:
        link = None if hits.get(f) else f
        while link is not None and link not in need_fs and link not in loaded:
            got = cache.get_fs(keys[link]) if hits.get(link) else None
            if got is not None:
                loaded[link] = got
                break
            need_fs.add(link)
            link = family.flavours[link].parent
    # the flavours others are built on: their filesystems are kept with their layers
    bases = {family.flavours[f].parent for f in family.names} - {None}
    # The packages of the layers to write, fetched together (in parallel) rather than one by one.
    fetch(sorted({n for f in wanted if not hits.get(f) for n in lock.flavours[f]["packages"]
                  if n in lock.packages}))

    def reuse(fname: str, hit: dict, fs: Optional[FileSystem]) -> FlavourResult:
        """A flavour whose layer the cache holds; ``fs`` only when a flavour built on it needs it."""
        fl = family.resolve(fname)
        parent = family.flavours[fname].parent
        prev = results[parent] if parent else None
        links = closure.Closure.from_json(hit["closure"]) if hit.get("closure") else None
        for miss, reason in links.accepted if links else ():
            warn(f"{release.name}/{arch} image {release.render_name(fname)} (flavour {fname}): {miss.elf} "
                 f"({miss.package}) needs {miss.kind} {miss.soname}; accepted in families.yaml: {reason}")
        base_layers = [] if opts.squash or prev is None else list(prev.layers)
        base_history = [] if opts.squash or prev is None else list(prev.history)
        return FlavourResult(
            flavour=fname, parent=parent, arch=arch, fs=fs, layers=base_layers + [hit["layer"]],
            history=base_history + [hit["history"]], installed=hit["installed"], added=hit["added"],
            version=version, config=fl.config, description=fl.description,
            versions={n: lock.packages[n].version for n in hit["installed"]}, closure=links, reused=True,
            manifests=hit.get("manifests") or {})

    for fname in wanted:
        fl = family.resolve(fname)
        parent = family.flavours[fname].parent
        prev = results[parent] if parent else None
        entry = lock.flavours[fname]
        hit = hits.get(fname)
        if fname not in need_fs:
            results[fname] = reuse(fname, hit, loaded.get(fname))
            continue
        fs = prev.fs.copy() if prev else FileSystem()
        names = list(entry["packages"])
        automatic = set(entry["automatic"])
        before = set(prev.installed) if prev else set()
        ignored = dict(fl.ignore_scripts)

        if fl.skeleton and (prev is None or family.resolve(parent).skeleton != fl.skeleton):
            skel = replace(fl.skeleton, package=release.map_packages([fl.skeleton.package])[0])
            _skeleton(fs, replace(fl, skeleton=skel), contents, scanned, epoch)
        actions: set[str] = set(fl.post_install)
        for name in names:
            sp = scanned(name)
            actions |= recognise(name, sp.manifest.get("scripts") or {}, ignored)
            if name not in before:
                install(fs, sp)
        for ex in fl.extract:
            _extract(fs, ex, scanned, release, package_path, epoch, fname)
        _trust(fs, release, fl.trust, epoch, f"flavour {fname}")
        for f, data in rendered[fname]:
            fs.add(_generated(f.path, data, f.mode, epoch, "family", f.uname, f.gname), f"flavour {fname}",
                   allow_replace=True)
        for r in fl.remove:
            fs.remove(r)
        _post_install(fs, actions, contents, epoch, prev.fs if prev else None)
        fs.verify(f"flavour {fname}")
        regs = []
        for name in sorted(names):
            sp = scanned(name)
            repo = lock.packages[name].repository
            regs.append(Registration(sp.manifest, repo_names.get(repo, repo), name in automatic,
                                     tuple(sorted(sp.config.items()))))
        if regs:
            db = build_pkgdb(regs, epoch, release.pkgdb_user_version)
            fs.add(_generated(PKGDB_PATH, db, 0o644, epoch, "pkg"), "pkg", allow_replace=True)
        if hit:
            # Its layer is cached: the filesystem was rebuilt only for the flavours built on it,
            # and the checks below passed when the layer was built (the entry holds their results).
            cache.put_fs(keys[fname], fs)
            results[fname] = reuse(fname, hit, fs)
            continue

        where = f"{release.name}/{arch} image {release.render_name(fname)} (flavour {fname})"
        untrusted = pkgconf.problems(fs, lambda paths: contents.read(fs, paths))
        if untrusted:
            raise BuildError(f"{where}: pkg's "
                             "configuration names trust roots the image does not have:\n  " + "\n  ".join(untrusted)
                             + "\n  Install them with the flavour's `trust: [REPOSITORY...]` (from keys/) or "
                             "point the configuration at a directory the image has")
        links, unused = closure.check(fs, where, static=fl.static, accept=fl.accept_missing,
                                      read=lambda paths: contents.read(fs, paths), providers=providers,
                                      installed=names)
        for miss, reason in links.accepted:
            warn(f"{where}: {miss.elf} ({miss.package}) needs {miss.kind} {miss.soname}, which is not in the image; "
                 f"accepted in families.yaml: {reason}")
        own = set(family.flavours[fname].accept_missing)
        for a in unused:
            if a in own:
                warn(f"{where}: accept-missing-libraries entry {a.elf} / {a.soname} matches nothing that is missing; "
                     "remove it from families.yaml")

        ids = _ids(fs, contents)
        added = sorted(set(names) - before)
        what = ", ".join(added) if added else "no packages"
        history_line = f"{fname}: {what}" + (" + " + ", ".join(t for t in sorted(actions)) if actions else "")
        if opts.squash or prev is None:
            nodes, whiteouts = list(fs.nodes.values()), []
            base_layers, base_history = [], []
            if opts.squash:
                history_line = f"{fname}: " + ", ".join(sorted(names))
        else:
            nodes, whiteouts = delta(prev.fs, fs)
            base_layers, base_history = list(prev.layers), list(prev.history)
        described = {n: _describe(scanned(n).manifest) for n in sorted(names)}
        # only the packages whose bytes go into this layer
        pkg_paths = {n: PackageFile(package_path(n), scanned(n).sha256)
                     for n in sorted({x.source[4:] for x in nodes if x.source.startswith("pkg:")})}
        info = sink(lambda fh: write_layer(fh, nodes, whiteouts, pkg_paths, ids, epoch, opts.compression, workers))
        if cache:
            cache.put(keys[fname], info, history=history_line, installed=sorted(names), added=added,
                      closure=links.to_json(), manifests=described)
            if fname in bases:
                cache.put_fs(keys[fname], fs)
        results[fname] = FlavourResult(
            flavour=fname, parent=parent, arch=arch, fs=fs, layers=base_layers + [info],
            history=base_history + [history_line], installed=sorted(names), added=added, version=version,
            config=fl.config, description=fl.description,
            versions={n: lock.packages[n].version for n in names}, closure=links, reused=False,
            manifests=described)
    return results


DESCRIBING = ("name", "origin", "version", "comment", "www", "maintainer", "licenses", "licenselogic", "deps")


def _describe(manifest: dict) -> dict:
    return {k: manifest[k] for k in DESCRIBING if k in manifest}


def _ids(fs: FileSystem, contents: _Contents) -> IdMap:
    have = [p for p in ("/etc/master.passwd", "/etc/group") if p in fs.nodes and fs.nodes[p].kind == "file"]
    got = contents.read(fs, have)
    return IdMap(got.get("/etc/master.passwd"), got.get("/etc/group"))


def tree(fs: FileSystem) -> list[tuple[str, str, int, int, str]]:
    """(path, type, mode, size, sha256-or-target) per node: what a consumer of the image should see."""
    out = []
    for p in sorted(fs.nodes, key=lambda p: tuple(p.strip("/").split("/"))):
        n = fs.nodes[p]
        kind = {"file": "f", "hardlink": "f", "dir": "d", "symlink": "l"}[n.kind]
        out.append((p, kind, n.mode, n.size if kind == "f" else 0, n.target if kind == "l" else (n.sha256 if kind == "f" else "")))
    return out

