"""Synthetic file contents of the right shape: FreeBSD ELF files, TZif, CA roots."""
from __future__ import annotations

import datetime
import hashlib
import random
import struct
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from builder.install.elf import MACHINE

ELFOSABI_FREEBSD = 9


RTLD = "/libexec/ld-elf.so.1"
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP, _PT_PHDR = 1, 2, 3, 6
_DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 1, 5, 10, 14, 15, 29


def _klass(arch: str) -> int:
    return MACHINE[arch][0]


def elf_header(arch: str, shared: bool, phnum: int = 0, entry: int = 0, order: str = "<") -> bytes:
    """An ELF header as FreeBSD's toolchain writes for this architecture (program headers follow it).

    ``order`` ">" makes a big-endian file (FreeBSD's powerpc64), for tests of readers.
    """
    klass = _klass(arch)
    ident = b"\x7fELF" + bytes([klass, 1 if order == "<" else 2, 1, ELFOSABI_FREEBSD]) + bytes(8)
    e_type = 3 if shared else 2
    if klass == 2:
        rest = struct.pack(order + "HHIQQQIHHHHHH", e_type, MACHINE[arch][1], 1, entry, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    else:
        rest = struct.pack(order + "HHIIIIIHHHHHH", e_type, MACHINE[arch][1], 1, entry, 52, 0, 0, 52, 32, phnum, 40, 0, 0)
    return ident + rest


def elf_image(arch: str, shared: bool, body: bytes, needed: tuple[str, ...] = (), soname: Optional[str] = None,
              interp: Optional[str] = None, runpath: Optional[str] = None, dynamic: bool = True,
              rpath: Optional[str] = None, order: str = "<") -> bytes:
    """An ELF stand-in the size of ``body`` (or a little larger), built around its bytes.

    With ``dynamic`` it carries what the dynamic linker reads, laid out the
    way lld does: program headers, the interpreter path and .dynstr at the
    start, .dynamic near the end (so a reader must stream past the code to
    reach it), one PT_LOAD mapping the whole file. Without, it is a header
    and no program headers: a statically linked program as far as loading goes.
    """
    if not dynamic:
        head = elf_header(arch, shared, order=order)
        return head + body[len(head):]
    klass = _klass(arch)
    ehsize, phentsize, word = (64, 56, 8) if klass == 2 else (52, 32, 4)
    base = 0 if shared else 0x200000
    strings = list(dict.fromkeys(list(needed) + [s for s in (soname, rpath, runpath) if s]))
    dynstr = b"\0" + b"".join(s.encode() + b"\0" for s in strings)
    index = {}
    at = 1
    for s in strings:
        index[s] = at
        at += len(s.encode()) + 1
    phnum = 3 + (2 if interp else 0)
    interp_off = ehsize + phnum * phentsize
    interp_bytes = interp.encode() + b"\0" if interp else b""
    str_off = interp_off + len(interp_bytes)
    dyn = [(_DT_NEEDED, index[n]) for n in dict.fromkeys(needed)]
    if soname:
        dyn.append((_DT_SONAME, index[soname]))
    if rpath:
        dyn.append((_DT_RPATH, index[rpath]))
    if runpath:
        dyn.append((_DT_RUNPATH, index[runpath]))
    dyn += [(_DT_STRTAB, base + str_off), (_DT_STRSZ, len(dynstr)), (0, 0)]
    dynfmt = order + ("qQ" if klass == 2 else "iI")
    dynamic_bytes = b"".join(struct.pack(dynfmt, t, v) for t, v in dyn)
    size = max(len(body), str_off + len(dynstr) + len(dynamic_bytes) + word)
    dyn_off = (size - len(dynamic_bytes)) & ~(word - 1)

    def phdr(ptype: int, off: int, filesz: int, flags: int, align: int) -> bytes:
        if klass == 2:
            return struct.pack(order + "IIQQQQQQ", ptype, flags, off, base + off, base + off, filesz, filesz, align)
        return struct.pack(order + "IIIIIIII", ptype, off, base + off, base + off, filesz, filesz, flags, align)

    phdrs = []
    if interp:
        phdrs += [phdr(_PT_PHDR, ehsize, phnum * phentsize, 4, word), phdr(_PT_INTERP, interp_off, len(interp_bytes), 4, 1)]
    phdrs += [phdr(_PT_LOAD, 0, size, 5, 0x1000), phdr(_PT_DYNAMIC, dyn_off, len(dynamic_bytes), 6, word),
              phdr(0x6474E551, 0, 0, 6, 0)]  # PT_GNU_STACK, as every FreeBSD binary has
    head = elf_header(arch, shared, phnum, 0 if shared else base + str_off + len(dynstr), order) + b"".join(phdrs) \
        + interp_bytes + dynstr
    body = body.ljust(size, b"\0")
    return head + body[len(head):dyn_off] + dynamic_bytes + body[dyn_off + len(dynamic_bytes):size]


class Filler:
    """Deterministic, moderately compressible bytes (like real binaries, ~2-3x)."""

    def __init__(self, seed: str):
        self.rng = random.Random(hashlib.sha256(seed.encode()).digest())
        self.chunks = [self.rng.randbytes(64) for _ in range(512)] + [bytes(64)] * 128

    def bytes(self, n: int) -> bytes:
        k = n // 64 + 1
        return b"".join(self.rng.choices(self.chunks, k=k))[:n]



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
