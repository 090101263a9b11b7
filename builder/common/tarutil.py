"""Tar output written byte by byte by us: headers from metadata, never from the host or tarfile's defaults.

Python's ``tarfile`` decides for itself when to add PAX records, how to encode
names and how to pad, and those choices have moved between Python releases;
the bytes of a layer must not. So every header field is set here: POSIX ustar
headers, a PAX extended header (records sorted by keyword) only for values that
do not fit ustar (long or non-ASCII names and link targets, long owner names,
large sizes and ids), directory names ending in ``/``, and the archive ended by
two zero blocks padded to a 10240-byte record, as tar does. No time other than
the given ``mtime`` is recorded (no atime/ctime), no device numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Optional, Union

from builder.errors import BuildError

BLOCK = 512
RECORD = 20 * BLOCK
TYPEFLAG = {"file": b"0", "hardlink": b"1", "symlink": b"2", "dir": b"5"}
PAX_NAME = "././@PaxHeader"


@dataclass(frozen=True)
class Header:
    name: str
    kind: str                 # file | dir | symlink | hardlink
    size: int = 0
    mode: int = 0o644
    mtime: int = 0
    uname: str = "root"
    gname: str = "wheel"
    uid: int = 0
    gid: int = 0
    linkname: str = ""


def info(name: str, kind: str, *, size: int = 0, mode: int = 0o644, mtime: int = 0,
         uname: str = "root", gname: str = "wheel", uid: int = 0, gid: int = 0,
         linkname: str = "") -> Header:
    if kind not in TYPEFLAG:
        raise ValueError(f"tar entry {name!r}: unknown kind {kind!r}")
    if kind == "dir" and not name.endswith("/"):
        name += "/"
    return Header(name, kind, size if kind == "file" else 0, mode & 0o7777, int(mtime), uname, gname,
                  int(uid), int(gid), linkname)


def _octal(n: int, width: int) -> Optional[bytes]:
    """``width``-byte NUL-terminated octal, or None when n does not fit."""
    if n < 0 or n >= 8 ** (width - 1):
        return None
    return b"%0*o\0" % (width - 1, n)


def _text(s: str, width: int) -> Optional[bytes]:
    try:
        b = s.encode("ascii")
    except UnicodeEncodeError:
        return None
    return b if len(b) <= width else None


def _pax_records(records: dict[str, str]) -> bytes:
    out = b""
    for key in sorted(records):
        body = f" {key}={records[key]}\n".encode("utf-8", "surrogateescape")
        n = len(body) + 1
        while len(str(n).encode()) + len(body) != n:   # the length counts its own digits
            n = len(str(n).encode()) + len(body)
        out += str(n).encode() + body
    return out


def _block(name: bytes, mode: int, uid: bytes, gid: bytes, size: int, mtime: bytes, typeflag: bytes,
           linkname: bytes, uname: bytes, gname: bytes) -> bytes:
    h = bytearray(BLOCK)
    h[0:len(name)] = name
    h[100:108] = _octal(mode, 8)
    h[108:116] = uid
    h[116:124] = gid
    h[124:136] = _octal(size, 12)
    h[136:148] = mtime
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157:157 + len(linkname)] = linkname
    h[257:265] = b"ustar\x0000"
    h[265:265 + len(uname)] = uname
    h[297:297 + len(gname)] = gname
    h[329:337] = _octal(0, 8)
    h[337:345] = _octal(0, 8)
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def header_bytes(h: Header) -> bytes:
    pax: dict[str, str] = {}

    def field(key: str, value: str, width: int) -> bytes:
        b = _text(value, width)
        if b is None:
            pax[key] = value
            return _text(value.encode("ascii", "replace").decode()[:width], width) or b""
        return b

    def number(key: str, n: int, width: int) -> bytes:
        b = _octal(n, width)
        if b is None:
            pax[key] = str(n)
            return _octal(0, width)
        return b

    name = field("path", h.name, 100)
    linkname = field("linkpath", h.linkname, 100)
    # 31: POSIX wants the owner names NUL-terminated inside their 32-byte fields
    uname = field("uname", h.uname, 31)
    gname = field("gname", h.gname, 31)
    uid, gid = number("uid", h.uid, 8), number("gid", h.gid, 8)
    mtime = number("mtime", h.mtime, 12)
    size = h.size
    if _octal(size, 12) is None:
        pax["size"] = str(size)
        size = 0
    main = _block(name, h.mode, uid, gid, size, mtime, TYPEFLAG[h.kind], linkname, uname, gname)
    if not pax:
        return main
    records = _pax_records(pax)
    ext = _block(PAX_NAME.encode(), 0o644, _octal(0, 8), _octal(0, 8), len(records), _octal(0, 12), b"x",
                 b"", b"", b"")
    return ext + records + _padding(len(records)) + main


def _padding(n: int) -> bytes:
    return b"\0" * (-n % BLOCK)


class TarWriter:
    """Entries written in the order given; contents streamed from a file object or bytes."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.offset = 0

    def _write(self, b: bytes) -> None:
        self.out.write(b)
        self.offset += len(b)

    def addfile(self, h: Header, data: Union[BinaryIO, bytes, None] = None) -> None:
        self._write(header_bytes(h))
        if h.kind != "file" or not h.size:
            return
        if isinstance(data, (bytes, bytearray)):
            data = memoryview(data)
            if len(data) != h.size:
                raise BuildError(f"tar entry {h.name}: {len(data)} bytes of content for a size of {h.size}")
            self._write(data)
        else:
            left = h.size
            while left:
                chunk = data.read(min(left, 1 << 20)) if data is not None else b""
                if not chunk:
                    raise BuildError(f"tar entry {h.name}: content ended {left} bytes short of its size {h.size}")
                self._write(chunk)
                left -= len(chunk)
        self._write(_padding(h.size))

    def close(self) -> None:
        self._write(b"\0" * (2 * BLOCK))
        self._write(b"\0" * (-self.offset % RECORD))

    def __enter__(self) -> "TarWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

