"""A pkg repository catalogue: meta.conf plus data.pkg or packagesite.pkg."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional

from builder.errors import BuildError
from builder.resolve import ucl


# pkg's manifest JSON, compact in a catalogue entry and whole in a package's +MANIFEST
# (builder.install.pkgfile), is checked here for both.
# pkg's database and every JSON document written are SQLite INTEGERs and UTF-8: an integer
# outside SQLite's range, or a string JSON's \uD800 escapes made into a lone surrogate, has
# no place in either and is refused by field here, not met later as a crash.
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
UNSIGNED = ("flatsize", "pkgsize")   # pkgsize: in a catalogue entry
# What sends a manifest to the full walk below (2**63 has 19 digits); the rest, nearly all, is
# passed by C-speed scans of its text (a regex for digit runs costs 7 ns a byte, this 1).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN = b"0" * 19


def _bad_value(v) -> Optional[str]:
    """Why a JSON value (any depth) has no place in pkg's database or our documents, or None."""
    todo = [v]
    while todo:
        x = todo.pop()
        if isinstance(x, str):
            m = ucl.LONE_SURROGATE.search(x)
            if m:
                return f"holds a lone surrogate ({ascii(m.group())[1:-1]}), which is not Unicode text"
        elif isinstance(x, bool):
            continue
        elif isinstance(x, int):
            if not INT_MIN <= x <= INT_MAX:
                return f"holds the integer {x if x.bit_length() < 256 else 'of %d bits' % x.bit_length()}, " \
                       "outside the 64-bit range"
        elif isinstance(x, dict):
            todo.extend(x.keys())
            todo.extend(x.values())
        elif isinstance(x, list):
            todo.extend(x)
    return None


def check_manifest_values(doc: dict, raw: bytes, what: str, name: str) -> None:
    """Strings are Unicode text and integers fit SQLite, field by field; sizes are not negative."""
    for key in UNSIGNED:
        v = doc.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise BuildError(f"{what}: {name}: field {key!r} is {v}, a negative size; refusing")
    if not ((b"\\u" in raw and _SURROGATE_ESCAPE.search(raw)) or _NINETEEN in raw.translate(_DIGITS)):
        return
    for key, v in doc.items():
        why = _bad_value(key)
        if why is not None:
            raise BuildError(f"{what}: {name}: a field name {why}; refusing")
        why = _bad_value(v)
        if why is not None:
            raise BuildError(f"{what}: {name}: field {key!a} {why}; refusing")


@dataclass(frozen=True, order=True)
class Dep:
    name: str
    origin: str
    version: str


@dataclass(frozen=True)
class RemotePackage:
    """One package as the catalogue describes it (pkg's compact manifest + repo keys)."""

    name: str
    origin: str
    version: str
    abi: str
    arch: str
    repopath: str
    sum: str
    pkgsize: int
    flatsize: int
    deps: tuple[Dep, ...]
    shlibs_required: tuple[str, ...]
    shlibs_provided: tuple[str, ...]
    annotations: tuple[tuple[str, str], ...]
    raw: dict = field(compare=False, hash=False, repr=False)
    repository: str = ""  # repository key in the release file

    @classmethod
    def from_json(cls, obj: dict, repository: str, where: str) -> "RemotePackage":
        for key in ("name", "origin", "version", "sum"):
            if not isinstance(obj.get(key), str):
                raise BuildError(f"{where}: malformed package entry {obj.get('name', '?')!r:.80}: "
                                 f"{key} must be a string, not {type(obj.get(key)).__name__}")
        pkg = cls._from_json(obj, repository, where)
        check_repopath(pkg.repopath, f"{where}: package {pkg.name}")
        return pkg

    @classmethod
    def _from_json(cls, obj: dict, repository: str, where: str) -> "RemotePackage":
        try:
            deps = tuple(sorted(Dep(n, d.get("origin", ""), d.get("version", ""))
                                for n, d in (obj.get("deps") or {}).items()))
            return cls(
                name=obj["name"], origin=obj["origin"], version=obj["version"],
                abi=obj.get("abi", ""), arch=obj.get("arch", ""),
                repopath=obj.get("repopath") or obj["path"], sum=obj["sum"],
                pkgsize=_size(obj, "pkgsize"), flatsize=_size(obj, "flatsize"),
                deps=deps,
                shlibs_required=tuple(obj.get("shlibs_required") or ()),
                shlibs_provided=tuple(obj.get("shlibs_provided") or ()),
                annotations=tuple(sorted((obj.get("annotations") or {}).items())),
                raw=obj, repository=repository,
            )
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
            raise BuildError(f"{where}: malformed package entry {obj.get('name', '?') if isinstance(obj, dict) else obj!r}: {exc!r}") from exc

    @property
    def sha256(self) -> Optional[str]:
        """The sha256 of the .pkg file when the catalogue gives one (pkg 2.0 style)."""
        s = self.sum
        if "$" in s:
            kind, _, body = s.partition("$")
            return body if kind == "1" else None
        return s


def _size(obj: dict, key: str) -> int:
    v = int(obj.get(key, 0))
    if not 0 <= v <= INT_MAX:
        # the lock and pkg's database store it as a 64-bit integer; a size is never negative
        raise ValueError(f"{key} {v} is outside 0..{INT_MAX}")
    return v


def check_repopath(path: str, what: str) -> str:
    """A package's path in its repository: relative, plain components only.

    The catalogue is signed, but signing says which packages exist, not where a mirror
    may write: ``mirror`` joins this path to its destination, and downloads to the base URL.
    """
    parts = path.split("/")
    if (not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path
            or any(p in ("", ".", "..") for p in parts)):
        raise BuildError(f"{what}: refusing repository path {path!r}: must be relative, without '.', '..' or empty parts")
    return path


@dataclass(frozen=True)
class Meta:
    version: int
    packing_format: str
    data: str
    manifests: str
    manifests_archive: str
    raw: dict

    @classmethod
    def parse(cls, text: str, source: str) -> "Meta":
        d = ucl.parse(text, source)
        version = d.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise BuildError(f"{source}: version must be an integer, not {ascii(version):.80}")
        return cls(
            version=version,
            packing_format=_file_name(d, "packing_format", "txz", source),
            data=_file_name(d, "data", "data", source),
            manifests=_file_name(d, "manifests", "packagesite.yaml", source),
            manifests_archive=_file_name(d, "manifests_archive", "packagesite", source),
            raw=d,
        )


# meta.conf's names become file names in the repository's URL: ``data = "../../x?";`` would
# turn file://MIRROR/data.pkg into any host file (a FIFO hangs the build) and ``%2e%2e`` is
# unquoted on the way. Plain names only: what pkg repo writes (data, packagesite.yaml, tzst).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}")


def _file_name(d: dict, key: str, default: str, source: str) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or not _PLAIN_NAME.fullmatch(v):
        raise BuildError(f"{source}: refusing {key} {ascii(v):.120}: a repository's meta.conf must name plain "
                         "files (letters, digits, '.', '_', '+', '-'; no '/', '..', '?', '#', '%' or NUL)")
    return v


@dataclass(frozen=True)
class Catalogue:
    repository: str        # release file key
    url: str
    meta: Meta
    kind: str              # "data" or "packagesite"
    digest: str            # sha256 of the catalogue file inside the archive
    packages: dict[str, RemotePackage]
    built: int = 0         # mtime of the catalogue file: when the repository was built


def parse_catalogue(member: str, content: bytes, repository: str, url: str, meta: Meta, built: int = 0) -> Catalogue:
    """Parse the catalogue file (``data`` JSON or ``packagesite.yaml`` lines).

    Entry by entry: each package entry (a ``data`` file is one line of
    ``{"packages": [entry, ...]}``, ``packagesite.yaml`` one entry per line) is
    decoded on its own from at most ``MAX_ENTRY`` bytes (see ``_value``).
    Python objects cost 20-30 times the JSON text of ``[[],[],...]``: memory
    follows the entries kept, never the text as a whole.
    """
    where = f"{url}: {member}"
    digest = hashlib.sha256(content).hexdigest()
    if member == meta.data:
        objs, kind = _data_entries(content, where), "data"
    else:
        objs, kind = _site_entries(content, where), "packagesite"
    packages: dict[str, RemotePackage] = {}
    for obj in objs:
        pkg = RemotePackage.from_json(obj, repository, where)
        if pkg.name in packages:
            raise BuildError(f"{where}: package {pkg.name} listed twice")
        packages[pkg.name] = pkg
    return Catalogue(repository=repository, url=url, meta=meta, kind=kind, digest=digest,
                     packages=dict(sorted(packages.items())), built=built)


# One package entry: pkg's compact manifest, a few KB (a metaport's thousand dependencies, 100 KB).
MAX_ENTRY = 1 << 20
_FIRST_WINDOW = 16 << 10
_WS = re.compile(rb"[ \t\r\n]*")
_VALUE = b'[{"-0123456789tfn'   # what a JSON value starts with
_DECODER = json.JSONDecoder()


def _value(buf: bytes, pos: int, where: str) -> tuple[object, int]:
    """The JSON value starting at ``pos`` and the byte after it, decoded from at most MAX_ENTRY bytes.

    json.loads of the whole text would build every value at once, and the
    objects of ``[[],[],...]`` cost 20 times its text; here no decode ever sees
    more than MAX_ENTRY bytes, so one value costs at most a few tens of MB,
    and deep nesting stops at the interpreter's recursion limit (RecursionError).
    The window grows from 16 KB, so an entry of a few KB costs about itself.
    """
    size = _FIRST_WINDOW
    while True:
        stop = min(len(buf), pos + size)
        for _ in range(3):   # cut at a character boundary, not inside one (UTF-8: at most 3 bytes back)
            if stop < len(buf) and buf[stop] & 0xC0 == 0x80:
                stop -= 1
        try:
            text = buf[pos:stop].decode("utf-8")
            obj, end = _DECODER.raw_decode(text)
            return obj, pos + (end if text.isascii() else len(text[:end].encode("utf-8")))
        except UnicodeDecodeError as exc:
            raise BuildError(f"{where}: not UTF-8 at byte {pos + exc.start}: {exc.reason}") from exc
        except RecursionError as exc:
            raise BuildError(f"{where}: JSON nested too deeply; refusing (at byte {pos})") from exc
        except json.JSONDecodeError as exc:
            # Where a value runs past the window the decoder stops at the window's end (or
            # at a cut "tru"), or says where an unterminated string started: read more, up to the bound.
            cut = exc.pos >= len(text) - 5 or exc.msg.startswith("Unterminated string")
            if not cut or stop == len(buf):
                raise BuildError(f"{where}: bad JSON at byte {pos + len(text[:exc.pos].encode())}: {exc.msg}") from exc
            if size >= MAX_ENTRY:
                raise BuildError(f"{where}: the JSON value at byte {pos} is over the limit of {MAX_ENTRY} bytes "
                                 "for one catalogue entry; refusing") from exc
        except ValueError as exc:   # a number of over 4300 digits (int's guard)
            raise BuildError(f"{where}: bad JSON at byte {pos}: {exc}") from exc
        size = min(size * 4, MAX_ENTRY)


def _entry(buf: bytes, pos: int, where: str) -> tuple[dict, int]:
    obj, end = _value(buf, pos, where)
    if not isinstance(obj, dict):
        raise BuildError(f"{where}: package entry is not an object: {ascii(obj):.80}")
    check_manifest_values(obj, buf[pos:end], where, f"package entry {ascii(obj.get('name', '?')):.80}")
    return obj, end


def _expect(buf: bytes, pos: int, chars: bytes, where: str) -> int:
    """The position after the blanks at ``pos``, which must hold one of ``chars``."""
    pos = _WS.match(buf, pos).end()
    if buf[pos:pos + 1] == b"" or buf[pos] not in chars:
        want = " or ".join(repr(chr(c)) for c in chars)
        raise BuildError(f"{where}: bad JSON at byte {pos}: expecting {want}")
    return pos


def _data_entries(buf: bytes, where: str) -> Iterator[dict]:
    """The entries of a ``data`` file's "packages" list, one by one; every other member is checked and dropped."""
    pos = _WS.match(buf).end()
    if buf[pos:pos + 1] != b"{":
        if pos < len(buf):
            _value(buf, pos, where)   # too deep or too long is said first, as such
        raise BuildError(f"{where}: expected a JSON object with a 'packages' list")
    pos = _expect(buf, pos + 1, b'"}', where)
    seen = False
    while buf[pos] != ord("}"):
        key, end = _value(buf, pos, where)
        pos = _expect(buf, _expect(buf, end, b":", where) + 1, _VALUE, where)
        if key == "packages" and not seen and buf[pos] == ord("["):
            seen = True
            pos = _expect(buf, pos + 1, _VALUE + b"]", where)
            while buf[pos] != ord("]"):
                obj, end = _entry(buf, pos, where)
                yield obj
                pos = _expect(buf, end, b",]", where)
                pos = _expect(buf, pos + 1, _VALUE, where) if buf[pos] == ord(",") else pos
            end = pos + 1
        else:
            _, end = _value(buf, pos, where)     # valid JSON, in bounded memory; not needed
            if key == "packages":
                raise BuildError(f"{where}: expected one 'packages' list")
        pos = _expect(buf, end, b",}", where)
        pos = _expect(buf, pos + 1, b'"', where) if buf[pos] == ord(",") else pos
    if _WS.match(buf, pos + 1).end() != len(buf):
        raise BuildError(f"{where}: bad JSON at byte {pos + 1}: extra data after the object")
    if not seen:
        raise BuildError(f"{where}: expected a JSON object with a 'packages' list")


def _site_entries(buf: bytes, where: str) -> Iterator[dict]:
    """The entries of ``packagesite.yaml``: one JSON object a line."""
    pos, lineno = 0, 0
    while pos < len(buf):
        lineno += 1
        nl = buf.find(b"\n", pos)
        nl = len(buf) if nl < 0 else nl
        start = _WS.match(buf, pos, nl).end()
        if start < nl:
            obj, end = _entry(buf, start, f"{where}:{lineno}")
            if end > nl or _WS.match(buf, end, nl).end() != nl:
                raise BuildError(f"{where}:{lineno}: bad JSON: one package entry per line expected")
            yield obj
        pos = nl + 1
