"""FreeBSD's VuXML (vuln.xml), read and matched the way ``pkg audit`` does (libpkg/pkg_audit.c).

What pkg reads of each ``<vuln vid="...">``: its ``<topic>``, every ``<package>`` of ``<affects>``
(its ``<name>``s and ``<range>``s; a ``<system>`` is not read) and its ``<cvename>``s. An installed
package is covered by a ``<package>`` when one of its names, an fnmatch(3) pattern (case counts),
matches the package's name and one of its ranges holds the package's version: every bound of the
range (``lt``, ``le``, ``eq``, ``ge``, ``gt``) compared in pkg's version order
(``builder.resolve.version.compare``). A ``<package>`` without a range covers nothing. We also keep
``<freebsdsa>`` and ``<url>`` references and the dates, for the report.

The base system is no package of its own: FreeBSD's periodic(8) script (405.pkg-base-audit) audits
``freebsd-version -u`` as the pseudo-package ``FreeBSD-<release>_<patch>`` and the running kernel as
``FreeBSD-kernel-<release>_<patch>``, and the kernel never inside a jail (a container has none).

vuln.xml comes from the network: read whole only up to VUXML_LIMIT bytes (compressed and
decompressed alike), parsed as a stream of SAX events by defusedxml's reader, which refuses every
entity declaration (a billion laughs stops at its first entity) and is never let to fetch anything
(the document's external DTD is not read); the depth and what is kept are bounded too. Anything
else that is not a VuXML document is a refusal naming the line.
"""
from __future__ import annotations

import io
import lzma
import re
import xml.sax
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Optional
from xml.sax.handler import feature_external_ges, feature_external_pes

import zstandard

from builder.common.compress import MAGICS, Bounded, decompressing
from builder.common.http import Transport
from builder.common.files import read_regular
from builder.errors import BuildError
from builder.resolve.version import compare

DEFAULT_URL = "https://vuxml.freebsd.org/freebsd/vuln.xml.xz"     # pkg's VULNXML_SITE
VUXML_LIMIT = 128 << 20     # bytes, compressed or not (FreeBSD's vuln.xml: tens of MB, a few as .xz)
MAX_DEPTH = 64              # element nesting (VuXML's deepest: the XHTML of a description, about 10)
MAX_ELEMENTS = 8_000_000    # elements read, kept or not (FreeBSD's: about 40 an entry): parsing time stays bounded
MAX_VULNS = 100_000         # <vuln> entries kept (FreeBSD's: about 20 000)
MAX_ITEMS = 600_000         # names, bounds and references kept, all entries together (about 10 an entry)
MAX_TEXT = 4096             # characters of one kept value (a name, version, topic, reference)

BASE = "FreeBSD"            # the base system's userland, as VuXML names it
KERNEL = "FreeBSD-kernel"   # the base system's kernel
OPS = ("lt", "le", "eq", "ge", "gt")
_GLOB = re.compile(r"[*?\[\\]")
_RELEASE_PATCH = re.compile(r"(\d+\.\d+)(?:p(\d+))?")
_VUXML_PATCH = re.compile(r"(\d+\.\d+)(?:_(\d+))?")


# __slots__: a hostile file holds up to MAX_ITEMS of these; a __dict__ each would triple the memory
@dataclass(frozen=True)
class Bound:
    __slots__ = ("op", "version")
    op: str                 # lt | le | eq | ge | gt
    version: str

    def holds(self, version: str) -> bool:
        c = compare(version, self.version)
        return {"lt": c < 0, "le": c <= 0, "eq": c == 0, "ge": c >= 0, "gt": c > 0}[self.op]


@dataclass(frozen=True)
class Range:
    __slots__ = ("bounds",)
    bounds: tuple[Bound, ...]       # one or two, as VuXML's DTD allows

    def contains(self, version: str) -> bool:
        return all(b.holds(version) for b in self.bounds)

    @property
    def fixed(self) -> Optional[str]:
        """The first version out of the range upwards, when the range says it (an ``lt`` bound)."""
        return next((b.version for b in self.bounds if b.op == "lt"), None)

    def human(self) -> str:
        return ", ".join(f"{b.op} {b.version}" for b in self.bounds)


@dataclass(frozen=True)
class Affected:
    """One ``<package>`` of an entry: these names, in these ranges."""
    __slots__ = ("names", "ranges")
    names: tuple[str, ...]
    ranges: tuple[Range, ...]


@dataclass(frozen=True)
class Vuln:
    __slots__ = ("vid", "topic", "affects", "cves", "advisories", "urls", "entry", "modified")
    vid: str
    topic: str
    affects: tuple[Affected, ...]
    cves: tuple[str, ...]
    advisories: tuple[str, ...]          # <freebsdsa>: SA-25:01.openssh
    urls: tuple[str, ...]
    entry: str                           # dates, YYYY-MM-DD ("" when the entry has none)
    modified: str

    @property
    def references(self) -> tuple[str, ...]:
        sas = tuple(a if a.startswith("FreeBSD-") else f"FreeBSD-{a}" for a in self.advisories)
        return sas + self.cves

    @property
    def url(self) -> str:
        return f"https://vuxml.FreeBSD.org/freebsd/{self.vid}.html"


@dataclass(frozen=True)
class Match:
    """An entry covering one (name, version): which name pattern and which range did."""
    __slots__ = ("vuln", "pattern", "range")
    vuln: Vuln
    pattern: str
    range: Range


@dataclass(frozen=True)
class VuXML:
    source: str
    vulns: tuple[Vuln, ...]
    # name -> (entry, package) indexes; the few glob names are tried one by one
    _exact: dict = field(default_factory=dict, compare=False, repr=False)
    _globs: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        exact: dict[str, list[tuple[int, int]]] = {}
        globs = []
        for i, v in enumerate(self.vulns):
            for j, a in enumerate(v.affects):
                for name in a.names:
                    if _GLOB.search(name):
                        globs.append((_glob(name), name, i, j))
                    else:
                        exact.setdefault(name, []).append((i, j))
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_globs", tuple(globs))

    def matches(self, name: str, version: str) -> tuple[Match, ...]:
        """Every entry covering this package at this version, once each, in the file's order."""
        found: dict[int, Match] = {}
        hits = [(i, j, name) for i, j in self._exact.get(name, ())]
        hits += [(i, j, pattern) for rx, pattern, i, j in self._globs if rx.fullmatch(name)]
        for i, j, pattern in sorted(hits):
            if i in found:
                continue
            r = next((r for r in self.vulns[i].affects[j].ranges if r.contains(version)), None)
            if r is not None:
                found[i] = Match(self.vulns[i], pattern, r)
        return tuple(found.values())

    def summary(self) -> dict:
        dates = [d for v in self.vulns for d in (v.entry, v.modified) if d]
        return {"source": self.source, "entries": len(self.vulns), "newest": max(dates, default="")}


def _glob(pattern: str) -> re.Pattern:
    """fnmatch(3) without flags: ``*``, ``?``, ``[...]`` (``!`` or ``^`` negates), ``\\`` escapes."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c, i = pattern[i], i + 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            j = i + (i < n and pattern[i] in "!^")
            j += j < n and pattern[j] == "]"        # a ']' first is one of the set
            j = pattern.find("]", j)
            if j < 0:
                out.append(re.escape(c))            # no closing ']': a plain '['
                continue
            body = pattern[i:j]
            negate = body[:1] in ("!", "^")
            body = re.sub(r"([\\\[\]^])", r"\\\1", body[1:] if negate else body)
            out.append(f"[{'^' if negate else ''}{body}]")
            i = j + 1
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.S)


# --- the base system ----------------------------------------------------------------------

def base_version(runtime_version: str) -> Optional[str]:
    """The version VuXML gives the base system for a FreeBSD-runtime version: 14.2p1 -> 14.2_1 (what
    405.pkg-base-audit makes of 14.2-RELEASE-p1), 14.2 -> 14.2; None for a snapshot (15.snap20261120),
    which no base-system entry names."""
    m = _RELEASE_PATCH.fullmatch(runtime_version)
    if m is None:
        return None
    return f"{m[1]}_{m[2]}" if m[2] and m[2] != "0" else m[1]


def pkgbase_version(vuxml_version: str) -> str:
    """A base-system version as pkgbase writes it: 14.2_2 -> 14.2p2 (anything else as it is)."""
    m = _VUXML_PATCH.fullmatch(vuxml_version)
    return f"{m[1]}p{m[2]}" if m and m[2] else vuxml_version


# --- reading ------------------------------------------------------------------------------

def load(spec: Optional[str], transport: Transport) -> VuXML:
    """vuln.xml from a URL (http(s)://, file://; default FreeBSD's) or a file, compressed (xz, gzip,
    bzip2, zstd) or not."""
    spec = spec or DEFAULT_URL
    if "://" in spec:
        data = transport.fetch_bytes(spec, VUXML_LIMIT, deadline=transport.catalogue_deadline)
    else:
        data = _read_file(spec)
    return parse(io.BytesIO(data), spec)


def _read_file(spec: str) -> bytes:
    """A local vuln.xml: the user's link is followed, what it names must be a regular file of at most
    VUXML_LIMIT bytes, its size checked before anything is read (a 2 GiB file is refused unread)."""
    try:
        return read_regular(Path(spec).resolve(), VUXML_LIMIT)
    except OSError as exc:
        raise BuildError(f"{spec}: cannot read: {exc.strerror}") from exc


def parse(raw: BinaryIO, source: str) -> VuXML:
    head = raw.read(8)
    raw.seek(0)
    try:
        if any(head.startswith(magic) for magic, _ in MAGICS):
            stream, _ = decompressing(raw, source, VUXML_LIMIT)
        else:
            stream = io.BufferedReader(Bounded(raw, VUXML_LIMIT, source))
        return _sax(stream, source)
    except (EOFError, OSError, lzma.LZMAError, zlib.error, zstandard.ZstdError) as exc:   # a broken stream
        raise BuildError(f"{source}: cannot decompress: {exc}; refusing") from exc


def _sax(stream: BinaryIO, source: str) -> VuXML:
    from defusedxml import DefusedXmlException
    from defusedxml.expatreader import DefusedExpatParser
    # a DOCTYPE naming the VuXML DTD is allowed (vuln.xml has one) but never read; any entity is refused
    parser = DefusedExpatParser(forbid_dtd=False, forbid_entities=True, forbid_external=False)
    parser.setFeature(feature_external_ges, False)
    parser.setFeature(feature_external_pes, False)
    handler = _Handler(source)
    parser.setContentHandler(handler)
    try:
        parser.parse(stream)
    except xml.sax.SAXParseException as exc:
        raise BuildError(f"{source}:{exc.getLineNumber()}: not well-formed XML: {exc.getMessage()}; "
                         "refusing") from exc
    except DefusedXmlException as exc:
        raise BuildError(f"{source}: {exc} (entities and external references are refused); refusing") from exc
    if not handler.seen_root:
        raise BuildError(f"{source}: no <vuxml> document; refusing")
    return VuXML(source, tuple(handler.vulns))


# where VuXML keeps what is read (below <vuxml>): elsewhere, a <name> or <url> (in a description) is not one
_PACKAGE = ("vuln", "affects", "package")
_RANGE = _PACKAGE + ("range",)
_TEXTS = {("vuln", "topic"): "topic", _PACKAGE + ("name",): "name",
          ("vuln", "references", "cvename"): "cves", ("vuln", "references", "freebsdsa"): "advisories",
          ("vuln", "references", "url"): "urls", ("vuln", "dates", "entry"): "entry",
          ("vuln", "dates", "modified"): "modified", **{_RANGE + (op,): op for op in OPS}}


class _Handler(xml.sax.ContentHandler):
    """SAX events to entries: the path of the open elements says what a text is."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source
        self.path: list[str] = []           # open elements, lower case (pkg compares names so too)
        self.vulns: list[Vuln] = []
        self.items = 0
        self.elements = 0
        self.seen_root = False
        self.text: Optional[list[str]] = None
        self.size = 0
        self.vuln: dict = {}
        self.package: Optional[tuple[list[str], list[Range]]] = None
        self.bounds: Optional[list[Bound]] = None

    def _refuse(self, why: str) -> BuildError:
        line = self._locator.getLineNumber() if self._locator is not None else "?"
        vid = f" (vuln {self.vuln.get('vid')})" if self.vuln.get("vid") else ""
        return BuildError(f"{self.source}:{line}: {why}{vid}; refusing")

    def startElement(self, name: str, attrs) -> None:
        self.path.append(name.lower())
        self.elements += 1
        if len(self.path) > MAX_DEPTH or self.elements > MAX_ELEMENTS:
            raise self._refuse(f"elements nested over {MAX_DEPTH} deep" if len(self.path) > MAX_DEPTH
                               else f"over {MAX_ELEMENTS} elements")
        where = tuple(self.path[1:])
        if not where:
            if self.path[0] != "vuxml":
                raise self._refuse(f"the document is <{name}>, not <vuxml>")
            self.seen_root = True
        elif where == ("vuln",):
            self._start_vuln(attrs)
        elif where == _PACKAGE:
            self.package = ([], [])
        elif where == _RANGE:
            self.bounds = []
        elif where in _TEXTS:
            self.text, self.size = [], 0

    def _start_vuln(self, attrs) -> None:
        if len(self.vulns) >= MAX_VULNS:
            raise self._refuse(f"over {MAX_VULNS} entries")
        vid = attrs.get("vid", "").strip()
        if not vid or len(vid) > MAX_TEXT:
            raise self._refuse("a <vuln> without a vid")
        self.vuln = {"vid": vid, "topic": "", "affects": [], "cves": [], "advisories": [], "urls": [],
                     "entry": "", "modified": ""}

    def characters(self, content: str) -> None:
        if self.text is not None:
            self.size += len(content)
            if self.size > MAX_TEXT:
                raise self._refuse(f"<{self.path[-1]}> is over {MAX_TEXT} characters")
            self.text.append(content)

    def endElement(self, name: str) -> None:
        where = tuple(self.path[1:])
        if self.text is not None and where in _TEXTS:      # not an element inside one (a <b> in a topic)
            self._text(_TEXTS[where], "".join(self.text).strip())
            self.text = None
        elif where == ("vuln",):
            v = self.vuln
            self.vulns.append(Vuln(v["vid"], v["topic"], tuple(v["affects"]), tuple(v["cves"]),
                                   tuple(v["advisories"]), tuple(v["urls"]), v["entry"], v["modified"]))
            self.vuln = {}
        elif where == _PACKAGE:
            names, ranges = self.package
            self.vuln["affects"].append(Affected(tuple(names), tuple(ranges)))
        elif where == _RANGE:
            if not 1 <= len(self.bounds) <= 2:
                raise self._refuse(f"a <range> with {len(self.bounds)} bounds (VuXML allows one or two)")
            self.package[1].append(Range(tuple(self.bounds)))
        self.path.pop()

    def _text(self, key: str, value: str) -> None:
        if key in OPS + ("name",) and not value:
            raise self._refuse(f"an empty <{self.path[-1]}>")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise self._refuse(f"over {MAX_ITEMS} names, versions and references")
        if key in OPS:
            self.bounds.append(Bound(key, value))
        elif key == "name":
            self.package[0].append(value)
        elif key in ("topic", "entry", "modified"):
            self.vuln[key] = value
        else:
            self.vuln[key].append(value)
