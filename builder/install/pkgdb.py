"""/var/db/pkg/local.sqlite, written as pkg registers packages, byte-deterministic.

Rows follow what pkg 2.0 writes on ``pkg install`` (checked against a real
database in the tests). The file is built in one transaction and vacuumed
into a fresh file by the SQLite that apsw bundles at the version pinned in
constraints.txt, never the host's: two SQLite releases lay out the b-tree
pages of the same rows differently, so the file's bytes are a function of the
rows only while the writer is fixed (the golden digests guard it).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from typing import Optional

import apsw

from builder.resolve.checksum import manifest_digest

SCRIPT_TYPES = {"pre-install": 0, "post-install": 1, "pre-deinstall": 2, "post-deinstall": 3,
                "pre-upgrade": 4, "post-upgrade": 5, "install": 6, "deinstall": 7, "upgrade": 8}
LICENSE_LOGIC = {"single": 1, "or": ord("|"), "dual": ord("|"), "and": ord("&"), "multi": ord("&")}
SUPPORTED_SCHEMAS = (36,)


@dataclass(frozen=True)
class Registration:
    manifest: dict               # the package's +MANIFEST
    repository: str              # pkg's repository name, e.g. FreeBSD-base
    automatic: bool
    config_contents: tuple[tuple[str, bytes], ...] = ()


def schema_sql(user_version: int) -> str:
    if user_version not in SUPPORTED_SCHEMAS:
        raise ValueError(f"pkg database schema {user_version} is not supported (have {SUPPORTED_SCHEMAS})")
    return resources.files("builder").joinpath(f"data/pkgdb-{user_version}.sql").read_text()


def install_order(regs: list[Registration]) -> list[Registration]:
    """Dependencies before dependents, ties by name: the order pkg registers them."""
    by = {r.manifest["name"]: r for r in regs}
    done: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            return  # dependency cycle: keep going, pkg tolerates them
        state[n] = 1
        for d in sorted((by[n].manifest.get("deps") or {})):
            if d in by:
                visit(d)
        state[n] = 2
        done.append(n)

    for n in sorted(by):
        visit(n)
    return [by[n] for n in done]


def writer_version() -> str:
    """What writes local.sqlite, for the image's build-environment record."""
    return f"sqlite {apsw.sqlite_lib_version()} (apsw {apsw.apswversion()})"


def _intern(cur: apsw.Cursor, table: str, column: str, value: str, id_column: str = "id") -> int:
    cur.execute(f"INSERT OR IGNORE INTO {table} ({column}) VALUES (?)", (value,))
    return cur.execute(f"SELECT {id_column} FROM {table} WHERE {column} = ?", (value,)).fetchone()[0]


def _register(cur: apsw.Cursor, reg: Registration, epoch: int) -> None:
    m = reg.manifest
    deps = m.get("deps") or {}
    digest = manifest_digest(
        m["name"], m["origin"], m["version"], m.get("arch", ""),
        deps=[(n, d.get("origin", "")) for n, d in deps.items()],
        options=sorted((m.get("options") or {}).items()),
        shlibs_required=m.get("shlibs_required") or (), shlibs_provided=m.get("shlibs_provided") or (),
        users=m.get("users") or (), groups=m.get("groups") or (),
        provides=m.get("provides") or (), requires=m.get("requires") or ())
    cur.execute(
        "INSERT INTO packages (origin, name, version, comment, desc, message, arch, maintainer, www, prefix,"
        " flatsize, automatic, locked, licenselogic, time, manifestdigest, vital)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,?,?,?,?)",
        (m["origin"], m["name"], m["version"], m.get("comment", ""), m.get("desc", ""), None,
         m.get("abi", ""), m.get("maintainer", ""), m.get("www"), m.get("prefix", "/"),
         int(m.get("flatsize", 0)), 1 if reg.automatic else 0,
         LICENSE_LOGIC.get(m.get("licenselogic", "single"), 1), epoch, digest, 1 if m.get("vital") else 0))
    pid = cur.connection.last_insert_rowid()
    for kind, script in (m.get("scripts") or {}).items():
        sid = _intern(cur, "script", "script", script, "script_id")
        cur.execute("INSERT INTO pkg_script (package_id, type, script_id) VALUES (?,?,?)", (pid, SCRIPT_TYPES[kind], sid))
    for name, d in deps.items():
        cur.execute("INSERT INTO deps (origin, name, version, package_id) VALUES (?,?,?,?)",
                    (d.get("origin", ""), name, d.get("version", ""), pid))
    for path, meta in (m.get("files") or {}).items():
        s = meta.get("sum") if isinstance(meta, dict) else meta
        cur.execute("INSERT INTO files (path, sha256, package_id) VALUES (?,?,?)", (path, s, pid))
    for path in (m.get("directories") or {}):
        did = _intern(cur, "directories", "path", path)
        cur.execute("INSERT INTO pkg_directories (package_id, directory_id, try) VALUES (?,?,1)", (pid, did))
    for table, link, items in (("categories", "pkg_categories", m.get("categories")),
                               ("licenses", "pkg_licenses", m.get("licenses")),
                               ("users", "pkg_users", m.get("users")), ("groups", "pkg_groups", m.get("groups"))):
        col = {"categories": "category_id", "licenses": "license_id", "users": "user_id", "groups": "group_id"}[table]
        for item in items or ():
            iid = _intern(cur, table, "name", item)
            cur.execute(f"INSERT OR IGNORE INTO {link} (package_id, {col}) VALUES (?,?)", (pid, iid))
    for kind, key in (("shlibs_required", "pkg_shlibs_required"), ("shlibs_provided", "pkg_shlibs_provided")):
        for lib in m.get(kind) or ():
            sid = _intern(cur, "shlibs", "name", lib)
            cur.execute(f"INSERT OR IGNORE INTO {key} (package_id, shlib_id) VALUES (?,?)", (pid, sid))
    annotations = dict(m.get("annotations") or {})
    annotations["repository"] = reg.repository
    annotations["repo_type"] = "binary"
    for tag, value in annotations.items():
        tid = _intern(cur, "annotation", "annotation", tag, "annotation_id")
        vid = _intern(cur, "annotation", "annotation", str(value), "annotation_id")
        cur.execute("INSERT OR IGNORE INTO pkg_annotation (package_id, tag_id, value_id) VALUES (?,?,?)", (pid, tid, vid))
    for opt, value in sorted((m.get("options") or {}).items()):
        oid = _intern(cur, "option", "option", opt, "option_id")
        cur.execute("INSERT INTO pkg_option (package_id, option_id, value) VALUES (?,?,?)", (pid, oid, value))
    for path, content in reg.config_contents:
        cur.execute("INSERT INTO config_files (path, content, package_id) VALUES (?,?,?)",
                    (path, content.decode("utf-8", "surrogateescape"), pid))


def build_pkgdb(regs: list[Registration], epoch: int, user_version: int = 36,
                tmpdir: Optional[str] = None) -> bytes:
    ddl = schema_sql(user_version)
    with tempfile.TemporaryDirectory(dir=tmpdir) as d:
        work, final = os.path.join(d, "work.sqlite"), os.path.join(d, "local.sqlite")
        con = apsw.Connection(work)
        try:
            con.execute("PRAGMA page_size = 4096")
            con.execute("PRAGMA journal_mode = DELETE")
            con.execute("PRAGMA synchronous = OFF")   # a scratch file read back at once: no fsync (no byte changes)
            con.execute("PRAGMA encoding = 'UTF-8'")
            con.execute("BEGIN")
            for statement in ddl.split(";\n"):
                if statement.strip():
                    con.execute(statement)
            cur = con.cursor()
            for reg in install_order(regs):
                _register(cur, reg, epoch)
            cur.execute("INSERT INTO pkg_lock VALUES (0,0,0)")
            con.execute(f"PRAGMA user_version = {int(user_version)}")
            con.execute("COMMIT")
            con.execute("VACUUM INTO ?", (final,))
        finally:
            con.close()
        with open(final, "rb") as fh:
            return fh.read()


def read_rows(path: str, ignore: tuple[str, ...] = ("time",)) -> dict[str, list[dict]]:
    """Every table's rows with surrogate ids replaced by what they stand for.

    Foreign keys become the referenced row's value (package name, script text,
    shlib name ...) and integer primary keys that only serve as such ids are
    dropped, so two databases with the same content compare equal whatever
    order their rows were inserted in. Used by the tests and by ``diff``.
    """
    con = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        value_of: dict[str, tuple[str, str]] = {}      # table -> (id column, value column)
        for t in tables:
            cols = list(con.execute(f"PRAGMA table_info({t})"))
            pk = [c[1] for c in cols if c[5] == 1 and c[2].upper() == "INTEGER"]
            texts = [c[1] for c in cols if c[2].upper() == "TEXT"]
            if len(pk) == 1 and texts:
                value_of[t] = (pk[0], "name" if "name" in texts else texts[0])
        lookup: dict[str, dict[int, str]] = {
            t: dict(con.execute(f"SELECT {idc}, {vc} FROM {t}")) for t, (idc, vc) in value_of.items()}
        out: dict[str, list[dict]] = {}
        for t in tables:
            cols = [c[1] for c in con.execute(f"PRAGMA table_info({t})")]
            fks = {fk[3]: fk[2] for fk in con.execute(f"PRAGMA foreign_key_list({t})")}
            drop = {value_of[t][0]} if t in value_of else set()
            rows = []
            for row in con.execute(f"SELECT * FROM {t}"):
                d = {}
                for c, v in zip(cols, row):
                    if c in drop or c in ignore:
                        continue
                    if c in fks and fks[c] in lookup and v is not None:
                        v = lookup[fks[c]].get(v, v)
                    d[c] = v
                rows.append(d)
            out[t] = sorted(rows, key=lambda d: repr(sorted(d.items())))
        return out
    finally:
        con.close()


def user_version(path: str) -> int:
    con = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return con.execute("PRAGMA user_version").fetchone()[0]
    finally:
        con.close()
