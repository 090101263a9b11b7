"""families.yaml: the declarative image family and flavour inheritance."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional


from builder.config import schema as S
from builder.config.yamlsrc import Located, load_file
from builder.errors import ConfigError, Diagnostic

PKG_NAME = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"
# Image paths as pkg would accept them: absolute, no empty, "." or ".." components, no trailing slash.
ABS_PATH = r"(?:/(?!\.\.?(?:/|$))[^/\0]+)+"
# Template files: relative to the project, never climbing out of it (symlinks are checked when read).
REL_PATH = r"(?!/)(?:(?!\.\.?(?:/|$))[^/\0]+/)*(?!\.\.?$)[^/\0]+"
MODE = r"0?[0-7]{3,4}"
DEFAULT_FAMILY = "default"
# What a flavour may ask the builder to run after installing, as pkgbase's own scripts do
POST_INSTALL = ("pwd_mkdb", "services_mkdb", "cap_mkdb", "certctl")


@dataclass(frozen=True)
class AcceptMiss:
    """A shared-library miss the family accepts: ``soname`` is the DT_NEEDED name (or the interpreter path)."""

    elf: str
    soname: str
    reason: str


@dataclass(frozen=True)
class PackageRef:
    name: str
    repository: Optional[str] = None  # None: any repository, by priority
    follow_deps: bool = True          # False: install without pulling in its dependencies


@dataclass(frozen=True)
class Extract:
    """Files taken from a package without installing (registering) it.

    ``paths`` land where the package has them; ``copies`` are (path in the package, path in the
    image); ``under`` takes everything below these directories of the package.
    """

    package: str
    paths: tuple[str, ...] = ()
    copies: tuple[tuple[str, str], ...] = ()
    under: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skeleton:
    """Directories made from mtree specs shipped in a package (FreeBSD-mtree)."""

    package: str
    specs: tuple[str, ...]


@dataclass(frozen=True)
class FileSpec:
    path: str
    template: Optional[str] = None  # jinja2 template file, relative to families.yaml
    content: Optional[str] = None
    mode: int = 0o644
    uname: str = "root"
    gname: str = "wheel"


@dataclass(frozen=True)
class ImageConfig:
    cmd: Optional[tuple[str, ...]] = None
    entrypoint: Optional[tuple[str, ...]] = None
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    user: Optional[str] = None
    workdir: Optional[str] = None

    def merged(self, child: "ImageConfig") -> "ImageConfig":
        env = dict(self.env)
        env.update(child.env)
        labels = dict(self.labels)
        labels.update(child.labels)
        return ImageConfig(
            cmd=child.cmd if child.cmd is not None else self.cmd,
            entrypoint=child.entrypoint if child.entrypoint is not None else self.entrypoint,
            env=tuple(env.items()),
            labels=tuple(labels.items()),
            user=child.user if child.user is not None else self.user,
            workdir=child.workdir if child.workdir is not None else self.workdir,
        )


@dataclass(frozen=True)
class Flavour:
    name: str
    parent: Optional[str]
    description: str
    packages: tuple[PackageRef, ...] = ()
    extract: tuple[Extract, ...] = ()
    skeleton: Optional[Skeleton] = None
    files: tuple[FileSpec, ...] = ()
    remove: tuple[str, ...] = ()
    config: ImageConfig = ImageConfig()
    ignore_scripts: tuple[tuple[str, str], ...] = ()  # (package, reason)
    accept_missing: tuple[AcceptMiss, ...] = ()       # shared-library misses let through, with a reason
    static: bool = False                              # no dynamically linked ELF file may ship
    majors: tuple[int, ...] = ()                      # only for these release majors (empty: every release)
    releases: tuple[str, ...] = ()                    # only for these release lines, e.g. 14.3 (empty: every line)
    trust: tuple[str, ...] = ()                       # repository keys whose trust roots go to /usr/share/keys
    post_install: tuple[str, ...] = ()                # actions run whether or not a package script asks


@dataclass(frozen=True)
class ResolvedFlavour:
    """A flavour with everything inherited from its ancestors folded in."""

    name: str
    chain: tuple[str, ...]  # root first, this flavour last
    description: str
    packages: tuple[PackageRef, ...]
    own_packages: tuple[PackageRef, ...]
    extract: tuple[Extract, ...]
    skeleton: Optional[Skeleton]
    files: tuple[FileSpec, ...]
    remove: tuple[str, ...]
    config: ImageConfig
    ignore_scripts: tuple[tuple[str, str], ...]
    accept_missing: tuple[AcceptMiss, ...] = ()   # inherited: a child ships its parent's files
    static: bool = False                          # not inherited: children add the C runtime
    trust: tuple[str, ...] = ()                   # inherited, like extract: children keep the keys
    post_install: tuple[str, ...] = ()            # inherited: rerun when a child adds what they read


@dataclass(frozen=True)
class FamilyImage:
    """A family's own naming, overriding the release file's (None: the release's)."""

    name: Optional[str] = None
    tags_immutable: Optional[tuple[str, ...]] = None
    tags_moving: Optional[tuple[str, ...]] = None
    archive_ref: Optional[str] = None


@dataclass(frozen=True)
class Family:
    source: str
    flavours: dict[str, Flavour]
    defaults: ImageConfig
    base_dir: Path = field(default=Path("."))
    name: str = DEFAULT_FAMILY
    description: str = ""
    image: Optional[FamilyImage] = None
    # where each value stands in the family file: a mistake found only when resolving is reported there
    positions: dict = field(default_factory=dict, compare=False, repr=False)

    def package_diagnostic(self, flavour: str, package: str, message: str) -> Diagnostic:
        """``message`` at the line of the flavour chain's entry that lists ``package`` (the nearest first)."""
        for link in reversed(self.chain(flavour)):
            for i, ref in enumerate(self.flavours[link].packages):
                if ref.name == package:
                    line, col = self.positions.get(("flavours", link, "packages", i), (1, 1))
                    return Diagnostic(self.source, line, col, message)
        line, col = self.positions.get(("flavours", flavour), (1, 1))
        return Diagnostic(self.source, line, col, message)

    def for_release(self, major: int, release: Optional[str] = None) -> "Family":
        """The flavours a release line (of this major, named ``release``) builds: those whose whole
        chain applies to it, by ``majors`` and by ``releases``."""
        def applies(fl: Flavour) -> bool:
            return ((not fl.majors or major in fl.majors)
                    and (not fl.releases or release is None or release in fl.releases))
        keep = {n: f for n, f in self.flavours.items() if all(applies(self.flavours[link]) for link in self.chain(n))}
        return self if len(keep) == len(self.flavours) else replace(self, flavours=keep)

    @property
    def names(self) -> list[str]:
        """Flavours in dependency order (parents before children), then by declaration."""
        order: list[str] = []
        for name in self.flavours:
            for link in self.chain(name):
                if link not in order:
                    order.append(link)
        return order

    def chain(self, name: str) -> list[str]:
        out: list[str] = []
        cur: Optional[str] = name
        while cur is not None:
            out.append(cur)
            cur = self.flavours[cur].parent
        return list(reversed(out))

    def resolve(self, name: str) -> ResolvedFlavour:
        if name not in self.flavours:
            hint = difflib.get_close_matches(name, list(self.flavours), n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError([Diagnostic(self.source, 1, 1, f"unknown flavour {name!r}{more}")])
        chain = self.chain(name)
        packages: list[PackageRef] = []
        extract: list[Extract] = []
        trust: list[str] = []
        post: list[str] = []
        files: dict[str, FileSpec] = {}
        remove: list[str] = []
        ignore: dict[str, str] = {}
        accept: dict[tuple[str, str], AcceptMiss] = {}
        skeleton = None
        config = self.defaults
        for link in chain:
            fl = self.flavours[link]
            for p in fl.packages:
                if p.name not in {q.name for q in packages}:
                    packages.append(p)
            extract.extend(fl.extract)
            trust.extend(t for t in fl.trust if t not in trust)
            post.extend(a for a in fl.post_install if a not in post)
            for f in fl.files:
                files[f.path] = f
            remove.extend(r for r in fl.remove if r not in remove)
            ignore.update(fl.ignore_scripts)
            accept.update({(a.elf, a.soname): a for a in fl.accept_missing})
            skeleton = fl.skeleton or skeleton
            config = config.merged(fl.config)
        me = self.flavours[name]
        return ResolvedFlavour(
            name=name, chain=tuple(chain), description=me.description,
            packages=tuple(packages), own_packages=me.packages, extract=tuple(extract),
            skeleton=skeleton, files=tuple(files.values()), remove=tuple(remove),
            config=config, ignore_scripts=tuple(sorted(ignore.items())),
            accept_missing=tuple(accept[k] for k in sorted(accept)), static=me.static,
            trust=tuple(trust), post_install=tuple(post),
        )


_STR_LIST = S.ListOf(S.Str(), expected="a list of strings")
_CONFIG = S.Struct({
    "cmd": S.Field(_STR_LIST),
    "entrypoint": S.Field(_STR_LIST),
    "env": S.Field(S.MapOf(S.Str(), key_pattern=r"[A-Za-z_][A-Za-z0-9_]*", key_expected="an environment variable name")),
    "labels": S.Field(S.MapOf(S.Str())),
    "user": S.Field(S.Str()),
    "workdir": S.Field(S.Str(pattern=ABS_PATH, expected="an absolute path")),
})


_IMAGE = S.Struct({
    "name": S.Field(S.TEMPLATE),
    "tags": S.Field(S.TAGS),
    "archive-ref": S.Field(S.TEMPLATE),
})
_ABS = S.Str(pattern=ABS_PATH, expected="an absolute path")
_PACKAGE = S.OneOf({
    str: S.Str(pattern=PKG_NAME, expected="a package name"),
    dict: S.Struct({
        "name": S.Field(S.Str(pattern=PKG_NAME, expected="a package name"), required=True),
        "repository": S.Field(S.Str(pattern=r"[a-z][a-z0-9_-]*", expected="a repository key")),
        "deps": S.Field(S.Bool()),
    }),
}, expected="a package name or {name, repository}")
_FLAVOUR = S.Struct({
    "parent": S.Field(S.OneOf({str: S.Str(), type(None): S.Custom()}, expected="a flavour name or null")),
    "description": S.Field(S.Str(), required=True),
    "packages": S.Field(S.ListOf(_PACKAGE)),
    "extract": S.Field(S.ListOf(S.Struct({
        "package": S.Field(S.Str(pattern=PKG_NAME, expected="a package name"), required=True),
        "paths": S.Field(S.ListOf(S.OneOf({str: _ABS, dict: S.Struct({
            "path": S.Field(_ABS, required=True),
            "to": S.Field(_ABS, required=True),
        })}, expected="an absolute path or {path, to}"), unique=True)),
        "under": S.Field(S.ListOf(_ABS, unique=True)),
    }))),
    "skeleton": S.Field(S.Struct({
        "package": S.Field(S.Str(pattern=PKG_NAME, expected="a package name"), required=True),
        "specs": S.Field(S.ListOf(S.Str(pattern=r"BSD\.[a-z0-9]+\.dist", expected="an mtree spec name like BSD.root.dist"), unique=True), required=True),
    })),
    "files": S.Field(S.ListOf(S.Struct({
        "path": S.Field(S.Str(pattern=ABS_PATH, expected="an absolute path"), required=True),
        "template": S.Field(S.Str(pattern=REL_PATH, expected="a file path relative to families.yaml, without '..'")),
        "content": S.Field(S.Str()),
        "mode": S.Field(S.Str(pattern=MODE, expected="an octal mode string like \"0644\"")),
        "uname": S.Field(S.Str()),
        "gname": S.Field(S.Str()),
    }))),
    "remove": S.Field(S.ListOf(S.Str(pattern=ABS_PATH, expected="an absolute path"), unique=True)),
    "config": S.Field(_CONFIG),
    "ignore-scripts": S.Field(S.MapOf(S.Str(expected="a reason"), key_pattern=PKG_NAME, key_expected="a package name")),
    "accept-missing-libraries": S.Field(S.ListOf(S.Struct({
        "elf": S.Field(S.Str(pattern=ABS_PATH, expected="the absolute path of an ELF file in the image"), required=True),
        "soname": S.Field(S.Str(pattern=r"[^\s]+", expected="a library name like libfoo.so.1 (or the interpreter path)"),
                          required=True),
        "reason": S.Field(S.Str(pattern=r"(?s)\s*\S.*", expected="a reason (why the image can do without it)"),
                          required=True),
    }))),
    "static": S.Field(S.Bool()),
    "majors": S.Field(S.ListOf(S.Int(minimum=1, expected="a FreeBSD major version"), unique=True)),
    "releases": S.Field(S.ListOf(S.Str(pattern=r"[0-9]+(\.[0-9]+)?", expected="a release line like 14.3 or 15"),
                                 unique=True)),
    "trust": S.Field(S.ListOf(S.Str(pattern=r"[a-z][a-z0-9_-]*", expected="a repository key"), unique=True)),
    "post-install": S.Field(S.ListOf(S.Str(choices=POST_INSTALL), unique=True)),
})
FAMILY_SCHEMA = S.Struct({
    "schema": S.Field(S.Int(minimum=1), required=True),
    "description": S.Field(S.Str()),
    "image": S.Field(_IMAGE),
    "defaults": S.Field(_CONFIG),
    "flavours": S.Field(S.MapOf(_FLAVOUR, key_pattern=r"[a-z][a-z0-9-]*", key_expected="a lower-case flavour name"), required=True),
})


def _config(raw: Optional[dict]) -> ImageConfig:
    raw = raw or {}
    return ImageConfig(
        cmd=tuple(raw["cmd"]) if "cmd" in raw else None,
        entrypoint=tuple(raw["entrypoint"]) if "entrypoint" in raw else None,
        env=tuple((raw.get("env") or {}).items()),
        labels=tuple((raw.get("labels") or {}).items()),
        user=raw.get("user"),
        workdir=raw.get("workdir"),
    )


def _check_structure(doc: Located, out: list[Diagnostic]) -> None:
    flavours = doc.data.get("flavours") or {}
    if not isinstance(flavours, dict):
        return
    for name, body in flavours.items():
        if not isinstance(body, dict):
            continue
        parent = body.get("parent")
        if isinstance(parent, str) and parent not in flavours:
            hint = difflib.get_close_matches(parent, list(flavours), n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            out.append(doc.diag(("flavours", name, "parent"), f"unknown parent flavour {parent!r}{more}"))
        pbody = flavours.get(parent) if isinstance(parent, str) else None
        mine, theirs = body.get("majors"), (pbody or {}).get("majors") if isinstance(pbody, dict) else None
        if isinstance(mine, list) and isinstance(theirs, list) and not set(mine) <= set(theirs):
            out.append(doc.diag(("flavours", name, "majors"), f"majors {mine} reach beyond those of parent "
                                                              f"{parent!r} ({theirs}): it would never build there"))
        for i, e in enumerate(body.get("extract") or []):
            if isinstance(e, dict) and not (e.get("paths") or e.get("under")):
                out.append(doc.diag(("flavours", name, "extract", i), "an extract entry needs 'paths' or 'under'"))
        for i, f in enumerate(body.get("files") or []):
            if isinstance(f, dict) and ("template" in f) == ("content" in f):
                out.append(doc.diag(("flavours", name, "files", i), "a file needs exactly one of 'template' or 'content'"))
        pairs: dict = {}
        for i, a in enumerate(body.get("accept-missing-libraries") or []):
            if isinstance(a, dict):
                key = (a.get("elf"), a.get("soname"))
                if key in pairs:
                    out.append(doc.diag(("flavours", name, "accept-missing-libraries", i),
                                        f"{key[0]} / {key[1]} is already accepted (entry {pairs[key]})"))
                pairs.setdefault(key, i)
        if body.get("static") and body.get("accept-missing-libraries"):
            out.append(doc.diag(("flavours", name, "accept-missing-libraries"),
                                "a static flavour ships no dynamically linked file, so it has no library to accept missing"))
        pkgs = [p if isinstance(p, str) else p.get("name") for p in body.get("packages") or [] if isinstance(p, (str, dict))]
        seen: set = set()
        for i, p in enumerate(pkgs):
            if p in seen:
                out.append(doc.diag(("flavours", name, "packages", i), f"package {p!r} listed twice"))
            seen.add(p)
    # Cycles: follow parents from each flavour; report once per cycle at its first member.
    reported: set[frozenset] = set()
    for name in flavours:
        seen_path: list[str] = []
        cur = name
        while isinstance(cur, str) and cur in flavours and isinstance(flavours[cur], dict):
            if cur in seen_path:
                cycle = seen_path[seen_path.index(cur):]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    out.append(doc.diag(("flavours", cycle[0], "parent"),
                                        "cycle in flavour parents: " + " -> ".join(cycle + [cycle[0]])))
                break
            seen_path.append(cur)
            cur = flavours[cur].get("parent")


def parse_family(doc: Located, base_dir: Path, family_name: str = DEFAULT_FAMILY) -> Family:
    problems = S.validate(doc, FAMILY_SCHEMA)
    if not problems:
        _check_structure(doc, problems)
    if problems:
        raise ConfigError(problems)
    flavours: dict[str, Flavour] = {}
    for name, body in doc.data["flavours"].items():
        pkgs = tuple(
            PackageRef(p) if isinstance(p, str) else PackageRef(p["name"], p.get("repository"), p.get("deps", True))
            for p in body.get("packages") or [])
        skel = body.get("skeleton")
        flavours[name] = Flavour(
            name=name,
            parent=body.get("parent"),
            description=body["description"],
            packages=pkgs,
            extract=tuple(Extract(e["package"],
                                  paths=tuple(p for p in e.get("paths") or () if isinstance(p, str)),
                                  copies=tuple((p["path"], p["to"]) for p in e.get("paths") or ()
                                               if isinstance(p, dict)),
                                  under=tuple(e.get("under") or ()))
                          for e in body.get("extract") or []),
            skeleton=Skeleton(skel["package"], tuple(skel["specs"])) if skel else None,
            files=tuple(FileSpec(path=f["path"], template=f.get("template"), content=f.get("content"),
                                 mode=int(f.get("mode", "0644"), 8), uname=f.get("uname", "root"),
                                 gname=f.get("gname", "wheel"))
                        for f in body.get("files") or []),
            remove=tuple(body.get("remove") or []),
            config=_config(body.get("config")),
            ignore_scripts=tuple(sorted((body.get("ignore-scripts") or {}).items())),
            accept_missing=tuple(AcceptMiss(a["elf"], a["soname"], a["reason"].strip())
                                 for a in body.get("accept-missing-libraries") or []),
            static=bool(body.get("static", False)),
            majors=tuple(body.get("majors") or ()),
            releases=tuple(str(r) for r in body.get("releases") or ()),
            trust=tuple(body.get("trust") or ()),
            post_install=tuple(body.get("post-install") or ()),
        )
    img = doc.data.get("image")
    image = None
    if img:
        tags = img.get("tags") or {}
        image = FamilyImage(name=img.get("name"),
                            tags_immutable=tuple(tags["immutable"]) if "immutable" in tags else None,
                            tags_moving=tuple(tags["moving"]) if "moving" in tags else None,
                            archive_ref=img.get("archive-ref"))
    return Family(source=doc.file, flavours=flavours, defaults=_config(doc.data.get("defaults")), base_dir=base_dir,
                  name=family_name, description=(doc.data.get("description") or "").strip(), image=image,
                  positions=dict(doc.values))


def load_family(path: Path, name: str = DEFAULT_FAMILY, base_dir: Optional[Path] = None) -> Family:
    """A family file; template paths are relative to base_dir (default: the file's directory)."""
    path = Path(path)
    return parse_family(load_file(path), base_dir if base_dir is not None else path.parent, name)
