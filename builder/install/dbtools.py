"""pwd_mkdb, cap_mkdb and services_mkdb: text sources to Berkeley DB hash files."""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from builder.install import bdb
from builder.errors import BuildError

# pwd.h: key types, versioned as (type & 0xCF) | version << 4
_PW_KEYBYNAME, _PW_KEYBYNUM, _PW_KEYBYUID = 0x31, 0x32, 0x33
_PWF = {"name": 0x1, "passwd": 0x2, "uid": 0x4, "gid": 0x8, "change": 0x10, "class": 0x20, "gecos": 0x40,
        "dir": 0x80, "shell": 0x100, "expire": 0x200}
PWD_VERSION_KEY = b"\xffVERSION"
PWD_CURRENT_VERSION = 4
PWD_LEGACY_VERSION = 3


def _versioned(key_type: int, version: int) -> int:
    return (key_type & 0xCF) | (version << 4)


@dataclass(frozen=True)
class PwEntry:
    name: str
    passwd: str
    uid: int
    gid: int
    pwclass: str
    change: int
    expire: int
    gecos: str
    dir: str
    shell: str
    fields: int


def parse_master_passwd(text: str, source: str = "master.passwd") -> list[PwEntry]:
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        f = line.split(":")
        if len(f) != 10:
            raise BuildError(f"{source}:{lineno}: expected 10 fields, got {len(f)}")
        name, passwd, uid, gid, cls, change, expire, gecos, home, shell = f
        fields = 0
        for key, value in (("name", name), ("passwd", passwd), ("uid", uid), ("gid", gid), ("class", cls),
                           ("change", change), ("expire", expire), ("gecos", gecos), ("dir", home),
                           ("shell", shell)):
            if value:
                fields |= _PWF[key]
        if not (uid.isdigit() and gid.isdigit()) and name[:1] not in "+-":
            raise BuildError(f"{source}:{lineno}: bad uid or gid for {name}")
        out.append(PwEntry(name, passwd, int(uid or 0), int(gid or 0), cls, int(change or 0), int(expire or 0),
                           gecos, home, shell, fields))
    return out


def _record(e: PwEntry, passwd: str, order: str) -> bytes:
    s = lambda v: v.encode() + b"\0"
    n = lambda v: struct.pack(order + "I", v & 0xFFFFFFFF)
    return (s(e.name) + s(passwd) + n(e.uid) + n(e.gid) + n(e.change) + s(e.pwclass) + s(e.gecos)
            + s(e.dir) + s(e.shell) + n(e.expire) + n(e.fields))


# The *_mkdb tools are pure functions of their input bytes, and every flavour and arch with the
# same /etc file asks again: each database is computed once per process.
@functools.lru_cache(maxsize=16)
def pwd_mkdb(master_passwd: bytes, info: bdb.HashInfo = bdb.PWD_INFO, legacy_records: bool = False) -> dict[str, bytes]:
    """``pwd_mkdb -p``: /etc/pwd.db, /etc/spwd.db and /etc/passwd from master.passwd.

    FreeBSD 13 and later write only the machine-independent (version 4) records;
    ``legacy_records`` adds the old host-order version 3 ones as older pwd_mkdb did.
    """
    text = master_passwd.decode("utf-8", "surrogateescape")
    entries = parse_master_passwd(text)
    legacy = ">" if info.lorder == bdb.BIG_ENDIAN else "<"
    version = (PWD_VERSION_KEY, bytes([PWD_CURRENT_VERSION]))
    insecure, secure = [version], [version]
    for cnt, e in enumerate(entries, 1):
        for db, pw in ((insecure, "*"), (secure, e.passwd)):
            cur = _record(e, pw, ">")
            db.append((bytes([_versioned(_PW_KEYBYNAME, PWD_CURRENT_VERSION)]) + e.name.encode(), cur))
            db.append((bytes([_versioned(_PW_KEYBYNUM, PWD_CURRENT_VERSION)]) + struct.pack(">I", cnt), cur))
            db.append((bytes([_versioned(_PW_KEYBYUID, PWD_CURRENT_VERSION)]) + struct.pack(">I", e.uid), cur))
        for db, pw in ((insecure, "*"), (secure, e.passwd)) if legacy_records else ():
            old = _record(e, pw, legacy)
            db.append((bytes([_versioned(_PW_KEYBYNAME, PWD_LEGACY_VERSION)]) + e.name.encode(), old))
            db.append((bytes([_versioned(_PW_KEYBYNUM, PWD_LEGACY_VERSION)]) + struct.pack(legacy + "I", cnt), old))
            db.append((bytes([_versioned(_PW_KEYBYUID, PWD_LEGACY_VERSION)]) + struct.pack(legacy + "I", e.uid), old))
    passwd_lines = []
    for line in text.rstrip("\n").split("\n"):
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            passwd_lines.append(line)
            continue
        e = parse_master_passwd(line)[0]
        uid = str(e.uid) if e.fields & _PWF["uid"] else ""
        gid = str(e.gid) if e.fields & _PWF["gid"] else ""
        passwd_lines.append(f"{e.name}:*:{uid}:{gid}:{e.gecos}:{e.dir}:{e.shell}")
    return {
        "/etc/pwd.db": bdb.write(insecure, info),
        "/etc/spwd.db": bdb.write(secure, info),
        "/etc/passwd": ("\n".join(passwd_lines) + "\n").encode("utf-8", "surrogateescape"),
    }


def read_pwd_db(data: bytes) -> dict[str, dict]:
    """Current-version records by name, decoded (for tests and diff)."""
    out = {}
    key_prefix = bytes([_versioned(_PW_KEYBYNAME, PWD_CURRENT_VERSION)])
    for k, v in bdb.read(data).items():
        if not k.startswith(key_prefix):
            continue
        i = 0

        def cstr():
            nonlocal i
            j = v.index(b"\0", i)
            s = v[i:j].decode("utf-8", "surrogateescape")
            i = j + 1
            return s

        def num():
            nonlocal i
            x = struct.unpack_from(">I", v, i)[0]
            i += 4
            return x
        rec = dict(name=cstr(), passwd=cstr(), uid=num(), gid=num(), change=num(), pwclass=cstr(), gecos=cstr(),
                   dir=cstr(), shell=cstr(), expire=num(), fields=num())
        out[rec["name"]] = rec
    return out


# --- cap_mkdb ------------------------------------------------------------------------------------

def _cap_records(text: str) -> list[str]:
    """getcap(3)'s view of a capability file: records with continuations joined."""
    records, cur = [], None
    for line in text.split("\n"):
        if cur is None:
            if not line or line[0] in "#\t " or line.startswith("\r"):
                continue
            cur = line
        else:
            cur += line
        if cur.endswith("\\"):
            cur = cur[:-1]
            continue
        records.append(cur)
        cur = None
    if cur:
        records.append(cur)
    return records


def _expand_tc(rec: str, by_name: dict[str, str], depth: int = 0) -> str:
    if depth > 32:
        raise BuildError("login.conf: potential tc= reference loop")
    out = rec
    while True:
        i = out.find(":tc=")
        if i < 0:
            return out
        j = out.find(":", i + 1)
        j = len(out) if j < 0 else j
        name = out[i + 4:j]
        if name not in by_name:
            raise BuildError(f"login.conf: tc={name} refers to no record")
        ref = _expand_tc(by_name[name], by_name, depth + 1)
        body = ref[ref.index(":"):].rstrip(":") if ":" in ref else ""
        out = out[:i] + body + out[j:]


@functools.lru_cache(maxsize=16)
def cap_mkdb(source: bytes, info: bdb.HashInfo = bdb.CAP_INFO) -> bytes:
    text = source.decode("utf-8", "surrogateescape")
    records = _cap_records(text)
    by_name: dict[str, str] = {}
    for r in records:
        names = r.split(":", 1)[0]
        for n in names.split("|"):
            by_name.setdefault(n, r)
    pairs = []
    for r in records:
        full = _expand_tc(r, by_name)
        names = full.split(":", 1)[0]
        pairs.append((names.encode(), b"\0" + full.encode("utf-8", "surrogateescape") + b"\0"))
        if "|" in names:
            for n in names.split("|"):
                if n:
                    pairs.append((n.encode(), b"\2" + names.encode()))
    return bdb.write(pairs, info)


# --- services_mkdb -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def services_mkdb(source: bytes, info: bdb.HashInfo = bdb.SERVICES_INFO) -> bytes:
    protos: list[str] = []
    svc: dict[int, dict[int, list[str]]] = {}
    for line in source.decode("utf-8", "surrogateescape").split("\n"):
        line = line.split("#", 1)[0]
        f = line.split()
        if len(f) < 2 or "/" not in f[1]:
            continue
        port, _, proto = f[1].partition("/")
        if not port.isdigit() or int(port) > 0xFFFF or not proto:
            continue
        if proto not in protos:
            protos.append(proto)
        names = svc.setdefault(int(port), {}).setdefault(protos.index(proto), [])
        for n in [f[0]] + f[2:]:
            if n not in names:
                names.append(n)
    pairs = []
    cnt = 0
    for port in sorted(svc):
        for pi in sorted(svc[port]):
            names, proto = svc[port][pi], protos[pi]
            idx = f"{cnt}".encode() + b"\0"
            cnt += 1
            aliases = "".join(a + " " for a in names[1:])
            pairs.append((idx, f"{names[0]} {port}/{proto} {aliases}".encode() + b"\0"))
            pairs.append((f"\377{port}/{proto}".encode("latin-1") + b"\0", idx))
            pairs.append((f"\377{port}".encode("latin-1") + b"\0", idx))
            for n in names:
                pairs.append((b"\376" + f"{n}/{proto}".encode() + b"\0", idx))
                pairs.append((b"\376" + n.encode() + b"\0", idx))
    return bdb.write(pairs, info)
