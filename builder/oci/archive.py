"""Release archives like FreeBSD's own: one OCI layout tarball per image and arch.

``FreeBSD-14.2-RELEASE-amd64-container-image-minimal.txz`` holds an OCI
layout (oci-layout, index.json, blobs) with that single image, which
``podman load`` and ``skopeo copy oci-archive:`` accept. Tar headers are fixed
(epoch mtime, root, 0644/0755), xz runs single-threaded with a fixed preset,
layers are streamed from the layout's blobs; CHECKSUM.SHA256 and
CHECKSUM.SHA512 list every archive as FreeBSD release files do (``SHA256 (name) = hex``).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from builder.common import tarutil
from builder.common.compress import Xz
from builder.common.atomic import atomic_output, atomic_write_bytes
from builder.config.release import Release
from builder.oci.layout import INDEX_MT, LAYOUT_FILE, REF_NAME, Layout

KIND = {"release": "RELEASE", "stable": "STABLE", "current": "CURRENT"}
# FreeBSD names release files TARGET-TARGET_ARCH when the two differ
ARCH_NAME = {"amd64": "amd64", "aarch64": "arm64-aarch64", "riscv64": "riscv-riscv64",
             "powerpc64le": "powerpc-powerpc64le", "armv7": "arm-armv7", "i386": "i386"}
XZ_PRESET = 6


def archive_name(release: Release, arch: str, flavour: str) -> str:
    return f"FreeBSD-{release.name}-{KIND.get(release.kind, release.kind.upper())}-{ARCH_NAME.get(arch, arch)}-container-image-{flavour}.txz"


def write_image_archive(layout: Layout, manifest_digest: str, ref: str, epoch: int, dest: Path) -> None:
    man_bytes = layout.read_blob(manifest_digest)
    man = json.loads(man_bytes)
    desc = {"mediaType": man["mediaType"], "digest": manifest_digest, "size": len(man_bytes),
            "annotations": {REF_NAME: ref}}
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": [desc]},
                       sort_keys=True, indent=2).encode() + b"\n"
    blobs = sorted({manifest_digest, man["config"]["digest"], *(l["digest"] for l in man["layers"])})
    meta = dict(mtime=epoch, uname="root", gname="wheel")
    with atomic_output(dest) as out:
        xz = Xz(out, XZ_PRESET)
        with tarutil.TarWriter(xz) as tar:
            tar.addfile(tarutil.info("blobs", "dir", mode=0o755, **meta))
            tar.addfile(tarutil.info("blobs/sha256", "dir", mode=0o755, **meta))
            for d in blobs:
                path = layout.blob_path(d)
                with open(path, "rb") as fh:
                    tar.addfile(tarutil.info(f"blobs/sha256/{path.name}", "file", size=path.stat().st_size,
                                             mode=0o644, **meta), fh)
            tar.addfile(tarutil.info("index.json", "file", size=len(index), mode=0o644, **meta), io.BytesIO(index))
            tar.addfile(tarutil.info("oci-layout", "file", size=len(LAYOUT_FILE), mode=0o644, **meta),
                        io.BytesIO(LAYOUT_FILE))
        xz.finish()


def write_checksums(directory: Path) -> list[Path]:
    names = sorted(p.name for p in Path(directory).glob("*.txz"))
    out = []
    for algo, fname in (("sha256", "CHECKSUM.SHA256"), ("sha512", "CHECKSUM.SHA512")):
        lines = []
        for n in names:
            h = hashlib.new(algo)
            with open(Path(directory) / n, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            lines.append(f"{algo.upper()} ({n}) = {h.hexdigest()}\n")
        atomic_write_bytes(Path(directory) / fname, "".join(lines).encode())
        out.append(Path(directory) / fname)
    return out


def write_archives(build, release: Release, directory: Path) -> list[Path]:
    """One archive per built (flavour, arch), then the CHECKSUM files."""
    layout = Layout(build.layout)
    written = []
    for img in build.images:
        dest = Path(directory) / archive_name(release, img.arch, img.flavour)
        write_image_archive(layout, img.manifest.digest, f"{img.name}:{img.tags[0]}", build.epoch, dest)
        written.append(dest)
    return written + write_checksums(directory)
