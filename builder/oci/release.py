"""What building a release produced: its images in one layout. Read by the archive writer and the runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from builder.layers.writer import LayerInfo
from builder.oci.layout import Descriptor


@dataclass(frozen=True)
class BuiltImage:
    name: str
    flavour: str
    arch: str             # FreeBSD arch
    platform: str         # OCI architecture
    manifest: Descriptor
    config: Descriptor
    layers: tuple[LayerInfo, ...]
    version: str
    tags: tuple[str, ...]
    packages: tuple[tuple[str, str], ...]   # (name, version) installed
    closure: Optional[dict] = None          # shared-library closure counts (Closure.to_json)
    referrers: tuple[Descriptor, ...] = ()  # SBOM and provenance attached to the manifest

    @property
    def size(self) -> int:
        return sum(l.size for l in self.layers)

    def to_json(self) -> dict:
        return {"image": self.name, "tags": list(self.tags), "arch": self.arch, "platform": self.platform,
                "layers": len(self.layers), "size": self.size, "digest": self.manifest.digest,
                "config": self.config.digest, "version": self.version, "closure": self.closure,
                "referrers": [{"artifactType": r.artifact_type, "digest": r.digest} for r in self.referrers]}


@dataclass(frozen=True)
class ReleaseBuild:
    release: str
    layout: Path
    epoch: int
    images: tuple[BuiltImage, ...]
    indexes: dict[str, Descriptor]          # image name -> multi-arch index
    refs: dict[str, Descriptor]
    blobs_written: int = 0
    epoch_source: str = "the lock"      # the lock | the environment | --epoch
    revision: Optional[str] = None      # org.opencontainers.image.revision
    revision_in_images: bool = False    # True: a configured value, in every manifest; False: the checkout's commit,
                                        # recorded outside the images (layout and archive index.json) only
    family: str = "default"
    writer_drift: tuple[str, ...] = ()  # writers other than the pinned ones, built with --allow-writer-drift
