"""OCI image layout on disk: content-addressed blobs and an index.json.

Blobs are written to a temporary file beside their final name and renamed
once complete, so a blob's name always matches its content; ``index.json`` is
replaced atomically and last, so an interrupted build leaves the previous
layout as it was (plus, at worst, unreferenced blobs that ``gc`` removes).

A layout is also hostile input (a CI artifact, an unpacked archive): its files are opened
as regular files only, without following a last symlink and without blocking on a FIFO;
sizes are checked before anything is read whole; blobs read, streamed or copied are checked
against their names; index.json and manifests are checked for shape, so garbage is a
refusal naming the file, never a crash.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional

from builder.common.atomic import atomic_write_bytes, pending, write_if_changed
from builder.common.files import kind_of, open_regular, read_regular
from builder.common.hashing import HashingWriter
from builder.errors import BuildError

INDEX_MT = "application/vnd.oci.image.index.v1+json"
MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MT = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
EMPTY_MT = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"      # the image-spec's empty descriptor content: config of artifact manifests
LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'
# what the walk descends into (a registry copy may hold Docker's types)
INDEX_TYPES = frozenset({INDEX_MT, "application/vnd.docker.distribution.manifest.list.v2+json"})
MANIFEST_TYPES = frozenset({MANIFEST_MT, "application/vnd.docker.distribution.manifest.v2+json"})
JSON_LIMIT = 4 << 20        # index.json, indexes, manifests, configs: ours are a few KiB
DOCUMENT_LIMIT = 16 << 20   # any other blob read whole (SBOM, provenance, recipe): ours are well under 1 MiB
_HEX = frozenset("0123456789abcdef")


def canonical(doc: Any) -> bytes:
    """JSON as we write every OCI document: sorted keys, no spaces, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_document(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BuildError(f"{what}: not JSON ({type(exc).__name__}); refusing") from exc
    if not isinstance(doc, dict):
        raise BuildError(f"{what}: not a JSON object; refusing")
    return doc


def valid_digest(digest: object) -> bool:
    if not isinstance(digest, str):
        return False
    algo, _, hexd = digest.partition(":")
    return algo == "sha256" and len(hexd) == 64 and set(hexd) <= _HEX


def _strings(value: object, lists: bool = False) -> bool:
    """An object of strings; with ``lists``, (os.)features may be lists of strings (the image-spec's platform)."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and (isinstance(v, str) or lists and k.endswith("features") and isinstance(v, list)
                                and all(isinstance(x, str) for x in v))
        for k, v in value.items())


def _check_annotations(doc: dict, what: str) -> None:
    if doc.get("annotations") is not None and not _strings(doc["annotations"]):
        raise BuildError(f"{what}: 'annotations' is not an object of strings; refusing")


def descriptor_problem(d: object) -> str:
    """Why d is not a descriptor this code can use, or "" (image-spec: string mediaType and digest, int size)."""
    if not isinstance(d, dict):
        return "not an object"
    if not isinstance(d.get("mediaType"), str):
        return "'mediaType' is not a string"
    if not valid_digest(d.get("digest")):
        return f"'digest' {str(d.get('digest'))[:80]!r} is not sha256:<64 hex digits>"
    if type(d.get("size")) is not int or d["size"] < 0:
        return "'size' is not a non-negative integer"
    if d.get("annotations") is not None and not _strings(d["annotations"]):
        return "'annotations' is not an object of strings"
    if d.get("platform") is not None and not _strings(d["platform"], lists=True):
        return "'platform' is not an object of strings"
    if d.get("artifactType") is not None and not isinstance(d["artifactType"], str):
        return "'artifactType' is not a string"
    return ""


def platform_label(desc: dict, unknown: str = "?") -> str:
    """os/architecture/variant of a descriptor's platform (freebsd/arm64/v8), ``unknown`` without one."""
    p = desc.get("platform")
    if not isinstance(p, dict):
        p = {}
    return "/".join(str(x) for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x) or unknown


def descriptors(doc: dict, key: str, what: str) -> list[dict]:
    """doc[key] as a list of descriptors, each checked; refused, naming what and the entry, otherwise."""
    items = doc.get(key)
    if not isinstance(items, list):
        raise BuildError(f"{what}: {key!r} is not a list of descriptors; refusing")
    for i, d in enumerate(items):
        why = descriptor_problem(d)
        if why:
            raise BuildError(f"{what}: {key}[{i}]: {why}; refusing")
    return items


def check_manifest(doc: dict, what: str) -> dict:
    """An image (or artifact) manifest: a config descriptor and a list of layer descriptors."""
    why = descriptor_problem(doc.get("config"))
    if why:
        raise BuildError(f"{what}: config: {why}; refusing")
    descriptors(doc, "layers", what)
    _check_annotations(doc, what)
    return doc


def check_index(doc: dict, what: str) -> dict:
    """An image index (or index.json): a list of manifest descriptors."""
    descriptors(doc, "manifests", what)
    _check_annotations(doc, what)
    return doc


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    platform: Optional[tuple[tuple[str, Any], ...]] = None
    artifact_type: Optional[str] = None     # set on descriptors of artifact manifests (referrers)

    def to_json(self) -> dict:
        d: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        if self.platform:
            d["platform"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.platform}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Descriptor":
        """d must have passed descriptor_problem (index.json and documents read here have)."""
        # list values (os.features) become tuples: a frozen descriptor stays hashable
        plat = d.get("platform")
        return cls(d["mediaType"], d["digest"], int(d["size"]), tuple(sorted((d.get("annotations") or {}).items())),
                   tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in plat.items())) if plat else None,
                   d.get("artifactType"))


class BlobReader(io.RawIOBase):
    """A blob's bytes as they stream by, hashed: reaching the end checks them against the blob's name,
    so whoever reads a blob to its end never takes wrong bytes for the digest's. ``verify`` reads the rest."""

    def __init__(self, fh: BinaryIO, digest: str, path: Path):
        super().__init__()
        self._fh, self._digest, self._path = fh, digest, path
        self._h = hashlib.sha256()
        self._n = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fh.fileno()

    def readinto(self, b) -> int:
        n = self._fh.readinto(b)
        if n:
            self._h.update(memoryview(b)[:n])
            self._n += n
        elif len(b):
            self._check()
        return n

    def _check(self) -> None:
        got = "sha256:" + self._h.hexdigest()
        if got != self._digest:
            raise BuildError(f"{self._path}: blob {self._digest} does not match its digest (its bytes hash to "
                             f"{got}); refusing")
        self._checked = True

    def verify(self) -> int:
        """Read to the end and check; the blob's size."""
        while self.read(1 << 20):
            pass
        if not self._checked:
            self._check()
        return self._n

    def close(self) -> None:
        self._fh.close()
        super().close()


class Layout:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.written = 0   # blobs this process added

    def init(self) -> "Layout":
        self.blobs.mkdir(parents=True, exist_ok=True)
        if not (self.root / "oci-layout").exists():
            atomic_write_bytes(self.root / "oci-layout", LAYOUT_FILE)
        return self

    @staticmethod
    def digest_of(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def blob_path(self, digest: str) -> Path:
        if not valid_digest(digest):
            raise BuildError(f"{self.root}: bad digest {str(digest)[:80]!r}")
        return self.blobs / digest.partition(":")[2]

    def has_blob(self, digest: str) -> bool:
        """A regular file by that name (a symlink or FIFO there is not a blob, and is replaced when written)."""
        try:
            return stat.S_ISREG(os.lstat(self.blob_path(digest)).st_mode)
        except FileNotFoundError:
            return False

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            atomic_write_bytes(self.blob_path(digest), data)
            self.written += 1
        return digest, len(data)

    def put_json(self, doc: Any, media_type: str, **kw) -> Descriptor:
        digest, size = self.put_bytes(canonical(doc))
        return Descriptor(media_type, digest, size, **kw)

    def put_stream(self, write: Callable[[Any], Any]) -> tuple[Any, str, int]:
        """Run write(fh) into a new blob; returns (write's result, digest, size)."""
        with pending(self.blobs, ".blob.") as p:
            fh = HashingWriter(p.fh)
            result = write(fh)
            if not self.has_blob(fh.digest):
                p.commit(self.blob_path(fh.digest))
                self.written += 1
            return result, fh.digest, fh.n

    def verify_blob(self, digest: str, size: int) -> bool:
        """The blob exists, a regular file of that size, and its bytes hash to its name."""
        try:
            with self.open_blob(digest) as fh:
                return os.fstat(fh.fileno()).st_size == size and fh.verify() == size
        except BuildError:
            return False

    def read_blob(self, digest: str, limit: int = DOCUMENT_LIMIT) -> bytes:
        path = self.blob_path(digest)
        try:
            data = read_regular(path, limit)
        except FileNotFoundError as exc:
            raise BuildError(f"{self.root}: blob {digest} is missing") from exc
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise BuildError(f"{self.root}: blob {digest} does not match its digest")
        return data

    def read_json(self, digest: str) -> dict:
        """A JSON object blob (index, manifest, config), bounded by JSON_LIMIT."""
        return parse_document(self.read_blob(digest, JSON_LIMIT), f"{self.root}: blob {digest}")

    def read_manifest(self, digest: str) -> dict:
        return check_manifest(self.read_json(digest), f"{self.root}: manifest {digest}")

    def read_index(self, digest: str) -> dict:
        return check_index(self.read_json(digest), f"{self.root}: index {digest}")

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[BlobReader]:
        """The blob streamed, checked against its digest when read to the end (BlobReader)."""
        path = self.blob_path(digest)
        try:
            fh = open_regular(path)
        except FileNotFoundError as exc:
            raise BuildError(f"{self.root}: blob {digest} is missing") from exc
        with BlobReader(fh, digest, path) as reader:
            yield reader

    def index(self) -> dict:
        """index.json, checked: an object whose ``manifests`` is a list of descriptors."""
        path = self.root / "index.json"
        try:
            data = read_regular(path, JSON_LIMIT)
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": []}
        return check_index(parse_document(data, str(path)), str(path))

    def refs(self) -> dict[str, Descriptor]:
        out = {}
        for d in self.index()["manifests"]:
            name = (d.get("annotations") or {}).get(REF_NAME)
            if name:
                out[name] = Descriptor.from_json(d)
        return out

    def set_refs(self, refs: dict[str, Descriptor], keep_others: bool = True,
                 referrers: Optional[dict[str, list[Descriptor]]] = None) -> bool:
        """Point refs at descriptors (replacing same-named ones); returns True if index.json changed.

        ``referrers`` (subject digest -> artifact manifests) replace every referrer already listed
        for those subjects. Referrers are entries without a ref name, so ``refs()`` and tools that
        open NAME:TAG never see them, yet ``gc`` keeps them; those whose subject no ref reaches
        any more are dropped.
        """
        current = self.index()
        entries = [d for d in current["manifests"]
                   if keep_others and (d.get("annotations") or {}).get(REF_NAME) not in refs]
        for name, desc in refs.items():
            ann = dict(desc.annotations)
            ann[REF_NAME] = name
            entries.append(Descriptor(desc.media_type, desc.digest, desc.size, tuple(sorted(ann.items())),
                                      desc.platform, desc.artifact_type).to_json())
        if referrers is not None:
            entries = [d for d in entries if self._subject_of(d) not in referrers]
            seen = {d["digest"] for d in entries}
            for descs in referrers.values():
                for desc in descs:
                    if desc.digest not in seen:
                        seen.add(desc.digest)
                        entries.append(desc.to_json())
            live = self._walk(entries)[1]
            entries = [d for d in entries if self._subject_of(d) in (None, *live)]
        return self._write_index(entries)

    def _write_index(self, entries: list[dict]) -> bool:
        # named refs first in name order (as before referrers existed), then referrers by digest
        entries = sorted(entries, key=lambda d: (0, (d.get("annotations") or {})[REF_NAME], "")
                         if REF_NAME in (d.get("annotations") or {}) else (1, "", d["digest"]))
        doc = {"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": entries}
        data = json.dumps(doc, sort_keys=True, indent=2).encode() + b"\n"
        return write_if_changed(self.root / "index.json", data)

    def _document(self, digest: str) -> Optional[dict]:
        """A reached index or manifest: None when absent (a partial layout); refused when unreadable."""
        try:
            os.lstat(self.blob_path(digest))
        except FileNotFoundError:
            return None
        return self.read_json(digest)

    def _subject_of(self, entry: dict) -> Optional[str]:
        """The subject digest of an unnamed index.json entry that is a referrer, else None."""
        if REF_NAME in (entry.get("annotations") or {}) or entry.get("mediaType") != MANIFEST_MT:
            return None
        doc = self._document(entry["digest"])
        subject = doc.get("subject") if doc is not None else None
        digest = subject.get("digest") if isinstance(subject, dict) else None
        return digest if valid_digest(digest) else None

    def referrers(self) -> dict[str, list[Descriptor]]:
        """Subject digest -> the artifact manifests (SBOM, provenance ...) listed for it in index.json."""
        out: dict[str, list[Descriptor]] = {}
        for d in self.index()["manifests"]:
            subject = self._subject_of(d)
            if subject:
                out.setdefault(subject, []).append(Descriptor.from_json(d))
        return out

    def reachable(self, entries: list[dict]) -> set[str]:
        """Every digest index.json entries (checked descriptors) reach, their live referrers' included."""
        return self._walk(entries)[0]

    def _walk(self, entries: list[dict]) -> tuple[set[str], set[str]]:
        """(every digest reached, the digests of referrers' live subjects) from index.json entries.

        Named entries and unnamed non-referrers are roots; a referrer counts only while its
        subject is reached, so an image's SBOM goes when the image does. The walk goes by
        descriptors' media types: layers are never opened.
        """
        seen: set[str] = set()
        media = {d["digest"]: d["mediaType"] for d in entries}
        waiting = {d["digest"]: s for d in entries if (s := self._subject_of(d))}
        stack = [(d["digest"], d["mediaType"]) for d in entries if d["digest"] not in waiting]
        while True:
            while stack:
                dg, mt = stack.pop()
                if dg in seen:
                    continue
                seen.add(dg)
                stack += self._children(dg, mt)
            ready = [dg for dg, subject in waiting.items() if subject in seen]
            if not ready:
                break
            for dg in ready:
                del waiting[dg]
                stack.append((dg, media[dg]))
        live = {s for d in entries if (s := self._subject_of(d)) and s in seen}
        return seen, live

    def _children(self, dg: str, media_type: str) -> list[tuple[str, str]]:
        if media_type not in INDEX_TYPES and media_type not in MANIFEST_TYPES:
            return []
        doc = self._document(dg)
        if doc is None:
            return []
        if media_type in INDEX_TYPES:
            found = check_index(doc, f"{self.root}: index {dg}")["manifests"]
        else:
            found = [check_manifest(doc, f"{self.root}: manifest {dg}")["config"]] + doc["layers"]
        return [(d["digest"], d["mediaType"]) for d in found]

    @contextlib.contextmanager
    def blob_dir(self) -> Iterator[Optional[int]]:
        """blobs/sha256 opened as a directory (None when absent): refused when blobs or blobs/sha256 is a
        symlink or not a directory, so that nothing is written or deleted outside the layout through it."""
        fds: list[int] = []
        try:
            at = None
            for name, part in (("blobs", self.root / "blobs"), ("blobs/sha256", "sha256")):
                try:
                    fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at))
                except FileNotFoundError:
                    yield None
                    return
                except OSError as exc:
                    mode = os.lstat(part, dir_fd=at).st_mode
                    raise BuildError(f"{self.root}: {name} is {kind_of(mode)}, not a directory of the layout; "
                                     "refusing") from exc
                at = fds[-1]
            yield at
        finally:
            for fd in fds:
                os.close(fd)

    def gc(self, dry_run: bool = False) -> list[str]:
        """Remove blobs no ref reaches (and leftovers of interrupted writes), and referrers of gone images.

        Only regular files named by a digest (or named as our temporary files are) are removed, from
        the blobs directory opened without following symlinks.
        """
        with self.blob_dir() as fd:
            entries = self.index()["manifests"]
            reached, live = self._walk(entries)
            kept = [d for d in entries if self._subject_of(d) in (None, *live)]
            keep = {d.split(":", 1)[1] for d in reached}
            if not dry_run and len(kept) != len(entries):
                # index.json first: it must never name a blob that is gone
                self._write_index(kept)
            gone = []
            with os.scandir(fd) if fd is not None else contextlib.nullcontext([]) as listing:
                names = sorted(e.name for e in listing if e.is_file(follow_symlinks=False))
            for name in names:
                ours = valid_digest("sha256:" + name) or (name.startswith(".") and name.endswith(".tmp"))
                if ours and name not in keep:
                    gone.append(name)
                    if not dry_run:
                        os.unlink(name, dir_fd=fd)
            return gone
