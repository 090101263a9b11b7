"""A release's archives: one per built image and arch, the CHECKSUM files, and their signatures.

They sit next to the release's layout (OUT/<release>/release/, release-<family>/ for another family)
and name the images as the build did: the release as declared, never as re-rooted on a mirror.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from builder.oci.archive import archive_dir, write_archives
from builder.oci.release import ReleaseBuild
from builder.oci.sign import Signer, sign_files
from builder.runs.context import Context


def write_release_archives(rb: ReleaseBuild, ctx: Context, out: Path, sign_key: Optional[str] = None) -> list[Path]:
    """Write the archives of ``rb`` under ``out``/<release>/ and return every file written.

    With ``sign_key``, CHECKSUM.SHA256/SHA512 get detached armoured signatures (CHECKSUM.*.asc): the
    checksums cover every archive, so signing them signs the release."""
    written = write_archives(rb, ctx.target.release, Path(out) / ctx.name / archive_dir(ctx.family.name))
    if sign_key:
        with Signer.open(sign_key) as signer:
            written += sign_files(signer, [w for w in written if w.name.startswith("CHECKSUM.")])
    return written
