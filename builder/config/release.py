"""releases/*.yaml: one file per release line (releng/14.2, stable/14, ...)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional


from builder.common import templates

from builder.config import schema as S
from builder.config.family import PKG_NAME, Family
from builder.config.yamlsrc import Located, load_file
from builder.errors import BuildError, ConfigError, Diagnostic

SIGNATURE_TYPES = ("none", "pubkey", "fingerprints")
KEYS_IN_IMAGE = "/usr/share/keys"
# FreeBSD's BRANCH (newvers.sh) for each kind of release line
BRANCH_KIND = {"release": "RELEASE", "stable": "STABLE", "current": "CURRENT"}
# Release archives: one ref per image and arch (podman load of two arches must not share one)
DEFAULT_ARCHIVE_REF = "{{ name }}:{{ tag }}-{{ platform }}"


@dataclass(frozen=True)
class Arch:
    name: str        # pkg's name: amd64, aarch64
    platform: str    # OCI architecture: amd64, arm64
    variant: Optional[str] = None


@dataclass(frozen=True)
class Repository:
    key: str                      # "base", "ports"
    name: str                     # pkg's repository name, e.g. FreeBSD-base
    url: str                      # may contain ${ABI}
    signature_type: str
    fingerprints: Optional[Path] = None  # directory holding trusted/ and revoked/
    pubkey: Optional[Path] = None
    priority: int = 0

    def url_for(self, abi: str) -> str:
        return self.url.replace("${ABI}", abi)

    @property
    def image_fingerprints(self) -> Optional[str]:
        """Where this repository's trust roots live inside an image: keys/ is laid out like
        /usr/share/keys, so keys/pkgbase-15 is /usr/share/keys/pkgbase-15 (what pkg's configuration names)."""
        return f"{KEYS_IN_IMAGE}/{self.fingerprints.name}" if self.fingerprints is not None else None


@dataclass(frozen=True)
class Release:
    source: str
    name: str                     # "14.2", "14", "15.0"
    branch: str                   # releng/14.2, stable/14
    major: int
    kind: str                     # release | stable | current
    arches: tuple[Arch, ...]
    repositories: tuple[Repository, ...]
    image_name: str               # jinja2 template
    tags_immutable: tuple[str, ...]
    tags_moving: tuple[str, ...]
    package_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    pkgdb_user_version: int = 36
    version_package: str = "FreeBSD-runtime"
    catalogue_max_age: Optional[int] = None    # days; older catalogues are reported as a possibly frozen mirror
    base_dir: Path = field(default=Path("."))
    archive_ref: str = DEFAULT_ARCHIVE_REF     # jinja2: the ref inside a release archive
    namespace: Optional[str] = None            # HOST/NAMESPACE the images are published under (base.name)
    revision: Optional[str] = None             # org.opencontainers.image.revision written into the images

    @property
    def branch_kind(self) -> str:
        return BRANCH_KIND.get(self.kind, self.kind.upper())

    def for_family(self, family: Family) -> "Release":
        """This release with a family's own naming (image name, tags, archive ref) where it declares one."""
        img = family.image
        if img is None:
            return self
        return replace(self, image_name=img.name or self.image_name,
                       tags_immutable=self.tags_immutable if img.tags_immutable is None else img.tags_immutable,
                       tags_moving=self.tags_moving if img.tags_moving is None else img.tags_moving,
                       archive_ref=img.archive_ref or self.archive_ref)

    def _ctx(self, flavour: str, **more) -> dict:
        return dict(release=self.name, major=self.major, flavour=flavour, branch_kind=self.branch_kind,
                    kind=self.kind, **more)

    def abi(self, arch: str) -> str:
        return f"FreeBSD:{self.major}:{arch}"

    def arch(self, name: str) -> Arch:
        for a in self.arches:
            if name in (a.name, a.platform):
                return a
        known = ", ".join(f"{a.name} ({a.platform})" for a in self.arches)
        raise BuildError(f"release {self.name} has no architecture {name!r}; it builds: {known}")

    def repository(self, key: str) -> Repository:
        for r in self.repositories:
            if r.key == key:
                return r
        raise BuildError(f"release {self.name} has no repository {key!r}")

    def map_packages(self, names: list[str]) -> list[str]:
        """Apply this release's renames and splits to a family's package names."""
        mapping = dict(self.package_map)
        out: list[str] = []
        for n in names:
            for m in mapping.get(n, (n,)):
                if m not in out:
                    out.append(m)
        return out

    def render_name(self, flavour: str) -> str:
        name = _render(self.image_name, **self._ctx(flavour))
        if not re.fullmatch(OCI_NAME, name):
            raise BuildError(f"{self.source}: image name {name!r} (flavour {flavour}) is not a valid OCI repository "
                             f"name ({OCI_NAME})")
        return name

    def render_tags(self, flavour: str, version: str) -> tuple[list[str], list[str]]:
        """Tags, each checked against the OCI grammar: ``version`` comes from package data, which
        a compromised repository controls, and a tag ends up in URL paths and file names."""
        ctx = self._ctx(flavour, version=version)
        out = ([_render(t, **ctx) for t in self.tags_immutable], [_render(t, **ctx) for t in self.tags_moving])
        for tag in out[0] + out[1]:
            if not re.fullmatch(OCI_TAG, tag):
                raise BuildError(f"{self.source}: flavour {flavour}: tag {tag!r} (from version {version!r} of package "
                                 f"{self.version_package}) is not a valid OCI tag ({OCI_TAG})")
        return out

    def render_archive_ref(self, flavour: str, arch: Arch, tag: str, version: str) -> str:
        """The ref a release archive carries for one image and arch (podman load tags the image with it)."""
        name = self.render_name(flavour)
        ref = _render(self.archive_ref, **self._ctx(flavour, version=version, name=name, tag=tag, arch=arch.name,
                                                    platform=arch.platform))
        rname, sep, rtag = ref.rpartition(":")
        if not sep or not re.fullmatch(OCI_NAME, rname) or not re.fullmatch(OCI_TAG, rtag):
            raise BuildError(f"{self.source}: archive ref {ref!r} (flavour {flavour}, {arch.name}) is not NAME:TAG "
                             f"with a valid OCI name and tag")
        return ref

    def published(self, name: str, tag: str) -> str:
        """The fully qualified reference of an image as published (base.name): HOST/NAMESPACE/NAME:TAG."""
        return f"{self.namespace}/{name}:{tag}" if self.namespace else f"{name}:{tag}"

    def with_mirror(self, mirror: Optional[str], keys: Optional[Path] = None) -> "Release":
        """Point every repository at a mirror root; optionally trust another key set.

        A mirror root replaces everything before ``/${ABI}/`` in each URL, so
        ``pkg+https://pkg.FreeBSD.org/${ABI}/base_release_2`` becomes
        ``file:///srv/mirror/${ABI}/base_release_2``.
        """
        repos = []
        for r in self.repositories:
            url = r.url
            if mirror:
                idx = url.find("/${ABI}/")
                if idx < 0:
                    raise BuildError(f"{self.source}: repository {r.key} URL {url} has no /${{ABI}}/ part to re-root on a mirror")
                url = mirror.rstrip("/") + url[idx:]
            if keys is not None:
                r = replace(r, fingerprints=keys if r.signature_type == "fingerprints" else r.fingerprints,
                            pubkey=(keys / "repo.pub") if r.signature_type == "pubkey" else r.pubkey)
            repos.append(replace(r, url=url))
        return replace(self, repositories=tuple(repos))


_ENV = templates.environment()
# distribution-spec grammar: tags, and repository path components
OCI_TAG = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
OCI_NAME = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"


def _render(template: str, **ctx) -> str:
    return templates.render_string(template, f"template {template!r}", _ENV, **ctx)


TAGS = S.TAGS
# registry host[:port] and zero or more repository path components
NAMESPACE = r"[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
_REPO = S.Struct({
    "name": S.Field(S.Str(pattern=r"[A-Za-z0-9_-]+", expected="a repository name"), required=True),
    "url": S.Field(S.Str(pattern=r"(pkg\+https|pkg\+http|https|http|file)://\S+",
                         expected="a URL with scheme pkg+https, pkg+http, https, http or file"), required=True),
    "signature-type": S.Field(S.Str(choices=SIGNATURE_TYPES), required=True),
    "fingerprints": S.Field(S.Str(expected="a directory holding trusted/ and revoked/")),
    "pubkey": S.Field(S.Str(expected="a PEM public key file")),
    "priority": S.Field(S.Int()),
})
RELEASE_SCHEMA = S.Struct({
    "release": S.Field(S.Str(pattern=r"[0-9]+(\.[0-9]+)?", expected="a release name like 14.2 or 14"), required=True),
    "branch": S.Field(S.Str(pattern=r"(releng|stable)/[0-9]+(\.[0-9]+)?|main",
                            expected="a branch like releng/14.2, stable/14 or main"), required=True),
    "major": S.Field(S.Int(minimum=1), required=True),
    "kind": S.Field(S.Str(choices=("release", "stable", "current")), required=True),
    "arches": S.Field(S.MapOf(S.Struct({
        "platform": S.Field(S.Str(choices=("amd64", "arm64", "riscv64", "ppc64le", "386", "arm")), required=True),
        "variant": S.Field(S.Str()),
    }), key_pattern=r"amd64|aarch64|riscv64|powerpc64le|i386|armv7",
        key_expected="a FreeBSD architecture (amd64, aarch64, riscv64, ...)"), required=True),
    "repositories": S.Field(S.MapOf(_REPO, key_pattern=r"[a-z][a-z0-9_-]*", key_expected="a repository key"), required=True),
    "image": S.Field(S.Struct({
        "name": S.Field(S.TEMPLATE, required=True),
        "tags": S.Field(TAGS, required=True),
        "archive-ref": S.Field(S.TEMPLATE),
    }), required=True),
    "publish": S.Field(S.Struct({
        "namespace": S.Field(S.Str(pattern=NAMESPACE, expected="a registry and namespace like ghcr.io/freebsd")),
        "revision": S.Field(S.Str(pattern=r"[A-Za-z0-9][A-Za-z0-9._/@+:-]{0,127}",
                                  expected="a source revision (commit hash or tag)")),
    })),
    "version-package": S.Field(S.Str(pattern=PKG_NAME, expected="a package name")),
    "package-map": S.Field(S.MapOf(S.ListOf(S.Str(pattern=PKG_NAME, expected="a package name")),
                                   key_pattern=PKG_NAME, key_expected="a package name")),
    "pkgdb": S.Field(S.Struct({"user-version": S.Field(S.Int(minimum=1))})),
    "catalogue-max-age": S.Field(S.Int(minimum=1)),
})


def _check_semantics(doc: Located, out: list[Diagnostic]) -> None:
    d = doc.data
    name, branch, major = d.get("release"), d.get("branch"), d.get("major")
    if isinstance(name, str) and isinstance(major, int) and name.split(".")[0] != str(major):
        out.append(doc.diag(("major",), f"major {major} does not match release {name!r}"))
    if isinstance(name, str) and isinstance(branch, str) and branch != "main" and not branch.endswith("/" + name):
        out.append(doc.diag(("branch",), f"branch {branch!r} does not match release {name!r}"))
    for key, repo in (d.get("repositories") or {}).items():
        sig = repo.get("signature-type")
        if sig == "fingerprints" and "fingerprints" not in repo:
            out.append(doc.diag(("repositories", key), f"repository {key!r}: signature-type fingerprints needs 'fingerprints'"))
        if sig == "pubkey" and "pubkey" not in repo:
            out.append(doc.diag(("repositories", key), f"repository {key!r}: signature-type pubkey needs 'pubkey'"))
        url = repo.get("url", "")
        if isinstance(url, str) and "${ABI}" not in url and not url.startswith("file:"):
            out.append(doc.diag(("repositories", key, "url"), "remote repository URL should contain ${ABI}"))


def parse_release(doc: Located, base_dir: Path) -> Release:
    problems = S.validate(doc, RELEASE_SCHEMA)
    if not problems:
        _check_semantics(doc, problems)
    if problems:
        raise ConfigError(problems)
    d = doc.data
    repos = []
    for key, r in d["repositories"].items():
        repos.append(Repository(
            key=key, name=r["name"], url=r["url"], signature_type=r["signature-type"],
            fingerprints=(base_dir / r["fingerprints"]) if "fingerprints" in r else None,
            pubkey=(base_dir / r["pubkey"]) if "pubkey" in r else None,
            priority=r.get("priority", 0)))
    repos.sort(key=lambda r: (-r.priority, r.key))
    tags = d["image"]["tags"]
    publish = d.get("publish") or {}
    return Release(
        source=doc.file, name=d["release"], branch=d["branch"], major=d["major"], kind=d["kind"],
        arches=tuple(Arch(k, v["platform"], v.get("variant")) for k, v in d["arches"].items()),
        repositories=tuple(repos), image_name=d["image"]["name"],
        tags_immutable=tuple(tags.get("immutable") or ()), tags_moving=tuple(tags.get("moving") or ()),
        package_map=tuple((k, tuple(v)) for k, v in sorted((d.get("package-map") or {}).items())),
        pkgdb_user_version=(d.get("pkgdb") or {}).get("user-version", 36),
        version_package=d.get("version-package", "FreeBSD-runtime"),
        catalogue_max_age=d.get("catalogue-max-age"),
        base_dir=base_dir,
        archive_ref=d["image"].get("archive-ref", DEFAULT_ARCHIVE_REF),
        namespace=publish.get("namespace"), revision=publish.get("revision"),
    )


def load_release(path: Path, project_dir: Optional[Path] = None) -> Release:
    """Load a release file; key paths are relative to the project directory."""
    path = Path(path)
    base = project_dir if project_dir is not None else path.resolve().parent.parent
    return parse_release(load_file(path), base)


def release_files(releases_dir: Path) -> list[Path]:
    return sorted((p for p in Path(releases_dir).glob("*.yaml")), key=lambda p: _release_sort_key(p.stem))


def _release_sort_key(name: str):
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.]", name))


def find_release(releases_dir: Path, name: str) -> Path:
    path = Path(releases_dir) / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in release_files(releases_dir))
        raise BuildError(f"no release file for {name!r} in {releases_dir} (known: {known})")
    return path


def env_mirror() -> Optional[str]:
    return os.environ.get("FREEBSD_IMAGES_MIRROR") or None


def env_keys() -> Optional[Path]:
    """The trust directory for a mirror from $FREEBSD_IMAGES_KEYS (unset or empty: the release's own keys)."""
    v = os.environ.get("FREEBSD_IMAGES_KEYS")
    return Path(v) if v else None
