"""A content-addressed cache of built layers: no work when nothing changed.

A layer's key is the sha256 of everything that goes into it: its parent
layer's key (so a change anywhere below reaches every layer above), the
flavour's own definition with its rendered files, the exact locked packages
(name, version, sum, repository) it installs or reads, the release facts
written into the image (ABI, repository names, pkg database schema, the
version), the epoch, compression, squash, and the writer's format version
with the versions of the compressors and SQLite. The entry records the
layer's descriptor and what the image needs from the build (history line,
packages, closure counts); the blob itself is the layout's, and an entry is
used only when that blob is there and its bytes hash to the recorded digest.
Anything else (missing, corrupt, truncated entry) is a miss and the layer is
built again.

Beside the entry of a flavour that others are built on lies the filesystem
model its layer stack makes (``<key>.fs``): a child whose layer must be
built starts from it instead of replaying the parent's packages, post-install
work and pkg database.

The cache is untrusted storage (common/sealed.py): every entry is sealed with the user's key,
kept outside the cache, and bound to its key; an entry that does not verify, or is not a regular
file of bounded size, is a miss. Even a poisoned entry that verifies cannot reach a registry:
nightly publishes only what an independent, cache-free build reproduces (runs/nightly.py).
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from builder import FORMAT_VERSION, __version__
from builder.common.sealed import Sealed, private_dir
from builder.errors import BuildError
from builder.layers.writer import LayerInfo

MAX_ENTRY = 1 << 20
MAX_FS_ENTRY = 256 << 20
MAX_SCAN_ENTRY = 256 << 20
# Bumped when what a scan records, or how it is stored, changes: old entries are then never read.
SCAN_ENTRY = 5


@dataclass(frozen=True)
class CacheEntry:
    """A built layer's descriptor and what an image made of it needs from its build."""
    layer: LayerInfo
    history: str                       # the layer's history line
    installed: tuple[str, ...]         # registered packages, sorted
    added: tuple[str, ...]             # packages this flavour added
    closure: Optional[dict]            # Closure.to_json of the image's shared-library closure
    manifests: dict                    # package -> what an SBOM says of it

    def to_json(self) -> dict:
        return {"layer": dataclasses.asdict(self.layer), "history": self.history, "installed": list(self.installed),
                "added": list(self.added), "closure": self.closure, "manifests": self.manifests}

    @classmethod
    def from_json(cls, doc: dict) -> "CacheEntry":
        if not (isinstance(doc["history"], str) and isinstance(doc["installed"], list)
                and isinstance(doc["added"], list) and isinstance(doc["manifests"], dict)
                and isinstance(doc["closure"], (dict, type(None)))):
            raise TypeError("cache entry of the wrong shape")
        return cls(layer=LayerInfo(**doc["layer"]), history=doc["history"], installed=tuple(doc["installed"]),
                   added=tuple(doc["added"]), closure=doc["closure"], manifests=doc["manifests"])


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, bytes):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Path):
        return str(value)
    return value


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the builder's own sources: a cache entry never outlives the code that made it,
    whether or not a change remembered to bump FORMAT_VERSION."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if p.is_file() and p.suffix in (".py", ".sql", ".j2") and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def layer_key(**parts: Any) -> str:
    doc = {"format": FORMAT_VERSION, "builder": __version__, "code": code_digest(), **parts}
    return hashlib.sha256(json.dumps(_plain(doc), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class LayerCache:
    """Entries under ``root``, sealed with ``key`` (common/sealed.py); ``blob_ok(info)`` checks that the
    layout holds the layer's exact bytes."""

    def __init__(self, root: Path, blob_ok: Callable[[LayerInfo], bool], key: bytes):
        self.store = Sealed(private_dir(root), key, "layer")
        self.fs_store = Sealed(root, key, "layer-fs")
        self.blob_ok = blob_ok

    def get(self, key: str) -> Optional[CacheEntry]:
        # Anything unexpected in an entry is a miss: the layer is then built again.
        body = self.store.read(f"{key}.json", MAX_ENTRY)
        try:
            if body is None:
                return None
            doc = json.loads(body)
            if doc.get("key") != key:
                return None
            entry = CacheEntry.from_json(doc)
            if not self.blob_ok(entry.layer):
                return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, BuildError):
            return None
        return entry

    def put(self, key: str, entry: CacheEntry) -> None:
        doc = {"key": key, **entry.to_json()}
        self.store.write(f"{key}.json", json.dumps(_plain(doc), sort_keys=True, indent=1).encode())

    def get_fs(self, key: str):
        """The filesystem the layer stack up to this key's layer makes, or None.

        A flavour built on a cached layer starts from it, with no replay of the parent's packages,
        post-install work and pkg database. A damaged or unsealed entry is a miss (and the parent
        is replayed).
        """
        from builder.install.fsmodel import FileSystem
        body = self.fs_store.read(f"{key}.fs", MAX_FS_ENTRY)
        try:
            if body is None:
                return None
            docs, _, blobs = body.partition(b"\n")
            return FileSystem({n.path: n for n in _nodes_from_docs(json.loads(docs), blobs)})
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
            return None

    def put_fs(self, key: str, fs) -> None:
        # Nodes as one JSON line, generated contents after it as raw bytes (each node names its
        # slice), in the model's own order: the filesystem loaded is the one kept, down to its order.
        docs, blobs, at = [], [], 0
        for n in fs.nodes.values():
            doc = _node_doc(n)
            if n.data is not None:
                doc += [at, len(n.data)]
                blobs.append(n.data)
                at += len(n.data)
            docs.append(doc)
        body = json.dumps(docs).encode() + b"\n" + b"".join(blobs)
        if len(body) <= MAX_FS_ENTRY:    # get_fs would never read a larger one
            self.fs_store.write(f"{key}.fs", body)


@functools.lru_cache(maxsize=1)
def _codec():
    """The node codec's layout, read from the dataclasses themselves: a field added to Node or
    ElfInfo is stored without anyone remembering a position (SCAN_ENTRY still bumps the format).

    A node is its plain fields in Node's order, then its ElfInfo as a list (None without one),
    then, in a filesystem entry, the slice of the generated content after the JSON."""
    from builder.install.elf import ElfInfo
    from builder.install.fsmodel import Node
    names = [f.name for f in dataclasses.fields(Node)]
    plain = tuple(n for n in names if n not in ("data", "elf"))
    lead = min(names.index("data"), names.index("elf"))       # fields before these are passed by position
    elf_fields = dataclasses.fields(ElfInfo)
    tuples = frozenset(i for i, f in enumerate(elf_fields) if str(f.type).startswith("tuple"))
    return Node, ElfInfo, plain, lead, tuple(f.name for f in elf_fields), tuples


def _node_doc(n) -> list:
    _, _, plain, _, elf_names, _ = _codec()
    elf = n.elf
    return [getattr(n, f) for f in plain] + [[getattr(elf, f) for f in elf_names] if elf is not None else None]


def _nodes_from_docs(docs: list, blobs: bytes = b"") -> list:
    """The inverse of _node_doc. Loading a parent's filesystem is on the path of every rebuild:
    no per-node imports, and keywords only for the few fields after data and elf."""
    Node, ElfInfo, plain, lead, _, tuples = _codec()
    k = len(plain)
    tail = plain[lead:]
    out = []
    for n in docs:
        e = n[k]
        elf = ElfInfo(*[tuple(v) if i in tuples else v for i, v in enumerate(e)]) if e else None
        data = blobs[n[k + 1]:n[k + 1] + n[k + 2]] if len(n) > k + 1 else None
        out.append(Node(*n[:lead], data=data, elf=elf, **dict(zip(tail, n[lead:k]))))
    return out


class ScanCache:
    """What scanning a package found (its nodes, manifest, config files), keyed by the package's locked sum.

    The scan is a pure function of the package's bytes (which the scan checks against the locked
    sum), its name, the arch and the epoch: a rebuild of one flavour then has its packages'
    manifests, and can re-create a parent's filesystem the layer cache does not hold, without
    opening their packages. Entries are sealed like the layer cache's; a damaged one is a miss.
    """

    def __init__(self, root: Path, key: bytes):
        self.store = Sealed(private_dir(root), key, "scan")

    def get(self, key: str):
        from builder.install.scan import ScannedPackage
        body = self.store.read(f"{key}.json", MAX_SCAN_ENTRY)
        try:
            if body is None:
                return None
            doc = json.loads(body)
            if doc.get("key") != key:
                return None
            nodes = _nodes_from_docs(doc["nodes"])
            config = {p: base64.b64decode(v) for p, v in doc["config"].items()}
            return ScannedPackage(doc["name"], Path(doc["path"]), doc["manifest"], nodes, config, doc["sha256"])
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
            return None

    def put(self, key: str, scanned) -> None:
        doc = {"key": key, "name": scanned.name, "path": str(scanned.path), "sha256": scanned.sha256,
               "manifest": scanned.manifest,
               "nodes": [_node_doc(n) for n in scanned.nodes],
               "config": {p: base64.b64encode(v).decode() for p, v in sorted(scanned.config.items())}}
        # key order kept: the manifest's order is the order pkg registers its files in local.sqlite
        self.store.write(f"{key}.json", json.dumps(doc).encode())
