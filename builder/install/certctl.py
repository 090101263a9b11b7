"""``certctl rehash``: the /etc/ssl/certs/<subject-hash>.<n> links OpenSSL looks up.

The hash is OpenSSL's X509_NAME_hash: the first four bytes (little-endian) of
the SHA-1 of the subject's canonical encoding -- every string value converted
to UTF-8, trimmed, inner whitespace collapsed, ASCII lower-cased, and each
RDN's SET re-encoded in DER without the outer SEQUENCE header.
"""
from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from builder.errors import BuildError

TRUSTED_DIRS = ("/usr/share/certs/trusted", "/usr/local/share/certs", "/usr/local/etc/ssl/certs")
UNTRUSTED_DIRS = {"/usr/share/certs/untrusted": "/etc/ssl/untrusted",
                  "/usr/local/etc/ssl/untrusted": "/etc/ssl/untrusted",
                  "/usr/share/certs/blacklisted": "/etc/ssl/blacklisted",
                  "/usr/local/etc/ssl/blacklisted": "/etc/ssl/blacklisted"}
CERT_SUFFIXES = (".pem", ".crt", ".cer")
_CERT_DIRS = frozenset(TRUSTED_DIRS) | frozenset(UNTRUSTED_DIRS)

if TYPE_CHECKING:
    from cryptography import x509


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _canon(value: str) -> str:
    ws = " \t\n\v\f\r"
    s = value.strip(ws)
    out, space = [], False
    for ch in s:
        if ch in ws:
            space = True
            continue
        if space:
            out.append(" ")
            space = False
        out.append(ch.lower() if ch < "\x80" else ch)
    return "".join(out)


def subject_hash(cert: x509.Certificate) -> str:
    enc = b""
    for rdn in cert.subject.rdns:
        avas = []
        for attr in rdn:
            value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
            avas.append(_tlv(0x30, _oid(attr.oid.dotted_string) + _tlv(0x0C, _canon(value).encode("utf-8"))))
        enc += _tlv(0x31, b"".join(sorted(avas)))
    digest = hashlib.sha1(enc).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def _fingerprint(cert: "x509.Certificate") -> bytes:
    from cryptography.hazmat.primitives import hashes
    return cert.fingerprint(hashes.SHA256())


def load_cert(data: bytes, where: str) -> x509.Certificate:
    from cryptography import x509   # here: only an image with certificates needs it
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise BuildError(f"certctl: {where} is not a certificate: {exc}") from exc


@dataclass(frozen=True)
class Link:
    path: str      # /etc/ssl/certs/abcd1234.0
    target: str    # relative target, as certctl writes it


def _relative(target: str, link: str) -> str:
    return posixpath.relpath(target, posixpath.dirname(link))


def rehash(certs: dict[str, bytes]) -> list[Link]:
    """Links for certificate files given as {absolute path: content}."""
    untrusted_fps: set[bytes] = set()
    links: list[Link] = []
    used: dict[str, int] = {}

    def add(dest_dir: str, path: str, cert: x509.Certificate) -> None:
        h = subject_hash(cert)
        n = used.get(f"{dest_dir}/{h}", 0)
        used[f"{dest_dir}/{h}"] = n + 1
        link = f"{dest_dir}/{h}.{n}"
        links.append(Link(link, _relative(path, link)))

    for src, dest in UNTRUSTED_DIRS.items():
        for path in sorted(p for p in certs if posixpath.dirname(p) == src and p.endswith(CERT_SUFFIXES)):
            cert = load_cert(certs[path], path)
            untrusted_fps.add(_fingerprint(cert))
            add(dest, path, cert)
    for src in TRUSTED_DIRS:
        for path in sorted(p for p in certs if posixpath.dirname(p) == src and p.endswith(CERT_SUFFIXES)):
            cert = load_cert(certs[path], path)
            if _fingerprint(cert) in untrusted_fps:
                continue
            add("/etc/ssl/certs", path, cert)
    return sorted(links, key=lambda l: l.path)


def wanted(path: str) -> bool:
    # asked of every path of every image: rpartition is dirname for the model's canonical paths
    return path.rpartition("/")[0] in _CERT_DIRS and path.endswith(CERT_SUFFIXES)

