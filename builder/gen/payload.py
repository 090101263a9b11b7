"""Synthetic file contents of the right shape: FreeBSD ELF files, TZif, CA roots."""
from __future__ import annotations

import datetime
import hashlib
import random
import struct

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

ELF_MACHINE = {"amd64": 62, "aarch64": 183, "riscv64": 243, "i386": 3, "armv7": 40, "powerpc64le": 21}
ELFOSABI_FREEBSD = 9


def elf_header(arch: str, shared: bool) -> bytes:
    """A 64-byte ELF header as FreeBSD's toolchain writes for this architecture."""
    klass = 1 if arch in ("i386", "armv7") else 2
    ident = b"\x7fELF" + bytes([klass, 1, 1, ELFOSABI_FREEBSD]) + bytes(8)
    e_type = 3 if shared else 2
    if klass == 2:
        rest = struct.pack("<HHIQQQIHHHHHH", e_type, ELF_MACHINE[arch], 1, 0, 64, 0, 0, 64, 56, 0, 64, 0, 0)
    else:
        rest = struct.pack("<HHIIIIIHHHHHH", e_type, ELF_MACHINE[arch], 1, 0, 52, 0, 0, 52, 32, 0, 40, 0, 0)
    return ident + rest


class Filler:
    """Deterministic, moderately compressible bytes (like real binaries, ~2-3x)."""

    def __init__(self, seed: str):
        self.rng = random.Random(hashlib.sha256(seed.encode()).digest())
        self.chunks = [self.rng.randbytes(64) for _ in range(512)] + [bytes(64)] * 128

    def bytes(self, n: int) -> bytes:
        k = n // 64 + 1
        return b"".join(self.rng.choices(self.chunks, k=k))[:n]


def elf_file(arch: str, shared: bool, size: int, filler: Filler) -> bytes:
    head = elf_header(arch, shared)
    return head + filler.bytes(max(0, size - len(head)))


def tzif(offset_seconds: int, abbrev: str) -> bytes:
    """A TZif version 2 file with one local time type and no transitions."""
    def block(v1: bool) -> bytes:
        counts = struct.pack(">6l", 0, 0, 0, 0, 1, len(abbrev) + 1)
        ttinfo = struct.pack(">lBB", offset_seconds, 0, 0)
        return b"TZif2" + bytes(15) + counts + ttinfo + abbrev.encode() + b"\0"
    footer = f"\n{abbrev}{-offset_seconds // 3600 if offset_seconds else 0}\n".encode()
    return block(True) + block(False) + footer


def ca_certificate(name: str, seed: str) -> bytes:
    """A self-signed CA root in PEM; Ed25519 so that the bytes are deterministic."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest())
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FreeBSD Images Demo Trust"),
        x509.NameAttribute(NameOID.COMMON_NAME, name.replace("_", " ")),
    ])
    serial = int.from_bytes(hashlib.sha256(f"serial/{seed}/{name}".encode()).digest()[:8], "big") | 1
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
            .not_valid_after(datetime.datetime(2045, 1, 1, tzinfo=datetime.timezone.utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, None))
    return cert.public_bytes(serialization.Encoding.PEM)
