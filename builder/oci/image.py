"""OCI documents for one image: config, manifest, and the multi-arch index.

Pure functions from build results to JSON-ready dicts; nothing here reads
the clock or the host. ``created`` is the build epoch.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Optional

from builder import FORMAT_VERSION
from builder.common import compress
from builder.config.family import ImageConfig
from builder.install import pkgdb
from builder.config.release import Arch
from builder.oci.layout import INDEX_MT, MANIFEST_MT, Descriptor

TOOL = "freebsd-images"
ANN = "org.opencontainers.image."
BUILD_ENV = "org.freebsd.images.build-environment"


def rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ImageMeta:
    """What names and describes one image of the family (same for every arch)."""

    name: str                 # freebsd14.2-minimal
    flavour: str
    description: str
    version: str              # FreeBSD version, e.g. 14.2p1
    epoch: int
    config: ImageConfig
    tags: tuple[str, ...]     # every tag, immutable first
    base_name: Optional[str] = None   # the parent flavour's image reference, fully qualified when published
    build_env: str = ""               # what shaped the bytes besides the inputs (build_environment)
    revision: Optional[str] = None    # org.opencontainers.image.revision (a configured value only: see runs.images)


def build_environment(compression: str, drift: tuple[str, ...] = ()) -> str:
    """The writers whose versions shape an image's bytes, so that `diff` can name them when they differ;
    and, for a build allowed to run with other writers than the pinned ones, what differed."""
    return (f"format {FORMAT_VERSION}; layers {compression}: {compress.versions()[compression]}; "
            f"pkg database: {pkgdb.writer_version()}" + "".join(f"; writer drift: {d}" for d in drift))


def platform(arch: Arch) -> tuple[tuple[str, str], ...]:
    p = {"os": "freebsd", "architecture": arch.platform}
    if arch.variant:
        p["variant"] = arch.variant
    return tuple(sorted(p.items()))


def image_config(meta: ImageMeta, arch: Arch, diff_ids: list[str], history: list[str]) -> dict:
    created = rfc3339(meta.epoch)
    cfg = meta.config
    labels = dict(cfg.labels)
    labels.setdefault(ANN + "title", meta.name)
    labels.setdefault(ANN + "version", meta.version)
    labels["org.freebsd.version"] = meta.version
    container: dict = {"Env": [f"{k}={v}" for k, v in cfg.env], "Labels": dict(sorted(labels.items()))}
    if cfg.cmd is not None:
        container["Cmd"] = list(cfg.cmd)
    if cfg.entrypoint is not None:
        container["Entrypoint"] = list(cfg.entrypoint)
    if cfg.user:
        container["User"] = cfg.user
    if cfg.workdir:
        container["WorkingDir"] = cfg.workdir
    doc = {
        "created": created,
        "architecture": arch.platform,
        "os": "freebsd",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": created, "created_by": f"{TOOL}: {h}"} for h in history],
    }
    if arch.variant:
        doc["variant"] = arch.variant
    return doc


def annotations(meta: ImageMeta, base_digest: Optional[str] = None) -> tuple[tuple[str, str], ...]:
    labels = dict(meta.config.labels)
    a = {
        ANN + "created": rfc3339(meta.epoch),
        ANN + "version": meta.version,
        ANN + "title": meta.name,
        ANN + "description": meta.description.strip(),
        "org.freebsd.version": meta.version,
    }
    for k in ("licenses", "vendor", "url", "source"):
        if ANN + k in labels:
            a[ANN + k] = labels[ANN + k]
    if meta.build_env:
        a[BUILD_ENV] = meta.build_env
    if meta.revision:
        a[ANN + "revision"] = meta.revision
    if meta.base_name and base_digest:
        a[ANN + "base.name"] = meta.base_name
        a[ANN + "base.digest"] = base_digest
    return tuple(sorted(a.items()))


def manifest(config: Descriptor, layers: list[Descriptor], ann: tuple[tuple[str, str], ...]) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MT,
        "config": config.to_json(),
        "layers": [l.to_json() for l in layers],
        "annotations": dict(ann),
    }


def platform_key(d: Descriptor) -> tuple[str, str, str]:
    p = dict(d.platform or ())
    return p.get("os", ""), p.get("architecture", ""), p.get("variant", "")


def merge_platforms(*groups: list[Descriptor]) -> list[Descriptor]:
    """One manifest per full platform (os, architecture, variant); a later group wins; sorted by platform.

    Every multi-arch index is made through this, so a layout built in one run and one
    assembled from per-arch runs hold the same index bytes.
    """
    by: dict[tuple[str, str, str], Descriptor] = {}
    for group in groups:
        for d in group:
            by[platform_key(d)] = d
    return [by[k] for k in sorted(by)]


def index(manifests: list[Descriptor], ann: tuple[tuple[str, str], ...]) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": INDEX_MT,
        "manifests": [m.to_json() for m in merge_platforms(manifests)],
        "annotations": dict(ann),
    }


def index_annotations(meta: ImageMeta) -> tuple[tuple[str, str], ...]:
    # base.* name one parent manifest and so belong to the per-arch manifests only
    return tuple((k, v) for k, v in annotations(meta) if not k.startswith(ANN + "base."))

