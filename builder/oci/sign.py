"""OpenPGP signatures with GnuPG: containers' simple signing, DSSE envelopes, detached checksum signatures.

Formats:

* Image signatures are containers' "simple signing" (containers-signature(5)): an OpenPGP
  *signed message* (``gpg --sign``, not detached) whose payload is the JSON
  ``{"critical": {"type": "atomic container signature", "image": {"docker-manifest-digest": D},
  "identity": {"docker-reference": HOST/REPO:TAG}}, "optional": {...}}``. They are stored in a
  lookaside ("sigstore") directory as skopeo and podman read it, configured in registries.d:
  ``<lookaside>/<repository path>@sha256=<hex>/signature-<n>``. This is not cosign's format.
* Provenance is wrapped in a DSSE envelope (``payloadType`` application/vnd.in-toto+json) whose
  signature is an OpenPGP *detached, binary* signature (``gpg --detach-sign``) over DSSE's
  pre-authentication encoding PAE(payloadType, payload), base64 in ``sig``; ``keyid`` is the
  signing key's OpenPGP fingerprint. Verify with ``gpg --verify sig pae``.
* Release checksums get armoured detached signatures (``CHECKSUM.SHA256.asc``), as FreeBSD signs its own.

Signatures are never written into an image layout: GnuPG puts the time into every signature,
so they are the one output that differs between runs. The signing key comes from
``--sign-key``: a key file (imported into a temporary GNUPGHOME that is removed afterwards) or
a key id or fingerprint looked up in $GNUPGHOME. It is never printed; a passphrase, if the key
has one, is read from $FREEBSD_IMAGES_SIGN_PASSPHRASE and handed to gpg through a pipe.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from builder import __version__
from builder.common.atomic import atomic_write_bytes
from builder.errors import BuildError
from builder.common.files import read_regular

SIGNATURE_TYPE = "atomic container signature"
DSSE_MT = "application/vnd.dsse.envelope.v1+json"
DSSE_SIGNED_BY = "org.freebsd.images.dsse.signed-by"       # the OpenPGP fingerprint, on the referrer
DSSE_STATEMENT = "org.freebsd.images.dsse.statement"        # the digest of the unsigned statement it wraps
DSSE_SCHEME = "org.freebsd.images.dsse.signature"
DSSE_SCHEME_VALUE = "openpgp-detached-binary"
PASSPHRASE_ENV = "FREEBSD_IMAGES_SIGN_PASSPHRASE"
CREATOR = f"freebsd-images {__version__} (gpg)"
# Signatures are hostile input (a lookaside directory, an image's DSSE envelope): a simple-signing
# signature or a detached one is a few hundred bytes, and its payload a few hundred more. A small
# signature can still be a compressed packet that expands to gigabytes, so gpg's output is read
# with a bound too, and gpg stopped beyond it.
SIGNATURE_LIMIT = 64 << 10      # bytes of one signature handed to gpg
MAX_SIGNATURES = 64             # signature-N files read for one manifest
PAYLOAD_LIMIT = 64 << 10        # bytes of a signed message's payload
OUTPUT_LIMIT = 16 << 20         # gpg's output otherwise (exported keys, key listings, signatures we make)
STATUS_LIMIT = 1 << 20          # of gpg's status file
ERROR_TAIL = 64 << 10           # of gpg's stderr, kept for the message


class SignatureError(BuildError):
    """A signature that does not verify; the message says why."""


class OutputLimit(BuildError):
    """gpg wrote more than it was allowed to: a refusal, not a signature that fails to verify."""


class Gpg:
    """GnuPG on one home directory: the user's ($GNUPGHOME) or a temporary one of its own."""

    def __init__(self, home: Optional[Path] = None):
        if not shutil.which("gpg"):
            raise BuildError("gpg is not installed (Debian: apt-get install gnupg)")
        self.own = home is None
        self.home = Path(tempfile.mkdtemp(prefix="freebsd-images-gpg.")) if home is None else Path(home)
        if self.own:
            os.chmod(self.home, 0o700)

    @classmethod
    def user(cls) -> "Gpg":
        g = cls(Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg"))
        g.own = False
        return g

    def close(self) -> None:
        if self.own:
            try:   # the agent gpg started for this home must not outlive it
                subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True)
            except OSError:
                pass
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, args: list[str], data: bytes = b"", passphrase: Optional[str] = None,
            what: str = "gpg", limit: int = OUTPUT_LIMIT) -> tuple[bytes, list[list[str]]]:
        """gpg with our home; (stdout, status lines split into fields). Raises with gpg's own words,
        or when gpg writes more than ``limit`` bytes (it is stopped then)."""
        with tempfile.NamedTemporaryFile(dir=self.home, prefix=".status.") as status:
            argv = ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", "--yes",
                    "--status-file", status.name]
            fds: tuple[int, ...] = ()
            rfd = wfd = None
            if passphrase is not None:
                rfd, wfd = os.pipe()
                argv += ["--pinentry-mode", "loopback", "--passphrase-fd", str(rfd)]
                fds = (rfd,)
            try:
                proc = subprocess.Popen(argv + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, pass_fds=fds)
                if wfd is not None:
                    os.close(rfd)
                    rfd = None
                    os.write(wfd, passphrase.encode() + b"\n")
                    os.close(wfd)
                    wfd = None
                out, err = _communicate(proc, data, limit, what)
            finally:
                for fd in (rfd, wfd):
                    if fd is not None:
                        os.close(fd)
            with open(status.name, "rb") as fh:
                text = fh.read(STATUS_LIMIT).decode(errors="replace")
            lines = [l.split()[1:] for l in text.splitlines() if l.startswith("[GNUPG:] ")]
        if proc.returncode != 0:
            said = [l.strip() for l in err.decode(errors="replace").splitlines() if l.strip()]
            raise BuildError(f"{what}: gpg failed (exit {proc.returncode}): {'; '.join(said[-2:])[-500:]}")
        return out, lines

    def import_keys(self, path: Path) -> list[str]:
        """Import a key file; the primary fingerprints it brought."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BuildError(f"cannot read key file {path}: {exc}") from exc
        _, status = self.run(["--import"], data, what=f"importing {path}")
        fprs = sorted({s[2] for s in status if s and s[0] == "IMPORT_OK" and len(s) > 2})
        if not fprs:
            raise BuildError(f"{path}: no OpenPGP key in it")
        return fprs

    def fingerprints(self, secret: bool, selector: Optional[str] = None) -> list[str]:
        args = ["--with-colons", "--list-secret-keys" if secret else "--list-keys"] + ([selector] if selector else [])
        try:
            out, _ = self.run(args, what="listing keys")
        except BuildError:
            return []
        fprs, primary = [], False
        for line in out.decode(errors="replace").splitlines():
            f = line.split(":")
            if f[0] in ("pub", "sec"):
                primary = True
            elif f[0] in ("sub", "ssb"):
                primary = False
            elif f[0] == "fpr" and primary:
                fprs.append(f[9])
                primary = False
        return fprs


def _communicate(proc: subprocess.Popen, data: bytes, limit: int, what: str) -> tuple[bytes, bytes]:
    """(stdout, the tail of stderr) of gpg fed data; killed, and refused, once stdout passes limit."""
    err = bytearray()

    def feed() -> None:
        try:
            proc.stdin.write(data)
        except OSError:
            pass                    # gpg stopped reading (killed, or it failed): its exit says why
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def drain() -> None:
        while chunk := proc.stderr.read(1 << 16):
            err.extend(chunk)
            del err[:-ERROR_TAIL]

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, drain)]
    for t in threads:
        t.start()
    out = bytearray()
    while chunk := proc.stdout.read(1 << 16):
        out += chunk
        if len(out) > limit:
            proc.kill()
            break
    proc.stdout.close()
    proc.wait()
    for t in threads:
        t.join()
    if len(out) > limit:
        raise OutputLimit(f"{what}: gpg's output is over the limit of {limit} bytes; refusing")
    return bytes(out), bytes(err)


class _HoldsGpg:
    """Owns a temporary GnuPG home, removed on close."""

    gpg: "Gpg"

    def close(self) -> None:
        self.gpg.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Signer(_HoldsGpg):
    """A secret key ready to sign; use as a context manager (a temporary keyring is removed on exit)."""

    def __init__(self, gpg: Gpg, fingerprint: str):
        self.gpg, self.fingerprint = gpg, fingerprint
        self.passphrase = os.environ.get(PASSPHRASE_ENV)

    @classmethod
    def open(cls, key: str) -> "Signer":
        if Path(key).is_file():
            gpg = Gpg()
            try:
                gpg.import_keys(Path(key))
                fprs = gpg.fingerprints(secret=True)
                if len(fprs) != 1:
                    raise BuildError(f"the --sign-key file holds {len(fprs)} secret keys; give a file with exactly one")
            except BaseException:
                gpg.close()
                raise
            return cls(gpg, fprs[0])
        gpg = Gpg.user()
        fprs = gpg.fingerprints(secret=True, selector=key)
        if len(fprs) != 1:
            # the key id stays out of the message: it may come from a secret store of the CI
            raise BuildError(f"the --sign-key key names {len(fprs)} secret keys in {gpg.home} ($GNUPGHOME); "
                             "it must name exactly one, or be a key file")
        return cls(gpg, fprs[0])


    def sign(self, data: bytes) -> bytes:
        """An OpenPGP signed message (binary) carrying data."""
        out, _ = self.gpg.run(["--local-user", self.fingerprint, "--sign"], data, self.passphrase, "signing")
        return out

    def detach(self, data: bytes, armor: bool = False) -> bytes:
        out, _ = self.gpg.run(["--local-user", self.fingerprint, "--detach-sign"] + (["--armor"] if armor else []),
                              data, self.passphrase, "signing")
        return out

    def public_key(self) -> bytes:
        out, _ = self.gpg.run(["--armor", "--export", self.fingerprint], what="exporting the public key")
        return out


class Verifier(_HoldsGpg):
    """Trusts exactly the public keys of one key file (a temporary keyring of its own)."""

    def __init__(self, key_file: Path):
        self.gpg = Gpg()
        try:
            self.fingerprints = set(self.gpg.import_keys(Path(key_file)))
        except BaseException:
            self.gpg.close()
            raise

    @classmethod
    def of_signer(cls, signer: Signer) -> "Verifier":
        with tempfile.NamedTemporaryFile(suffix=".asc") as f:
            f.write(signer.public_key())
            f.flush()
            return cls(Path(f.name))


    def _check(self, status: list[list[str]], what: str) -> str:
        kinds = {s[0] for s in status if s}
        bad = kinds & {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}
        valid = [s for s in status if s and s[0] == "VALIDSIG"]
        if bad or len(valid) != 1:
            raise SignatureError(f"{what}: no valid signature by the given key ({', '.join(sorted(bad)) or 'unsigned'})")
        primary = valid[0][10] if len(valid[0]) > 10 else valid[0][1]
        if primary not in self.fingerprints:
            raise SignatureError(f"{what}: signed by {primary}, which is not the given key")
        return primary

    def open_signed(self, blob: bytes, what: str) -> tuple[bytes, str]:
        """The payload of a signed message and its signer's fingerprint, once the signature verifies."""
        _check_size(signature=blob, what=what)
        try:
            out, status = self.gpg.run(["--trust-model", "always", "--decrypt"], blob, what=what, limit=PAYLOAD_LIMIT)
        except OutputLimit:
            raise
        except BuildError as exc:
            raise SignatureError(f"{what}: signature does not verify: {exc}") from exc
        return out, self._check(status, what)

    def verify_detached(self, data: bytes, signature: bytes, what: str) -> str:
        _check_size(signature=signature, what=what)
        with tempfile.TemporaryDirectory() as d:
            sig, dat = Path(d) / "sig", Path(d) / "data"
            sig.write_bytes(signature)
            dat.write_bytes(data)
            try:
                _, status = self.gpg.run(["--trust-model", "always", "--verify", str(sig), str(dat)], what=what)
            except BuildError as exc:
                raise SignatureError(f"{what}: signature does not verify: {exc}") from exc
        return self._check(status, what)


def _check_size(signature: bytes, what: str) -> None:
    if len(signature) > SIGNATURE_LIMIT:
        # a refusal (exit 2), not a signature that fails to verify: gpg never sees it
        raise BuildError(f"{what}: {len(signature)} bytes, over the limit of {SIGNATURE_LIMIT} for a signature; "
                         "refusing")


# --- simple signing ------------------------------------------------------------------------

def signature_payload(manifest_digest: str, docker_reference: str, timestamp: Optional[int] = None) -> bytes:
    return json.dumps({
        "critical": {"type": SIGNATURE_TYPE, "image": {"docker-manifest-digest": manifest_digest},
                     "identity": {"docker-reference": docker_reference}},
        "optional": {"creator": CREATOR, "timestamp": int(time.time() if timestamp is None else timestamp)},
    }, sort_keys=True).encode()


def parse_payload(payload: bytes, what: str) -> tuple[str, str]:
    """(manifest digest, docker reference) of a verified payload, read strictly as the format asks."""
    try:
        doc = json.loads(payload)
        crit = doc["critical"]
        if set(doc) != {"critical", "optional"} or set(crit) != {"type", "image", "identity"}:
            raise ValueError("unexpected members")
        if crit["type"] != SIGNATURE_TYPE or set(crit["image"]) != {"docker-manifest-digest"} \
                or set(crit["identity"]) != {"docker-reference"}:
            raise ValueError("not an atomic container signature")
        return crit["image"]["docker-manifest-digest"], crit["identity"]["docker-reference"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{what}: not a container signature payload: {exc}") from exc


def lookaside_dir(lookaside: Path, repository: str, digest: str) -> Path:
    """Where skopeo/podman look for a manifest's signatures: repository is the path without the host."""
    algo, _, hexd = digest.partition(":")
    repository = repository.strip("/")
    if not repository or ".." in repository.split("/"):
        raise BuildError(f"bad repository path {repository!r} for signature storage")
    return Path(lookaside) / f"{repository}@{algo}={hexd}"


def read_signatures(lookaside: Path, repository: str, digest: str) -> list[bytes]:
    """signature-1, -2, ... up to the first missing one (as containers/image reads them).

    Each a regular file (not a link, FIFO or device) of at most SIGNATURE_LIMIT bytes, checked
    before it is read; at most MAX_SIGNATURES of them. Anything else is refused, naming the file.
    """
    d = lookaside_dir(lookaside, repository, digest)
    out = []
    while True:
        path = d / f"signature-{len(out) + 1}"
        try:
            data = read_regular(path, SIGNATURE_LIMIT)
        except FileNotFoundError:
            return out
        except BuildError as exc:
            raise BuildError(f"signature {exc}") from exc
        if len(out) == MAX_SIGNATURES:
            raise BuildError(f"{d}: over {MAX_SIGNATURES} signatures; refusing")
        out.append(data)


def sign_manifest(signer: Signer, verifier: Verifier, lookaside: Path, host: str, repository: str,
                  digest: str, tags: list[str]) -> list[Path]:
    """Sign digest under HOST/REPO:TAG for each tag; a signature this key already made is kept, not redone.

    Returns the signature files written.
    """
    existing = read_signatures(lookaside, repository, digest)
    have: set[str] = set()
    for n, blob in enumerate(existing, 1):
        try:
            payload, _ = verifier.open_signed(blob, f"signature-{n}")
            got, ref = parse_payload(payload, f"signature-{n}")
        except SignatureError:
            continue              # someone else's, or not one of ours: left as it is
        if got == digest:
            have.add(ref)
    written = []
    d = lookaside_dir(lookaside, repository, digest)
    for tag in tags:
        ref = f"{host}/{repository}:{tag}"
        if ref in have:
            continue
        path = d / f"signature-{len(existing) + 1}"
        atomic_write_bytes(path, signer.sign(signature_payload(digest, ref)))
        existing.append(b"")
        written.append(path)
    return written


def verify_manifest(verifier: Verifier, lookaside: Path, host: str, repository: str, digest: str,
                    tag: Optional[str]) -> list[str]:
    """Problems with a manifest's signatures ([] when one by the key vouches for digest under the name).

    With a tag the identity must be exactly HOST/REPO:TAG; by digest, any tag of HOST/REPO (the
    matchRepoDigestOrExact rule of containers-policy.json).
    """
    sigs = read_signatures(lookaside, repository, digest)
    where = lookaside_dir(lookaside, repository, digest)
    if not sigs:
        return [f"no signature in {where}"]
    problems = []
    for n, blob in enumerate(sigs, 1):
        what = f"{where.name}/signature-{n}"
        try:
            payload, _ = verifier.open_signed(blob, what)
            got, ref = parse_payload(payload, what)
        except SignatureError as exc:
            problems.append(str(exc))
            continue
        want = f"{host}/{repository}"
        if got != digest:
            problems.append(f"{what}: signs {got}, not {digest}")
        elif (tag is not None and ref != f"{want}:{tag}") or (tag is None and ref.rsplit(":", 1)[0] != want):
            problems.append(f"{what}: signs the identity {ref}, not {want}" + (f":{tag}" if tag else ""))
        else:
            return []
    return problems


# --- DSSE ----------------------------------------------------------------------------------

def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def dsse_envelope(signer: Signer, payload_type: str, payload: bytes) -> dict:
    return {"payloadType": payload_type, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": signer.fingerprint,
                            "sig": base64.b64encode(signer.detach(pae(payload_type, payload))).decode()}]}


def dsse_open(verifier: Verifier, envelope: dict, what: str) -> tuple[str, bytes]:
    """(payloadType, payload) of an envelope one of whose signatures verifies with the key."""
    try:
        ptype, payload = envelope["payloadType"], base64.b64decode(envelope["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"{what}: not a DSSE envelope: {exc!r}") from exc
    errors = []
    for sig in sigs:
        try:
            verifier.verify_detached(pae(ptype, payload), sig, what)
            return ptype, payload
        except SignatureError as exc:
            errors.append(str(exc))
    raise SignatureError("; ".join(errors) or f"{what}: no signatures")


# --- release files -------------------------------------------------------------------------

def sign_files(signer: Signer, paths: list[Path]) -> list[Path]:
    """An armoured detached signature beside each file (NAME.asc)."""
    out = []
    for p in paths:
        asc = Path(f"{p}.asc")
        atomic_write_bytes(asc, signer.detach(Path(p).read_bytes(), armor=True))
        out.append(asc)
    return out


@dataclass(frozen=True)
class SigningPlan:
    """What publish needs to sign: the key, a verifier for it, and where signatures go."""
    signer: Signer
    verifier: Verifier
    lookaside: Path
