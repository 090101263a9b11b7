"""A content-addressed download cache: every file is named by its sha256.

Entries are written to a temp file in the cache, hashed while written,
checked, then renamed; a lookup re-hashes the entry and drops it when it
does not match its name, so a corrupt or partial file is never used.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Optional

from builder.common.atomic import atomic_write_bytes, pending
from builder.common.files import open_regular
from builder.common.sealed import private_dir, read_entry
from builder.errors import BuildError
from builder.resolve import checksum

HEX64 = re.compile(r"[0-9a-f]{64}")


def default_cache_dir() -> Path:
    env = os.environ.get("FREEBSD_IMAGES_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "freebsd-images"


def _hash_file(path: Path, expected_sum: str) -> tuple[str, Optional[str]]:
    """(sha256, blake2 when the sum is typed so) of a regular file; ("", None) for anything else: the
    cache is untrusted storage, and a link to /dev/zero or a FIFO must be a miss, not a hang."""
    # blake2 only for the typed sums that need it: hashing is most of a warm fetch
    sha = hashlib.sha256()
    b2 = checksum.Hasher(checksum.BLAKE2_BASE32) if checksum.file_sum_kind(expected_sum) == checksum.BLAKE2_BASE32 \
        else None
    try:
        fh = open_regular(path)
    except (BuildError, OSError):
        return "", None
    with fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
            if b2 is not None:
                b2.update(chunk)
    return sha.hexdigest(), b2.encoded() if b2 is not None else None


class Cache:
    def __init__(self, root: Optional[Path] = None):
        self.root = Path(root or default_cache_dir())
        self._checked = False

    def _private(self) -> None:
        # checked on first use, not when made: commands that never download never touch the cache
        if not self._checked:
            private_dir(self.root)
            self._checked = True

    def _blob(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def _alias(self, typed_sum: str) -> Path:
        kind, _, body = typed_sum.partition("$")
        return self.root / "alias" / kind / body[:2] / body

    def _sha_for(self, expected_sum: str) -> Optional[str]:
        """The sha256 under which a file with this catalogue sum is stored, if known."""
        if HEX64.fullmatch(expected_sum):
            return expected_sum
        kind = checksum.file_sum_kind(expected_sum)
        body = expected_sum.split("$", 1)[1]
        if kind == checksum.SHA256_HEX:
            return body
        alias = self._alias(expected_sum)
        data = read_entry(alias, 256)
        if data is None:
            return None
        sha = data.decode("ascii", "replace").strip()
        return sha if HEX64.fullmatch(sha) else None

    def lookup(self, expected_sum: str) -> Optional[Path]:
        self._private()
        sha = self._sha_for(expected_sum)
        if sha is None:
            return None
        path = self._blob(sha)
        if not os.path.lexists(path):
            return None
        actual_sha, b2 = _hash_file(path, expected_sum)
        if actual_sha != sha or not checksum.package_sum_matches(expected_sum, actual_sha, b2):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        return path

    def store(self, expected_sum: str, what: str, writer: Callable[[object], None], attempts: int = 2) -> Path:
        """Fetch through writer(fileobj) into the cache, verifying against expected_sum."""
        hit = self.lookup(expected_sum)
        if hit is not None:
            return hit
        last = ""
        for _ in range(attempts):
            with pending(self.root / "tmp", "dl-") as p:
                writer(p.fh)
                p.fh.flush()
                sha, b2 = _hash_file(Path(p.path), expected_sum)
                if not checksum.package_sum_matches(expected_sum, sha, b2):
                    last = f"checksum mismatch: expected {expected_sum}, got sha256 {sha}"
                    continue
                dest = p.commit(self._blob(sha), 0o444)
            if not (HEX64.fullmatch(expected_sum) or expected_sum.startswith("1$")):
                atomic_write_bytes(self._alias(expected_sum), (sha + "\n").encode())
            return dest
        raise BuildError(f"{what}: {last}; refusing the download")
