"""Explain why two builds differ, down to the file, row or record.

A and B are OCI layouts (``DIR`` or ``DIR:REF``), release archives (``.txz``)
or registry references (``docker://host/repo:tag``). The walk goes index ->
manifests (matched by platform) -> config -> layers -> tar entries; entries
are compared by header fields and content hash in one streaming pass, then
the few entries whose content differs are read again for a bounded text diff,
a row-level diff of local.sqlite or a record-level diff of Berkeley DB files.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import lzma
import os
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional


from builder.install import bdb
from builder.errors import BuildError
from builder.common.compress import decompressing
from builder.install.pkgdb import read_rows, user_version
from builder.common.files import open_regular
from builder.oci.layout import INDEX_MT, Descriptor, Layout, descriptors, parse_document, platform_label, valid_digest

TEXT_DIFF_LINES = 40
CONTENT_LIMIT = 16 << 20   # entries read back for a content diff must be smaller than this
CONTENT_TOTAL = 64 << 20   # and all of one layer's together (beyond: compared by hash only)
MAX_ENTRIES = 1 << 18      # entries of one layer compared (a base system has ~20 000); more is refused
SQLITE_ROWS = 200_000      # rows of a database diffed row by row (local.sqlite has ~10 000)
# A release archive is unpacked for diff: its blobs are compressed already, so the tar in the .txz is
# about as big as the .txz; more than UNPACK_RATIO times its size (and UNPACK_FLOOR) is refused.
UNPACK_RATIO = 4
UNPACK_FLOOR = 64 << 20
MAX_REFERRERS = 64         # referrers of one manifest brought from a registry
PKGDB = "var/db/pkg/local.sqlite"
DB_SUFFIX = ".db"


@dataclass
class Difference:
    image: str                  # ref name, or "" for layout-level differences
    where: str                  # "index", "manifest [amd64]", "config [amd64]", "layer 3/4 [amd64]"
    path: str = ""              # file inside the layer
    field: str = ""             # what differs: digest, mode, mtime, content, order, row, record ...
    a: object = None
    b: object = None
    detail: str = ""            # text diff, table/key/column ...

    def human(self) -> str:
        loc = " ".join(x for x in (self.image, self.where) if x)
        what = f"{self.path}: " if self.path else ""
        if self.a is None and self.b is None:
            vals = ""
        elif self.a is None or self.b is None:      # present on one side only: show what is there
            vals = f": {self.b if self.a is None else self.a!r}"
        else:
            vals = f": {self.a!r} != {self.b!r}"
        out = f"{loc}: {what}{self.field}{vals}"
        if self.detail:
            out += "\n" + "\n".join("    " + l for l in self.detail.splitlines())
        return out


# --- opening sources ---------------------------------------------------------------------

@dataclass
class Source:
    label: str
    layout: Layout
    ref: Optional[str] = None
    tmp: Optional[str] = None

    def close(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def refs(self) -> dict[str, Descriptor]:
        refs = self.layout.refs()
        if self.ref:
            if self.ref not in refs:
                raise BuildError(f"{self.label}: no ref {self.ref!r}")
            return {self.ref: refs[self.ref]}
        return refs


def open_source(spec: str, insecure: bool = False, referrers: bool = False) -> Source:
    """``referrers``: also bring a registry image's referrers (SBOM, provenance, recipe) into the copy."""
    if spec.startswith("docker://"):
        return _from_registry(spec, insecure, referrers)
    p = Path(spec)
    if p.is_file():
        return _from_archive(p)
    ref = None
    if not p.is_dir():
        # DIR:REF, where REF itself may hold ':' (name:tag)
        cut = next((i for i, c in enumerate(spec) if c == ":" and Path(spec[:i]).is_dir()), None)
        if cut is not None:
            p, ref = Path(spec[:cut]), spec[cut + 1:]
    # lexists: an index.json that is a FIFO or a link is refused by Layout, naming why
    if not os.path.lexists(p / "index.json"):
        raise BuildError(f"{spec}: not an OCI layout, release archive or docker:// reference")
    return Source(spec, Layout(p), ref)


def _archive_target(name: str) -> Optional[str]:
    """Where a member of an OCI archive goes in the unpacked layout, or None: nothing else is written."""
    name = name[2:] if name.startswith("./") else name
    if name in ("oci-layout", "index.json", "blobs", "blobs/sha256"):
        return name
    if name.startswith("blobs/sha256/") and valid_digest("sha256:" + name[len("blobs/sha256/"):]):
        return name
    return None


def _from_archive(path: Path) -> Source:
    """A release archive unpacked to a temporary layout: only its layout's regular files and directories,
    the decompressed stream bounded (UNPACK_RATIO), so TMPDIR never takes more than that."""
    label = str(path)
    path = path.resolve()     # the user's link is followed; what it names must be a regular file
    tmp = tempfile.mkdtemp(prefix="freebsd-images-diff.")
    try:
        with open_regular(path) as raw:
            limit = max(UNPACK_FLOOR, UNPACK_RATIO * os.fstat(raw.fileno()).st_size)
            try:
                stream, _ = decompressing(raw, f"{path}", limit)
            except BuildError as exc:
                raise BuildError(f"{path}: {exc}") from exc
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for m in tar:
                    _unpack_member(path, tar, m, Path(tmp))
    except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"{path}: cannot read archive: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Source(label, Layout(Path(tmp)), None, tmp)


def _unpack_member(path: Path, tar: tarfile.TarFile, m: tarfile.TarInfo, root: Path) -> None:
    name = _archive_target(m.name)
    if name is None:
        return                  # not part of the OCI layout (docker's manifest.json ...): not written
    if m.isdir():
        (root / name).mkdir(parents=True, exist_ok=True)
        return
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or name in ("blobs", "blobs/sha256"):
        raise BuildError(f"{path}: member {m.name!r} is not a regular file; refusing")
    dest = root / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(m) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _descriptors(doc: dict, key: str, what: str, many: bool = True) -> list[dict]:
    """doc[key] as checked descriptors: a list of them, or (many False) one."""
    return descriptors(doc, key, what) if many else descriptors({key: [doc.get(key)]}, key, what)


def _from_registry(spec: str, insecure: bool, with_referrers: bool = False) -> Source:
    from builder.oci.registry import ACCEPT, Registry, remote_referrers
    rest = spec[len("docker://"):]
    host, _, path = rest.partition("/")
    repo, _, tag = path.rpartition(":") if ":" in path.split("/")[-1] else (path, "", "latest")
    reg = Registry(host, insecure=insecure)
    tmp = tempfile.mkdtemp(prefix="freebsd-images-diff.")
    try:
        layout = Layout(Path(tmp)).init()

        def check(digest: str, what: str) -> None:
            # a digest from the registry becomes a URL and a file name: well-formed first
            try:
                layout.blob_path(digest)
            except BuildError as exc:
                raise BuildError(f"{what}: bad digest {digest[:80]!r}; refusing") from exc

        def store(data: bytes, digest: str, what: str) -> None:
            got, _ = layout.put_bytes(data)
            if got != digest:
                raise BuildError(f"{what}: registry sent content with digest {got}, not {digest}; refusing")

        def fetch(digest: str, what: str) -> None:
            check(digest, what)
            if layout.has_blob(digest):
                return
            r = reg.request("GET", f"/v2/{repo}/blobs/{digest}", f"repository:{repo}:pull")
            store(r.content, digest, f"{spec}: blob {digest}")

        data = reg.request("GET", f"/v2/{repo}/manifests/{tag}", f"repository:{repo}:pull",
                           headers={"Accept": ACCEPT}).content
        top = parse_document(data, f"{spec}: manifest")
        digest, size = layout.put_bytes(data)
        mans = [m["digest"] for m in _descriptors(top, "manifests", f"{spec}: index")] if "manifests" in top else [digest]

        def manifest(md: str, what: str) -> None:
            if not layout.has_blob(md):
                store(reg.request("GET", f"/v2/{repo}/manifests/{md}", f"repository:{repo}:pull",
                                  headers={"Accept": ACCEPT}).content, md, what)
            m = parse_document(layout.read_blob(md), what)
            for blob in _descriptors(m, "config", what, many=False) + _descriptors(m, "layers", what):
                fetch(blob["digest"], what)

        referrers: dict[str, list[Descriptor]] = {}
        for md in mans:
            check(md, f"{spec}: index")
            manifest(md, f"{spec}: manifest {md}")
            if with_referrers:
                listed = remote_referrers(reg, repo, md)[0]
                if not isinstance(listed, list) or len(listed) > MAX_REFERRERS:
                    raise BuildError(f"{spec}: manifest {md}: over {MAX_REFERRERS} referrers or not a list; refusing")
                for d in _descriptors({"manifests": listed}, "manifests", f"{spec}: referrers of {md}"):
                    check(d["digest"], f"{spec}: referrers of {md}")
                    manifest(d["digest"], f"{spec}: referrer {d['digest']}")
                    try:
                        referrers.setdefault(md, []).append(Descriptor.from_json(d))
                    except (KeyError, TypeError, ValueError, AttributeError) as exc:
                        raise BuildError(f"{spec}: referrer of {md} is not a descriptor ({exc!r}); refusing") from exc
        media_type = top.get("mediaType", INDEX_MT)
        if not isinstance(media_type, str):
            raise BuildError(f"{spec}: manifest: 'mediaType' is not a string; refusing")
        name = f"{repo.rsplit('/', 1)[-1]}:{tag}"
        layout.set_refs({name: Descriptor(media_type, digest, size)}, referrers=referrers)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Source(spec, layout, None, tmp)


# --- layer entries -----------------------------------------------------------------------

@dataclass(frozen=True)
class EntryInfo:
    index: int
    type: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: int
    size: int
    linkname: str
    sha256: str
    pax: tuple


TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
         tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}


def layer_entries(layout: Layout, digest: str) -> dict[str, EntryInfo]:
    out: dict[str, EntryInfo] = {}
    with layout.open_blob(digest) as raw, tarfile.open(fileobj=decompressing(raw, f"layer {digest}")[0], mode="r|") as tar:
        for i, m in enumerate(tar):
            if i >= MAX_ENTRIES:
                raise BuildError(f"{layout.root}: layer {digest} has over {MAX_ENTRIES} entries; refusing")
            h = hashlib.sha256()
            if m.isfile():
                f = tar.extractfile(m)
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            pax = tuple(sorted((k, v) for k, v in m.pax_headers.items() if k not in ("path", "linkpath", "size")))
            out[m.name] = EntryInfo(i, TYPES.get(m.type, repr(m.type)), m.mode, m.uid, m.gid, m.uname, m.gname,
                                    int(m.mtime), m.size, m.linkname, h.hexdigest() if m.isfile() else "", pax)
    return out


def read_entries(layout: Layout, digest: str, names: set[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if not names:
        return out
    total = 0
    with layout.open_blob(digest) as raw, tarfile.open(fileobj=decompressing(raw, f"layer {digest}")[0], mode="r|") as tar:
        for m in tar:
            # sizes from the header, checked before reading: what is left out is compared by hash
            if m.name in names and m.isfile() and m.size <= CONTENT_LIMIT and total + m.size <= CONTENT_TOTAL:
                total += m.size
                out[m.name] = tar.extractfile(m).read(m.size)
    return out


def _content_detail(path: str, a: bytes, b: bytes) -> list[tuple[str, str, object, object]]:
    """(field, detail, a, b) for a file whose bytes differ."""
    name = path.rsplit("/", 1)[-1]
    if path.endswith(PKGDB) or name.endswith(".sqlite"):
        return _sqlite_diff(a, b)
    if name.endswith(DB_SUFFIX):
        try:
            ra, rb = bdb.read(a), bdb.read(b)
        except Exception:  # not a Berkeley DB file after all: fall through to bytes
            ra = rb = None
        if ra is not None:
            out = []
            for k in sorted(set(ra) | set(rb)):
                if ra.get(k) != rb.get(k):
                    out.append(("record", f"key {k!r}", ra.get(k), rb.get(k)))
            if not out:
                out.append(("content", "same records, different page layout", None, None))
            return out[:50]
    try:
        ta, tb = a.decode("utf-8"), b.decode("utf-8")
    except UnicodeDecodeError:
        return [("content", "", hashlib.sha256(a).hexdigest()[:16], hashlib.sha256(b).hexdigest()[:16])]
    lines = list(difflib.unified_diff(ta.splitlines(), tb.splitlines(), "a" + path, "b" + path, lineterm="", n=1))
    more = len(lines) - TEXT_DIFF_LINES
    text = "\n".join(lines[:TEXT_DIFF_LINES]) + (f"\n... {more} more lines" if more > 0 else "")
    return [("content", text, None, None)]


def _sqlite_diff(a: bytes, b: bytes) -> list:
    with tempfile.TemporaryDirectory() as d:
        pa, pb = os.path.join(d, "a.sqlite"), os.path.join(d, "b.sqlite")
        Path(pa).write_bytes(a)
        Path(pb).write_bytes(b)
        try:
            many = max(_row_count(pa), _row_count(pb))
            if many > SQLITE_ROWS:
                return [("content", f"over {SQLITE_ROWS} rows: not diffed row by row", None, None)]
            ra, rb = read_rows(pa, ignore=()), read_rows(pb, ignore=())
            va, vb = user_version(pa), user_version(pb)
        except Exception as exc:
            return [("content", f"not readable as SQLite: {exc}", None, None)]
    out = []
    if va != vb:
        out.append(("user_version", "", va, vb))
    for table in sorted(set(ra) | set(rb)):
        rows_a, rows_b = ra.get(table, []), rb.get(table, [])
        ka, kb = {_row_key(table, r): r for r in rows_a}, {_row_key(table, r): r for r in rows_b}
        for key in sorted(set(ka) | set(kb), key=repr):
            x, y = ka.get(key), kb.get(key)
            if x == y:
                continue
            if x is None or y is None:
                out.append(("row", f"table {table}, key {key}: {'only in B' if x is None else 'only in A'}", x, y))
                continue
            for col in sorted(set(x) | set(y)):
                if x.get(col) != y.get(col):
                    out.append(("row", f"table {table}, key {key}, column {col}", x.get(col), y.get(col)))
    if not out:
        out.append(("content", "same rows, different file bytes (header or page layout)", None, None))
    return out[:100]


def _row_count(path: str) -> int:
    """Rows in every table, counted by SQLite before any is read: read_rows holds them all in memory."""
    import apsw
    con = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return sum(con.execute(f'SELECT count(*) FROM "{t.replace(chr(34), chr(34) * 2)}"').fetchone()[0]
                   for t in tables)
    finally:
        con.close()


def _row_key(table: str, row: dict) -> tuple:
    for cols in (("name",) if table == "packages" else (), ("package_id", "path"), ("path",),
                 ("package_id", "name"), ("package_id", "type")):
        if cols and all(c in row for c in cols):
            return tuple(row[c] for c in cols)
    return tuple(sorted(row.items()))


def _compare_layer(image: str, where: str, la: Layout, lb: Layout, da: dict, db: dict) -> list[Difference]:
    out: list[Difference] = []
    if da["mediaType"] != db["mediaType"]:
        out.append(Difference(image, where, field="mediaType", a=da["mediaType"], b=db["mediaType"]))
    ea = layer_entries(la, da["digest"])
    eb = layer_entries(lb, db["digest"])
    for name in sorted(set(ea) - set(eb)):
        out.append(Difference(image, where, "/" + name, "only in A"))
    for name in sorted(set(eb) - set(ea)):
        out.append(Difference(image, where, "/" + name, "only in B"))
    common = [n for n in ea if n in eb]
    content: list[str] = []
    for name in common:
        x, y = ea[name], eb[name]
        for f in ("type", "mode", "uid", "gid", "uname", "gname", "mtime", "size", "linkname", "pax"):
            vx, vy = getattr(x, f), getattr(y, f)
            if vx != vy:
                if f == "mode":
                    vx, vy = f"{vx:04o}", f"{vy:04o}"
                out.append(Difference(image, where, "/" + name, f, vx, vy))
        if x.sha256 != y.sha256 and x.type == "file":
            content.append(name)
    # order: same names, different sequence
    order_a = [n for n in sorted(common, key=lambda n: ea[n].index)]
    order_b = [n for n in sorted(common, key=lambda n: eb[n].index)]
    if order_a != order_b:
        first = next(i for i, (p, q) in enumerate(zip(order_a, order_b)) if p != q)
        out.append(Difference(image, where, "/" + order_a[first], "order",
                              f"entry {first} is {order_a[first]}", f"entry {first} is {order_b[first]}"))
    if content:
        ca = read_entries(la, da["digest"], set(content))
        cb = read_entries(lb, db["digest"], set(content))
        for name in content:
            if name not in ca or name not in cb:
                out.append(Difference(image, where, "/" + name, "content", ea[name].sha256[:16], eb[name].sha256[:16]))
                continue
            for f, detail, va, vb in _content_detail(name, ca[name], cb[name]):
                out.append(Difference(image, where, "/" + name, f, va, vb, detail))
    if not out:
        # the tars are the same entry by entry: the difference is in the bytes around them
        with la.open_blob(da["digest"]) as fa, lb.open_blob(db["digest"]) as fb:
            ha, hb = fa.read(10), fb.read(10)
        if ha != hb:
            out.append(Difference(image, where, field="compressed header", a=ha.hex(), b=hb.hex()))
        else:
            out.append(Difference(image, where, field="compression",
                                  a=f"{da['digest'][:19]} ({da['size']} bytes)",
                                  b=f"{db['digest'][:19]} ({db['size']} bytes)",
                                  detail="same tar entries and headers; compressed bytes differ "
                                         "(compressor level or version, or tar padding)"))
    return out


def _json_diff(image: str, where: str, a, b, prefix: str = "") -> list[Difference]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _json_diff(image, where, a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    if _named(a) and _named(b):
        # lists of named things (provenance dependencies, SBOM packages): matched by name, not by position
        na, nb = {x["name"]: x for x in a}, {x["name"]: x for x in b}
        out = []
        for k in sorted(set(na) | set(nb)):
            out += _json_diff(image, where, na.get(k), nb.get(k), f"{prefix}[{k}]")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _json_diff(image, where, x, y, f"{prefix}[{i}]")
        return out
    return [] if a == b else [Difference(image, where, field=prefix, a=a, b=b)]


def _named(value) -> bool:
    return (isinstance(value, list) and bool(value) and all(isinstance(x, dict) and isinstance(x.get("name"), str)
                                                             for x in value)
            and len({x["name"] for x in value}) == len(value))


def compare_manifest(image: str, plat: str, la: Layout, lb: Layout, da: str, db: str) -> list[Difference]:
    ma, mb = la.read_manifest(da), lb.read_manifest(db)
    out: list[Difference] = []
    out += _json_diff(image, f"manifest [{plat}]", ma.get("annotations"), mb.get("annotations"), "annotations")
    if ma["config"]["digest"] != mb["config"]["digest"]:
        ca, cb = la.read_json(ma["config"]["digest"]), lb.read_json(mb["config"]["digest"])
        out += _json_diff(image, f"config [{plat}]", ca, cb)
    if len(ma["layers"]) != len(mb["layers"]):
        out.append(Difference(image, f"manifest [{plat}]", field="layers", a=len(ma["layers"]), b=len(mb["layers"])))
    n = min(len(ma["layers"]), len(mb["layers"]))
    for i in range(n):
        x, y = ma["layers"][i], mb["layers"][i]
        if x["digest"] != y["digest"]:
            out += _compare_layer(image, f"layer {i + 1}/{len(ma['layers'])} [{plat}]", la, lb, x, y)
    return out


def verify_blobs(src: Source, refs: dict[str, Descriptor]) -> None:
    """Every blob the compared refs reach (their referrers' too) is there and hashes to its name.

    Always, before comparing: equal digests are taken for equal content below, which holds only
    for bytes that match their digests. One streaming read of each blob, memory flat; builds
    hash far more than this while they write.
    """
    entries = [d.to_json() for d in refs.values()]
    entries += [d.to_json() for descs in src.layout.referrers().values() for d in descs]
    for digest in sorted(src.layout.reachable(entries)):
        with src.layout.open_blob(digest) as fh:
            fh.verify()


def diff_sources(a: Source, b: Source) -> list[Difference]:
    ra, rb = a.refs(), b.refs()
    verify_blobs(a, ra)
    verify_blobs(b, rb)
    if len(ra) == 1 and len(rb) == 1:
        # one image each (DIR:REF, an archive, a docker:// ref): compare them whatever their names
        name = next(iter(ra))
        ra, rb = {name: ra[name]}, {name: next(iter(rb.values()))}
    out: list[Difference] = []
    for name in sorted(set(ra) - set(rb)):
        out.append(Difference(name, "ref", field="only in A", a=ra[name].digest))
    for name in sorted(set(rb) - set(ra)):
        out.append(Difference(name, "ref", field="only in B", b=rb[name].digest))
    seen: set[tuple[str, str]] = set()
    for name in sorted(set(ra) & set(rb)):
        x, y = ra[name], rb[name]
        if x.digest == y.digest or (x.digest, y.digest) in seen:
            continue
        seen.add((x.digest, y.digest))
        image = name or a.label
        if x.media_type == INDEX_MT and y.media_type == INDEX_MT:
            ia, ib = a.layout.read_index(x.digest), b.layout.read_index(y.digest)
            out += _json_diff(image, "index", ia.get("annotations"), ib.get("annotations"), "annotations")
            pa = {platform_label(m): m for m in ia["manifests"]}
            pb = {platform_label(m): m for m in ib["manifests"]}
            for p in sorted(set(pa) ^ set(pb)):
                out.append(Difference(image, "index", field=f"platform {p}", a=p in pa, b=p in pb))
            for p in sorted(set(pa) & set(pb)):
                if pa[p]["digest"] != pb[p]["digest"] and (pa[p]["digest"], pb[p]["digest"]) not in seen:
                    seen.add((pa[p]["digest"], pb[p]["digest"]))
                    out += compare_manifest(image, p, a.layout, b.layout, pa[p]["digest"], pb[p]["digest"])
        elif x.media_type != INDEX_MT and y.media_type != INDEX_MT:
            out += compare_manifest(image, platform_label({"platform": dict(x.platform or ())}) if x.platform else "-",
                                     a.layout, b.layout, x.digest, y.digest)
        else:
            out.append(Difference(image, "ref", field="mediaType", a=x.media_type, b=y.media_type))
    return out + _compare_referrers(a, b, ra, rb)


def _same_manifests(a: Source, b: Source, ra: dict, rb: dict) -> list[tuple[str, str, str]]:
    """(image, platform, digest) of the platform manifests both sides hold byte for byte."""
    out = {}
    for name in sorted(set(ra) & set(rb)):
        x, y = ra[name], rb[name]
        if x.media_type == INDEX_MT and y.media_type == INDEX_MT:
            pa = {platform_label(m): m["digest"] for m in a.layout.read_index(x.digest)["manifests"]}
            pb = {platform_label(m): m["digest"] for m in b.layout.read_index(y.digest)["manifests"]}
            pairs = [(p, pa[p]) for p in sorted(set(pa) & set(pb)) if pa[p] == pb[p]]
        else:
            pairs = [(platform_label({"platform": dict(x.platform or ())}), x.digest)] if x.digest == y.digest else []
        for plat, d in pairs:
            out.setdefault(d, (name or a.label, plat, d))
    return sorted(out.values())


def _compare_referrers(a: Source, b: Source, ra: dict, rb: dict) -> list[Difference]:
    """SBOM and provenance of identical manifests must be identical too: they are built from the same inputs.

    Referrers of manifests that differ necessarily differ (they name the digest), so those are
    not compared; nor are sources of which one carries no referrers at all (a release archive).
    """
    refs_a, refs_b = a.layout.referrers(), b.layout.referrers()
    if not refs_a or not refs_b:
        return []
    out: list[Difference] = []
    for image, plat, digest in _same_manifests(a, b, ra, rb):
        ka = {_referrer_kind(a.layout, d): d for d in refs_a.get(digest, [])}
        kb = {_referrer_kind(b.layout, d): d for d in refs_b.get(digest, [])}
        for kind in sorted(set(ka) | set(kb)):
            where = f"referrer {kind} [{plat}]"
            if kind not in kb:
                out.append(Difference(image, where, field="only in A", a=ka[kind].digest))
            elif kind not in ka:
                out.append(Difference(image, where, field="only in B", b=kb[kind].digest))
            elif ka[kind].digest != kb[kind].digest:
                da, db = (_referrer_document(s.layout, d) for s, d in ((a, ka[kind]), (b, kb[kind])))
                found = _json_diff(image, where, da, db) if isinstance(da, dict) and isinstance(db, dict) else []
                out += found or [Difference(image, where, field="digest", a=ka[kind].digest, b=kb[kind].digest)]
    return out


def _referrer_kind(layout: Layout, desc: Descriptor) -> str:
    man = layout.read_manifest(desc.digest)
    media = (man["layers"] or [{}])[0].get("mediaType", "")
    return desc.artifact_type if media == desc.artifact_type else f"{desc.artifact_type} ({media})"


def _referrer_document(layout: Layout, desc: Descriptor):
    man = layout.read_manifest(desc.digest)
    try:
        return json.loads(layout.read_blob(man["layers"][0]["digest"]))
    except (ValueError, KeyError, IndexError, BuildError):
        return None


def diff(spec_a: str, spec_b: str, insecure: bool = False) -> list[Difference]:
    a = open_source(spec_a, insecure)
    try:
        b = open_source(spec_b, insecure)
        try:
            return diff_sources(a, b)
        finally:
            b.close()
    finally:
        a.close()


def to_json(diffs: list[Difference]) -> str:
    return json.dumps({"identical": not diffs, "differences": [
        {k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v))
         for k, v in asdict(d).items()} for d in diffs]}, indent=2, default=repr)

