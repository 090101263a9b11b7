"""Catalogue signatures as pkg checks them.

Both modes sign the ASCII hex sha256 of the catalogue file with RSA PKCS#1
v1.5 / SHA-256. ``pubkey``: an entry ``signature`` checked against a key file.
``fingerprints``: entries ``<file>.sig`` and ``<file>.pub``; the sha256 of the
shipped public key must be listed in ``trusted/`` and not in ``revoked/``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from builder.errors import BuildError
from builder.resolve import ucl


@dataclass(frozen=True)
class Fingerprint:
    name: str
    function: str
    value: str


def load_fingerprints(directory: Path) -> list[Fingerprint]:
    out = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        d = ucl.parse(path.read_text(encoding="utf-8", errors="replace"), str(path))
        fn, fp = d.get("function"), d.get("fingerprint")
        if fn != "sha256" or not isinstance(fp, str):
            raise BuildError(f"{path}: not a fingerprint file (want function: \"sha256\" and fingerprint: \"<hex>\")")
        out.append(Fingerprint(path.name, fn, fp.lower()))
    return out


def _verify_rsa(pem: bytes, signature: bytes, catalogue_sha256: str, what: str, key_name: str) -> None:
    # imported here: a build whose lock needs no catalogue never loads cryptography
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise BuildError(f"{what}: cannot load public key {key_name}: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise BuildError(f"{what}: key {key_name} is not an RSA key")
    # pkg writes the signature with a trailing NUL in some versions.
    candidates = [signature]
    if signature.endswith(b"\0"):
        candidates.append(signature[:-1])
    for sig in candidates:
        try:
            key.verify(sig, catalogue_sha256.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
            return
        except InvalidSignature:
            continue
    raise BuildError(f"{what}: BAD SIGNATURE with key {key_name}: the catalogue was modified or signed by another key")


def verify(members: dict[str, bytes], catalogue_member: str, signature_type: str, what: str,
           fingerprints: Optional[Path] = None, pubkey: Optional[Path] = None) -> str:
    """Check the catalogue archive's signature; return a short description of the signer."""
    content = members[catalogue_member]
    digest = hashlib.sha256(content).hexdigest()
    if signature_type == "none":
        return "unsigned (signature_type none)"
    if signature_type == "pubkey":
        if pubkey is None:
            raise BuildError(f"{what}: signature_type pubkey but no pubkey configured")
        sig = members.get("signature")
        if sig is None:
            raise BuildError(f"{what}: no signature in the catalogue archive (expected entry 'signature' for pubkey {pubkey})")
        try:
            pem = Path(pubkey).read_bytes()
        except OSError as exc:
            raise BuildError(f"{what}: cannot read pubkey {pubkey}: {exc.strerror}") from exc
        _verify_rsa(pem, sig, digest, what, str(pubkey))
        return f"pubkey {pubkey}"
    if signature_type == "fingerprints":
        if fingerprints is None:
            raise BuildError(f"{what}: signature_type fingerprints but no fingerprints directory configured")
        sig = members.get(catalogue_member + ".sig")
        pub = members.get(catalogue_member + ".pub")
        if sig is None or pub is None:
            raise BuildError(f"{what}: no signature in the catalogue archive (expected {catalogue_member}.sig and {catalogue_member}.pub)")
        fp = hashlib.sha256(pub).hexdigest()
        revoked = {f.value: f.name for f in load_fingerprints(Path(fingerprints) / "revoked")}
        if fp in revoked:
            raise BuildError(f"{what}: signing key {fp} is REVOKED ({Path(fingerprints) / 'revoked' / revoked[fp]})")
        trusted_list = load_fingerprints(Path(fingerprints) / "trusted")
        if not trusted_list:
            raise BuildError(f"{what}: no trusted fingerprints in {Path(fingerprints) / 'trusted'}")
        trusted = {f.value: f.name for f in trusted_list}
        if fp not in trusted:
            raise BuildError(f"{what}: signing key {fp} is not trusted (no match in {Path(fingerprints) / 'trusted'})")
        _verify_rsa(pub, sig, digest, what, f"{trusted[fp]} ({fp})")
        return f"fingerprint {trusted[fp]}"
    raise BuildError(f"{what}: unknown signature_type {signature_type!r}")
