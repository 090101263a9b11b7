"""The libraries that shape output bytes, pinned, and checked before a byte is written.

SQLite writes local.sqlite, libdeflate the gzip layers, libzstd the zstd layers: another version
of any gives other bytes for the same inputs. pip installs the pinned versions (pyproject.toml
pins them exactly, constraints.txt too; tests/test_writers.py keeps the three in step), but a
host without wheels builds them from source, and FreeBSD's py-apsw links the system SQLite, so
what counts is what runs: each library's own version and a probe of its output, not only the
Python package's version.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

FIX = "python3 -m pip install -c constraints.txt -e .   (or: pip install {pins})"


@dataclass(frozen=True)
class Writer:
    """One pinned writer: its Python distribution, the native library it runs, and a probe of the bytes."""
    name: str                  # what shapes the bytes, e.g. "SQLite"
    distribution: str          # the Python package that brings it
    version: str               # the distribution's pinned version
    native: str                # the native library's pinned version
    probe: str                 # sha256 of probe() with the pinned library


@dataclass(frozen=True)
class Running:
    distribution: str          # installed version of the distribution ("" if not installed)
    native: str                # the native library's version as the library reports it
    probe: str                 # sha256 of what it writes for the probe input


PINS = (
    Writer("SQLite", "apsw", "3.50.1.0", "3.50.1", "c45d941eac4a5787dc66e3c1774cebb9906a3400de90d079755a873352a0e3ff"),
    Writer("libdeflate", "deflate", "0.8.1", "(bundled with deflate 0.8.1)",
           "c66c9092f9793c2758251e8242357473bc35bfcea766b08758da13781748b5f8"),
    Writer("libzstd", "zstandard", "0.23.0", "1.5.6",
           "04d28f297166a3ac4f69a22f69cf8f8e0b6fcce11ddc3080c8c9bd50aa2e358f"),
)


def _probe_input() -> bytes:
    # text-like and not trivially repetitive, so the compressors' parsing choices show
    out, h = [], b"freebsd-images"
    for i in range(4096):
        h = hashlib.sha256(h).digest()
        out.append(b"%d %s /usr/share/%s\n" % (i, h.hex()[: 8 + i % 24].encode(), h[:6].hex().encode()))
    return b"".join(out)


def _sqlite(_: bytes) -> tuple[str, str]:
    import apsw
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, v BLOB); CREATE INDEX t_v ON t(v)")
    conn.executemany("INSERT INTO t (name, v) VALUES (?, ?)", [(f"n{i}", bytes([i % 256]) * (i % 97)) for i in range(500)])
    return apsw.sqlite_lib_version(), hashlib.sha256(conn.serialize("main")).hexdigest()


def _deflate(data: bytes) -> tuple[str, str]:
    from builder.common.compress import gzip_member
    import deflate
    return f"(bundled with deflate {deflate.__version__})", hashlib.sha256(gzip_member(data, 6)).hexdigest()


def _zstd(data: bytes) -> tuple[str, str]:
    from builder.common.compress import zstd_frame
    import zstandard
    return ".".join(map(str, zstandard.ZSTD_VERSION)), hashlib.sha256(zstd_frame(data, 9)).hexdigest()


PROBES: dict[str, Callable[[bytes], tuple[str, str]]] = {"apsw": _sqlite, "deflate": _deflate, "zstandard": _zstd}


def running() -> dict[str, Running]:
    """What this interpreter actually runs, per distribution: the boundary the check reads."""
    out = {}
    data = _probe_input()      # made once: both compressors probe the same bytes
    for w in PINS:
        try:
            dist = metadata.version(w.distribution)
        except metadata.PackageNotFoundError:
            dist = ""
        native, probe = PROBES[w.distribution](data)
        out[w.distribution] = Running(dist, native, probe)
    return out


def drift(got: dict[str, Running]) -> list[str]:
    """One line per writer that is not the pinned one, naming what runs and what is wanted."""
    out = []
    for w in PINS:
        r = got[w.distribution]
        if (r.distribution, r.native, r.probe) != (w.version, w.native, w.probe):
            why = "writes other bytes for the same input" if (r.distribution, r.native) == (w.version, w.native) \
                else "is another version"
            out.append(f"{w.name}: {w.distribution} {r.distribution or '(not installed)'} running {w.name} {r.native} "
                       f"{why}; the pinned writer is {w.distribution} {w.version} with {w.name} {w.native}")
    return out


def fix_command() -> str:
    return FIX.format(pins=" ".join(f"'{w.distribution}=={w.version}'" for w in PINS))
