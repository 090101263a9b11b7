"""The build recipe: everything needed to rebuild one platform image, attached to it as an OCI referrer.

Beside the SBOM (what is in the image) and the provenance (what it was made from, by digest), the
recipe carries the inputs themselves, so that anyone holding only the image can rebuild it and
compare: the project files the image was built from (the family file, the release file, the
templates and trust-root key files, as they were), the lock of the image's arch (every package
by name, version, repository path and sum, and the catalogues' digests), the flavour and arch, the
epoch, compression and squash, and the builder's format version, which must match the rebuilder's.
Nothing host-specific: no paths outside the project, no mirror, no cache, no time.

A recipe read from a registry or a layout is hostile input: bounded, checked field by field, and
its file names confined to the few project directories a build reads.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from builder.errors import BuildError

RECIPE_MT = "application/vnd.freebsd-images.recipe.v1+json"
RECIPE_VERSION = 1
MAX_RECIPE = 16 << 20          # bytes of a recipe document
MAX_FILES = 4096
# The project files a build reads; a recipe naming any other path is refused.
FILE_NAME = re.compile(r"(families\.yaml|families/[a-z][a-z0-9-]*\.yaml|releases/[A-Za-z0-9._-]+\.yaml"
                       r"|(templates|keys)(/[A-Za-z0-9_][A-Za-z0-9._+-]*)+)")


@dataclass(frozen=True)
class Recipe:
    format: int                 # the builder's FORMAT_VERSION: what a rebuild must run
    builder: str                # the builder's version (named when the format differs)
    release: str
    family: str
    flavour: str
    arch: str                   # FreeBSD arch
    epoch: int
    compression: str
    squash: bool
    files: dict                 # project path -> bytes
    lock: dict                  # the lock file (Lock.to_json) holding this arch only

    def to_json(self) -> dict:
        return {"recipeVersion": RECIPE_VERSION, "format": self.format, "builder": self.builder,
                "release": self.release, "family": self.family, "flavour": self.flavour, "arch": self.arch,
                "epoch": self.epoch, "compression": self.compression, "squash": self.squash,
                "files": {p: _encode(d) for p, d in sorted(self.files.items())}, "lock": self.lock}

    @classmethod
    def from_json(cls, doc: Any, where: str) -> "Recipe":
        if not isinstance(doc, dict) or doc.get("recipeVersion") != RECIPE_VERSION:
            raise BuildError(f"{where}: not a recipe of version {RECIPE_VERSION} "
                             f"(recipeVersion {doc.get('recipeVersion') if isinstance(doc, dict) else None!r})")
        want = {"format": int, "builder": str, "release": str, "family": str, "flavour": str, "arch": str,
                "epoch": int, "compression": str, "squash": bool, "files": dict, "lock": dict}
        for key, kind in want.items():
            if not isinstance(doc.get(key), kind) or (kind is int and isinstance(doc.get(key), bool)):
                raise BuildError(f"{where}: recipe field {key!r} is not a {kind.__name__}")
        if doc["compression"] not in ("gzip", "zstd"):
            raise BuildError(f"{where}: recipe compression {doc['compression']!r} is neither gzip nor zstd")
        if len(doc["files"]) > MAX_FILES:
            raise BuildError(f"{where}: recipe names {len(doc['files'])} files, over {MAX_FILES}")
        files = {name: _decode(value, f"{where}: recipe file {name!r}") for name, value in doc["files"].items()
                 if _confined(name, where)}
        return cls(**{k: doc[k] for k in want if k != "files"}, files=files)


def _confined(name: str, where: str) -> bool:
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or ".." in name.split("/"):
        raise BuildError(f"{where}: recipe file {name!r} is not a project file a build reads; refusing")
    return True


def _encode(data: bytes) -> dict:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _decode(value: Any, what: str) -> bytes:
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("text"), str):
        try:
            return value["text"].encode("utf-8")
        except UnicodeEncodeError as exc:       # a lone surrogate from hostile JSON
            raise BuildError(f"{what}: not UTF-8 text") from exc
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("base64"), str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except ValueError as exc:
            raise BuildError(f"{what}: bad base64") from exc
    raise BuildError(f"{what}: want {{\"text\": ...}} or {{\"base64\": ...}}")


def parse_recipe(data: bytes, where: str) -> Recipe:
    if len(data) > MAX_RECIPE:
        raise BuildError(f"{where}: recipe of {len(data)} bytes, over {MAX_RECIPE}; refusing")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BuildError(f"{where}: recipe is not JSON ({type(exc).__name__}); refusing") from exc
    return Recipe.from_json(doc, where)
