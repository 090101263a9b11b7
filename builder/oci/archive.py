"""Release archives like FreeBSD's own: one OCI layout tarball per image and arch.

``FreeBSD-14.2-RELEASE-amd64-container-image-minimal.txz`` holds an OCI
layout (oci-layout, index.json, blobs) with that single image, which
``podman load`` and ``skopeo copy oci-archive:`` accept. Its ref is the
release's ``archive-ref`` (default NAME:TAG-PLATFORM; the official family's is
FreeBSD's ``freebsd-<image>:<rev>-<branch>-<arch>``): one per image and arch,
so that loading every archive of a release tags every image. Tar headers are fixed
(epoch mtime, root, 0644/0755), xz runs single-threaded with a fixed preset,
layers are streamed from the layout's blobs; CHECKSUM.SHA256 and
CHECKSUM.SHA512 list every archive as FreeBSD release files do (``SHA256 (name) = hex``).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Optional

from builder.common import tarutil
from builder.common.compress import Xz
from builder.common.hashing import file_digest
from builder.common.atomic import atomic_output, atomic_write_bytes
from builder.config.release import Release
from builder.errors import BuildError
from builder.oci.release import ReleaseBuild
from builder.oci.layout import INDEX_MT, JSON_LIMIT, LAYOUT_FILE, MANIFEST_MT, REF_NAME, Layout

# FreeBSD names release files TARGET-TARGET_ARCH when the two differ
ARCH_NAME = {"amd64": "amd64", "aarch64": "arm64-aarch64", "riscv64": "riscv-riscv64",
             "powerpc64le": "powerpc-powerpc64le", "armv7": "arm-armv7", "i386": "i386"}
XZ_PRESET = 6


def archive_dir(family: str) -> str:
    """Where a build's archives go under OUT/<release>/: families may share flavour names (static)."""
    from builder.config.family import DEFAULT_FAMILY
    return "release" if family == DEFAULT_FAMILY else f"release-{family}"


def archive_name(release: Release, arch: str, flavour: str) -> str:
    return f"FreeBSD-{release.name}-{release.branch_kind}-{ARCH_NAME.get(arch, arch)}-container-image-{flavour}.txz"


def write_image_archive(layout: Layout, manifest_digest: str, ref: str, epoch: int, dest: Path,
                        annotations: Optional[dict] = None) -> None:
    """``annotations`` go on the descriptor in the archive's index.json (besides the ref name).

    Blobs are opened as regular files only (never a symlink or FIFO) and checked against their
    digests as they stream into the archive: a damaged layout makes no archive.
    """
    man_bytes = layout.read_blob(manifest_digest, JSON_LIMIT)
    man = layout.read_manifest(manifest_digest)
    desc = {"mediaType": man.get("mediaType", MANIFEST_MT), "digest": manifest_digest, "size": len(man_bytes),
            "annotations": dict(annotations or {}, **{REF_NAME: ref})}
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
                with layout.open_blob(d) as fh:
                    size = os.fstat(fh.fileno()).st_size
                    tar.addfile(tarutil.info(f"blobs/sha256/{d.split(':', 1)[1]}", "file", size=size,
                                             mode=0o644, **meta), fh)
                    if fh.verify() != size:
                        raise BuildError(f"{layout.blob_path(d)}: changed size while it was archived; refusing")
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
            lines.append(f"{algo.upper()} ({n}) = {file_digest(Path(directory) / n, algo)}\n")
        atomic_write_bytes(Path(directory) / fname, "".join(lines).encode())
        out.append(Path(directory) / fname)
    return out


def archive_ref(release: Release, img) -> str:
    """The ref podman load gives the image: release.archive_ref (the family's, for the official family
    FreeBSD's ``freebsd-<image>:<rev>-<branch>-<arch>``), one per image and arch."""
    return release.render_archive_ref(img.flavour, release.arch(img.arch), img.tags[0], img.version)


def write_archives(build: ReleaseBuild, release: Release, directory: Path) -> list[Path]:
    """One archive per built (flavour, arch), then the CHECKSUM files.

    ``release`` names the images as the build did (the family's naming: Context.declared)."""
    layout = Layout(build.layout)
    written = []
    refs: dict[str, str] = {}
    ann = {}
    if build.revision and not build.revision_in_images:
        ann["org.opencontainers.image.revision"] = build.revision
    for img in build.images:
        dest = Path(directory) / archive_name(release, img.arch, img.flavour)
        ref = archive_ref(release, img)
        if ref in refs:
            raise BuildError(f"release archives {refs[ref]} and {dest.name} would both carry ref {ref}: "
                             f"podman load would leave one untagged (archive-ref of {release.source})")
        refs[ref] = dest.name
        write_image_archive(layout, img.manifest.digest, ref, build.epoch, dest, ann)
        written.append(dest)
    return written + write_checksums(directory)
