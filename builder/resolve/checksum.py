"""pkg's checksum encodings (libpkg/pkg_checksum.c), as pkg writes and checks them.

Typed sums are ``<type>$<digest>``; the manifest digest is
``<version>$<type>$<digest>``. Type 1 is sha256 in hex, type 2 blake2b-512 in
pkg's own z-base32 variant (least significant bits first).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional

SHA256_HEX = 1
BLAKE2_BASE32 = 2
CHECKSUM_VERSION = 2
_Z32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def zbase32(data: bytes) -> str:
    """pkg's base32: 5-bit groups taken from the low bits of each byte upwards."""
    out: list[str] = []
    remain = -1
    for i, c in enumerate(data):
        step = i % 5
        if step == 0:
            out.append(_Z32[c & 0x1F])
            remain = c >> 5
        elif step == 1:
            x = remain | c << 3
            out += (_Z32[x & 0x1F], _Z32[x >> 5 & 0x1F])
            remain = x >> 10
        elif step == 2:
            x = remain | c << 1
            out.append(_Z32[x & 0x1F])
            remain = x >> 5
        elif step == 3:
            x = remain | c << 4
            out += (_Z32[x & 0x1F], _Z32[x >> 5 & 0x1F])
            remain = x >> 10 & 0x3
        else:
            x = remain | c << 2
            out += (_Z32[x & 0x1F], _Z32[x >> 5 & 0x1F])
            remain = -1
    if remain >= 0:
        out.append(_Z32[remain])
    return "".join(out)


class Hasher:
    """Streaming hasher for one typed sum kind."""

    def __init__(self, kind: int):
        if kind == SHA256_HEX:
            self._h = hashlib.sha256()
        elif kind == BLAKE2_BASE32:
            self._h = hashlib.blake2b(digest_size=64)
        else:
            raise ValueError(f"unsupported pkg checksum type {kind}")
        self.kind = kind

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def encoded(self) -> str:
        return self._h.hexdigest() if self.kind == SHA256_HEX else zbase32(self._h.digest())

    def typed(self) -> str:
        return f"{self.kind}${self.encoded()}"


def file_sum_kind(typed: str) -> int:
    """The hash kind of a file sum; an untyped value is sha256 hex, as pkg assumes."""
    head, sep, _ = typed.partition("$")
    if sep and head.isdigit():
        return int(head)
    return SHA256_HEX


def typed_sum(data: bytes, kind: int) -> str:
    h = Hasher(kind)
    h.update(data)
    return h.typed()


def sha256_of(expected: str) -> Optional[str]:
    """The sha256 (hex) a catalogue ``sum`` names, or None when it names another hash."""
    if file_sum_kind(expected) != SHA256_HEX:
        return None
    return expected.split("$", 1)[1] if "$" in expected else expected


def package_sum_matches(expected: str, sha256_hex: str, blake2_b32: str | None) -> bool:
    """Check a catalogue ``sum``: plain sha256 hex (pkg 2.0) or typed (pkg 2.8)."""
    kind = file_sum_kind(expected)
    body = expected.split("$", 1)[1] if "$" in expected else expected
    if kind == SHA256_HEX:
        return body == sha256_hex
    if kind == BLAKE2_BASE32:
        return blake2_b32 is not None and body == blake2_b32
    return False


def manifest_digest(name: str, origin: str, version: str, arch: str,
                    deps: Iterable[tuple[str, str]] = (), options: Iterable[tuple[str, str]] = (),
                    shlibs_required: Iterable[str] = (), shlibs_provided: Iterable[str] = (),
                    users: Iterable[str] = (), groups: Iterable[str] = (),
                    provides: Iterable[str] = (), requires: Iterable[str] = ()) -> str:
    """``packages.manifestdigest`` as pkg computes it when registering a package.

    Sorted (key, value) pairs hashed as key||value. ``arch`` is the old-style
    arch string (``freebsd:14:x86:64``) as in the manifest. Checked against
    pkg 2.0.6's own database in the tests.
    """
    entries = [("name", name), ("origin", origin), ("version", version), ("arch", arch)]
    entries += list(options)
    entries += [("required_shlib", s) for s in shlibs_required]
    entries += [("provided_shlib", s) for s in shlibs_provided]
    entries += [("user", u) for u in users]
    entries += [("group", g) for g in groups]
    entries += [("depend", f"{n}~{o}") for n, o in deps]
    entries += [("provide", p) for p in provides]
    entries += [("require", r) for r in requires]
    entries.sort(key=lambda kv: (kv[0].encode(), kv[1].encode()))
    h = hashlib.blake2b(digest_size=64)
    for k, v in entries:
        h.update(k.encode())
        h.update(v.encode())
    return f"{CHECKSUM_VERSION}${BLAKE2_BASE32}${zbase32(h.digest())}"
