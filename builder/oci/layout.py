"""OCI image layout on disk: content-addressed blobs and an index.json.

Blobs are written to a temporary file beside their final name and renamed
once complete, so a blob's name always matches its content; ``index.json`` is
replaced atomically and last, so an interrupted build leaves the previous
layout as it was (plus, at worst, unreferenced blobs that ``gc`` removes).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional

from builder.common.hashing import file_digest
from builder.common.atomic import atomic_write_bytes, pending, write_if_changed
from builder.common.hashing import HashingWriter
from builder.errors import BuildError

INDEX_MT = "application/vnd.oci.image.index.v1+json"
MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MT = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
EMPTY_MT = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"      # the image-spec's empty descriptor content: config of artifact manifests
LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


def canonical(doc: Any) -> bytes:
    """JSON as we write every OCI document: sorted keys, no spaces, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    platform: Optional[tuple[tuple[str, str], ...]] = None
    artifact_type: Optional[str] = None     # set on descriptors of artifact manifests (referrers)

    def to_json(self) -> dict:
        d: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        if self.platform:
            d["platform"] = dict(self.platform)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Descriptor":
        return cls(d["mediaType"], d["digest"], int(d["size"]),
                   tuple(sorted((d.get("annotations") or {}).items())),
                   tuple(sorted(d["platform"].items())) if d.get("platform") else None,
                   d.get("artifactType"))


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
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise BuildError(f"{self.root}: bad digest {digest!r}")
        return self.blobs / hexd

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

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
            final = self.blob_path(fh.digest)
            if not final.exists():
                p.commit(final)
                self.written += 1
            return result, fh.digest, fh.n

    def verify_blob(self, digest: str, size: int) -> bool:
        """The blob exists with that size and its bytes hash to its name."""
        path = self.blob_path(digest)
        try:
            if path.stat().st_size != size:
                return False
            return "sha256:" + file_digest(path) == digest
        except FileNotFoundError:
            return False

    def read_blob(self, digest: str) -> bytes:
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise BuildError(f"{self.root}: blob {digest} is missing") from exc
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise BuildError(f"{self.root}: blob {digest} does not match its digest")
        return data

    def read_json(self, digest: str) -> dict:
        try:
            return json.loads(self.read_blob(digest))
        except (ValueError, RecursionError) as exc:
            raise BuildError(f"{self.root}: blob {digest} is not JSON ({type(exc).__name__})") from exc

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[BinaryIO]:
        with open(self.blob_path(digest), "rb") as fh:
            yield fh

    def index(self) -> dict:
        try:
            return json.loads((self.root / "index.json").read_bytes())
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": []}
        except json.JSONDecodeError as exc:
            raise BuildError(f"{self.root}/index.json: not JSON: {exc}") from exc

    def refs(self) -> dict[str, Descriptor]:
        out = {}
        for d in self.index().get("manifests", []):
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
        entries = [d for d in current.get("manifests", [])
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

    def _subject_of(self, entry: dict) -> Optional[str]:
        """The subject digest of an unnamed index.json entry that is a referrer, else None."""
        if REF_NAME in (entry.get("annotations") or {}) or entry.get("mediaType") != MANIFEST_MT:
            return None
        if not self.has_blob(entry["digest"]):
            return None
        try:
            doc = self.read_json(entry["digest"])
        except (ValueError, BuildError):
            return None
        subject = doc.get("subject") if isinstance(doc, dict) else None
        return subject.get("digest") if isinstance(subject, dict) else None

    def referrers(self) -> dict[str, list[Descriptor]]:
        """Subject digest -> the artifact manifests (SBOM, provenance ...) listed for it in index.json."""
        out: dict[str, list[Descriptor]] = {}
        for d in self.index().get("manifests", []):
            subject = self._subject_of(d)
            if subject:
                out.setdefault(subject, []).append(Descriptor.from_json(d))
        return out

    def _walk(self, entries: list[dict]) -> tuple[set[str], set[str]]:
        """(every digest reached, the digests of referrers' live subjects) from index.json entries.

        Named entries and unnamed non-referrers are roots; a referrer counts only while its
        subject is reached, so an image's SBOM goes when the image does.
        """
        seen: set[str] = set()
        pending = {d["digest"]: s for d in entries if (s := self._subject_of(d))}
        stack = [d["digest"] for d in entries if d["digest"] not in pending]
        while True:
            while stack:
                dg = stack.pop()
                if dg in seen:
                    continue
                seen.add(dg)
                stack += self._children(dg)
            ready = [dg for dg, subject in pending.items() if subject in seen]
            if not ready:
                break
            for dg in ready:
                del pending[dg]
                stack.append(dg)
        live = {s for d in entries if (s := self._subject_of(d)) and s in seen}
        return seen, live

    def _children(self, dg: str) -> list[str]:
        if not self.has_blob(dg):
            return []
        with open(self.blob_path(dg), "rb") as fh:
            head = fh.read(1)
        if head != b"{":
            return []
        try:
            doc = self.read_json(dg)
        except (ValueError, BuildError):
            return []
        mt = doc.get("mediaType")
        if mt == INDEX_MT or "manifests" in doc:
            return [m["digest"] for m in doc.get("manifests", [])]
        if mt == MANIFEST_MT or "layers" in doc:
            return [doc["config"]["digest"]] + [l["digest"] for l in doc.get("layers", [])]
        return []

    def gc(self, dry_run: bool = False) -> list[str]:
        """Remove blobs no ref reaches (and leftovers of interrupted writes), and referrers of gone images."""
        entries = self.index().get("manifests", [])
        reached, live = self._walk(entries)
        kept = [d for d in entries if self._subject_of(d) in (None, *live)]
        keep = {d.split(":", 1)[1] for d in reached}
        if not dry_run and len(kept) != len(entries):
            # index.json first: it must never name a blob that is gone
            self._write_index(kept)
        gone = []
        for p in sorted(self.blobs.iterdir()) if self.blobs.exists() else []:
            if p.name not in keep:
                gone.append(p.name)
                if not dry_run:
                    p.unlink()
        return gone
