"""Caches are untrusted storage: private directories, entries sealed with a key kept outside the cache.

Who can write the cache directory is not who runs the build: a CI cache is restored from wherever
the last job saved it, and a shared build host has other users. So, like ssh with ~/.ssh:
- a cache directory must belong to the user and be writable by no one else (refused, naming it);
- an entry is a regular file opened without following links and without blocking, its size checked
  before it is read, so a FIFO, a device or a link to /dev/zero is a miss, never a hang;
- an entry's first line is an HMAC-SHA256 of its kind, its key and its body under a key that lives
  in the user's configuration directory (0600, made on first use), not in the cache: whoever can
  write only the cache can neither forge an entry nor move one to another key. Anything that does
  not verify is a miss, and the work is done again.
"""
from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Optional

from builder.common.atomic import atomic_write_bytes
from builder.common.files import read_regular
from builder.errors import BuildError

KEY_BYTES = 32


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can write: made 0700 when absent, refused otherwise."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(path)
    why = ("is a symbolic link" if stat.S_ISLNK(st.st_mode) else "is not a directory" if not stat.S_ISDIR(st.st_mode)
           else f"belongs to uid {st.st_uid}, not {os.geteuid()}" if st.st_uid != os.geteuid()
           else "is writable by group or others" if st.st_mode & 0o022 else "")
    if why:
        raise BuildError(f"{path} {why}: a cache others can write is not used (fix its owner and mode, "
                         f"e.g. chmod go-w {path}, or choose another --cache-dir)")
    return path


def read_entry(path: Path, limit: int) -> Optional[bytes]:
    """A cache entry's bytes, or None for anything but a regular file of at most ``limit`` bytes: a miss."""
    try:
        return read_regular(path, limit)
    except (BuildError, OSError):
        return None


def user_key(config_dir: Optional[Path] = None) -> bytes:
    """The key cache entries are sealed with, from the user's configuration directory (made on first use)."""
    base = Path(config_dir) if config_dir else Path(os.environ.get("XDG_CONFIG_HOME")
                                                    or Path.home() / ".config") / "freebsd-images"
    path = private_dir(base) / "cache.key"
    data = read_entry(path, 4096)
    if data is None:
        if path.exists() or path.is_symlink():
            raise BuildError(f"{path}: not a regular file of at most 4096 bytes: remove it (a new key is made)")
        atomic_write_bytes(path, secrets.token_hex(KEY_BYTES).encode() + b"\n", mode=0o600)
        data = read_entry(path, 4096)
    st = os.lstat(path)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise BuildError(f"{path}: the cache key must be the user's own and readable by no one else (chmod 600)")
    key = bytes.fromhex(data.decode("ascii", "replace").strip()) if data else b""
    if len(key) < KEY_BYTES:
        raise BuildError(f"{path}: not a cache key (64 hex digits): remove it (a new key is made)")
    return key


class Sealed:
    """Entries of one kind under a private directory, each sealed with the user's key."""

    def __init__(self, root: Path, key: bytes, kind: str):
        self.root, self.key, self.kind = Path(root), key, kind

    def path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def _mac(self, name: str, body: bytes) -> bytes:
        return hmac.new(self.key, f"{self.kind}\0{name}\0".encode() + body, "sha256").hexdigest().encode()

    def read(self, name: str, limit: int) -> Optional[bytes]:
        data = read_entry(self.path(name), limit + 65)
        if data is None:
            return None
        mac, _, body = data.partition(b"\n")
        return body if hmac.compare_digest(mac, self._mac(name, body)) else None

    def write(self, name: str, body: bytes) -> None:
        private_dir(private_dir(self.root) / name[:2])
        # not fsynced: a torn entry fails its seal and is a miss
        atomic_write_bytes(self.path(name), self._mac(name, body) + b"\n" + body, durable=False)
