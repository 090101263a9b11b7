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

from builder.common.atomic import atomic_write_bytes, pending
from builder.common.hashing import HashingWriter
from builder.errors import BuildError

INDEX_MT = "application/vnd.oci.image.index.v1+json"
MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MT = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
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

    def to_json(self) -> dict:
        d: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = dict(self.platform)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Descriptor":
        return cls(d["mediaType"], d["digest"], int(d["size"]),
                   tuple(sorted((d.get("annotations") or {}).items())),
                   tuple(sorted(d["platform"].items())) if d.get("platform") else None)


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
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except FileNotFoundError:
            return False
        return "sha256:" + h.hexdigest() == digest

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

    def set_refs(self, refs: dict[str, Descriptor], keep_others: bool = True) -> bool:
        """Point refs at descriptors (replacing same-named ones); returns True if index.json changed."""
        current = self.index()
        entries = [d for d in current.get("manifests", [])
                   if keep_others and (d.get("annotations") or {}).get(REF_NAME) not in refs]
        for name, desc in refs.items():
            ann = dict(desc.annotations)
            ann[REF_NAME] = name
            entries.append(Descriptor(desc.media_type, desc.digest, desc.size, tuple(sorted(ann.items())),
                                      desc.platform).to_json())
        entries.sort(key=lambda d: (d.get("annotations") or {}).get(REF_NAME, ""))
        doc = {"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": entries}
        data = json.dumps(doc, sort_keys=True, indent=2).encode() + b"\n"
        path = self.root / "index.json"
        if path.exists() and path.read_bytes() == data:
            return False
        atomic_write_bytes(path, data)
        return True

    def reachable(self) -> set[str]:
        seen: set[str] = set()
        stack = [d["digest"] for d in self.index().get("manifests", [])]
        while stack:
            dg = stack.pop()
            if dg in seen:
                continue
            seen.add(dg)
            if not self.has_blob(dg):
                continue
            with open(self.blob_path(dg), "rb") as fh:
                head = fh.read(1)
            if head != b"{":
                continue
            try:
                doc = self.read_json(dg)
            except (ValueError, BuildError):
                continue
            mt = doc.get("mediaType")
            if mt == INDEX_MT or "manifests" in doc:
                stack += [m["digest"] for m in doc.get("manifests", [])]
            elif mt == MANIFEST_MT or "layers" in doc:
                stack.append(doc["config"]["digest"])
                stack += [l["digest"] for l in doc.get("layers", [])]
        return seen

    def gc(self, dry_run: bool = False) -> list[str]:
        """Remove blobs no ref reaches (and leftovers of interrupted writes)."""
        keep = {d.split(":", 1)[1] for d in self.reachable()}
        gone = []
        for p in sorted(self.blobs.iterdir()) if self.blobs.exists() else []:
            if p.name not in keep:
                gone.append(p.name)
                if not dry_run:
                    p.unlink()
        return gone
