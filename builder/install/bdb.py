"""Berkeley DB 1.x hash files, as FreeBSD's libc (lib/libc/db/hash) reads and writes them.

The header is big-endian; pages use the byte order in ``lorder``. A bucket
page is a table of u16 offsets (n, key/data offsets..., free, end) with keys
and data packed downwards from the end of the page.

The writer lays the table out as libc's dbopen(O_CREAT) + put() sequence does
(initial buckets from nelem/ffactor, pairs in insertion order, first overflow
bitmap page after the buckets), so for tables that need neither bucket splits
nor overflow pages -- pwd.db, spwd.db, login.conf.db -- the bytes equal
FreeBSD's. Larger tables get as many initial buckets as it takes to avoid
overflow pages: a different layout of the same records, which libc reads.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Optional

HASHMAGIC = 0x061561
HASHVERSION = 2
CHARKEY = b"%$sniglet^&\0"  # sizeof(CHARKEY): the NUL is hashed too
NCACHED = 32
BIG_ENDIAN = 4321
LITTLE_ENDIAN = 1234
OVFLPAGE, PARTIAL_KEY, FULL_KEY, FULL_KEY_DATA, REAL_KEY = 0, 1, 2, 3, 4
SPLITSHIFT = 11
HEADER = struct.Struct(">iiIiiiiiiiIIIIiiI" + "i" * NCACHED + "H" * NCACHED)


class BDBError(ValueError):
    pass


def default_hash(key: bytes) -> int:
    """libc's __default_hash (hash4): h = h * 33 + c over the bytes."""
    h = 0
    for c in key:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


def log2_ceil(n: int) -> int:
    i = 0
    while (1 << i) < n:
        i += 1
    return i


@dataclass(frozen=True)
class HashInfo:
    """dbopen's HASHINFO: the parameters each FreeBSD tool passes."""

    bsize: int = 4096
    ffactor: int = 0          # 0: libc's default (65536)
    nelem: int = 1
    lorder: int = BIG_ENDIAN


PWD_INFO = HashInfo(bsize=4096, ffactor=32, nelem=256, lorder=BIG_ENDIAN)          # pwd_mkdb
CAP_INFO = HashInfo(bsize=4096, ffactor=0, nelem=1, lorder=LITTLE_ENDIAN)            # cap_mkdb -l
SERVICES_INFO = HashInfo(bsize=256, ffactor=4, nelem=32768, lorder=LITTLE_ENDIAN)    # services_mkdb -l


@dataclass
class Header:
    magic: int
    version: int
    lorder: int
    bsize: int
    bshift: int
    dsize: int
    ssize: int
    sshift: int
    ovfl_point: int
    last_freed: int
    max_bucket: int
    high_mask: int
    low_mask: int
    ffactor: int
    nkeys: int
    hdrpages: int
    h_charkey: int
    spares: list
    bitmaps: list

    def pack(self) -> bytes:
        return HEADER.pack(self.magic, self.version, self.lorder, self.bsize, self.bshift, self.dsize, self.ssize,
                           self.sshift, self.ovfl_point, self.last_freed, self.max_bucket, self.high_mask,
                           self.low_mask, self.ffactor, self.nkeys, self.hdrpages, self.h_charkey,
                           *self.spares, *self.bitmaps)

    @classmethod
    def unpack(cls, raw: bytes) -> "Header":
        v = HEADER.unpack_from(raw)
        return cls(*v[:17], list(v[17:17 + NCACHED]), list(v[17 + NCACHED:]))

    def bucket_page(self, b: int) -> int:
        return b + self.hdrpages + (self.spares[log2_ceil(b + 1) - 1] if b else 0)

    def oaddr_page(self, oaddr: int) -> int:
        split, page = oaddr >> SPLITSHIFT, oaddr & 0x7FF
        return self.bucket_page((1 << split) - 1) + page

# --- reading -------------------------------------------------------------------------------------

def read(data: bytes) -> dict[bytes, bytes]:
    """Every key/data pair of a hash file (follows overflow pages and big pairs)."""
    if len(data) < HEADER.size:
        raise BDBError("file too short for a hash header")
    hdr = Header.unpack(data)
    if hdr.magic != HASHMAGIC or hdr.version not in (1, 2):
        raise BDBError(f"not a Berkeley DB hash file (magic {hdr.magic:#x}, version {hdr.version})")
    if hdr.h_charkey != default_hash(CHARKEY):
        raise BDBError("hash function check (h_charkey) does not match libc's default hash")
    end = "<" if hdr.lorder == LITTLE_ENDIAN else ">"
    bsize = hdr.bsize

    def page(pno: int) -> bytes:
        off = pno * bsize
        raw = data[off:off + bsize]
        return raw + bytes(bsize - len(raw))

    def u16s(p: bytes, count: int) -> list[int]:
        return list(struct.unpack_from(f"{end}{count}H", p))

    out: dict[bytes, bytes] = {}
    for b in range(hdr.max_bucket + 1):
        pno = hdr.bucket_page(b)
        seen = set()
        while pno is not None and pno not in seen:
            seen.add(pno)
            p = page(pno)
            n = u16s(p, 1)[0]
            if n == 0:
                break
            ent = u16s(p, n + 3)
            nxt = None
            i = 1
            prev_end = bsize
            while i < n:
                a, d = ent[i], ent[i + 1]
                if d >= REAL_KEY:
                    out[p[a:prev_end]] = p[d:a]
                    prev_end = d
                    i += 2
                elif d == OVFLPAGE:
                    nxt = hdr.oaddr_page(a)
                    i += 2
                else:
                    key, val, nxt = _read_big(hdr, page, u16s, pno)
                    out[key] = val
                    break
            pno = nxt
    return out


def _read_big(hdr: Header, page, u16s, pno: int) -> tuple[bytes, bytes, Optional[int]]:
    """A pair too big for one page: key then data spread over an overflow chain."""
    key = b""
    val = b""
    in_data = False
    bsize = hdr.bsize
    while True:
        p = page(pno)
        n = u16s(p, 1)[0]
        ent = u16s(p, n + 3)
        off, kind = ent[1], ent[2]
        nxt = hdr.oaddr_page(ent[3]) if n > 2 and ent[3] else None
        if kind == PARTIAL_KEY:
            key += p[off:bsize]
        elif kind == FULL_KEY:
            if not in_data and not key:
                key = p[off:bsize]
                in_data = True
            elif not in_data:
                key += p[off:bsize]
                in_data = True
            else:
                val += p[off:bsize]
        elif kind == FULL_KEY_DATA:
            if not in_data:
                dat = ent[4] if n > 3 else off
                key += p[off:bsize]
                key, val = (key, p[dat:off]) if n > 3 else (key, b"")
                in_data = True
            else:
                val += p[off:bsize]
                return key, val, None if n <= 2 else nxt
        if nxt is None:
            return key, val, None
        pno = nxt


# --- writing -------------------------------------------------------------------------------------

def write(pairs: Iterable[tuple[bytes, bytes]], info: HashInfo) -> bytes:
    """A hash file holding pairs in insertion order; later duplicates are dropped (R_NOOVERWRITE)."""
    items: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for k, v in pairs:
        if k not in seen:
            seen.add(k)
            items.append((k, v))
    bsize = info.bsize
    ffactor = info.ffactor or 65536
    for k, v in items:
        if 4 + len(k) + len(v) + 4 > bsize - 6:
            raise BDBError(f"pair too large for {bsize}-byte pages (key {k[:20]!r}); big pairs are not written")
    nelem = max(info.nelem, 1)
    l2 = log2_ceil(max((nelem - 1) // ffactor + 1, 2))
    while True:
        pages = _layout(items, l2, bsize, ffactor)
        if pages is not None:
            break
        l2 += 1  # more initial buckets until no bucket needs an overflow page
    nbuckets = 1 << l2
    spares = [0] * NCACHED
    spares[l2] = spares[l2 + 1] = l2 + 1
    hdr = Header(HASHMAGIC, HASHVERSION, info.lorder, bsize, log2_ceil(bsize), 256, 256, 8, l2, 2,
                 nbuckets - 1, (nbuckets << 1) - 1, nbuckets - 1, ffactor, len(items),
                 ((max(HEADER.size, 512) - 1) >> log2_ceil(bsize)) + 1, default_hash(CHARKEY), spares,
                 [0] * NCACHED)
    hdr.bitmaps[0] = (l2 << SPLITSHIFT) | 1
    end = "<" if info.lorder == LITTLE_ENDIAN else ">"
    header_page = hdr.pack()
    out = bytearray(header_page + bytes(hdr.hdrpages * bsize - len(header_page)))
    for b in range(nbuckets):
        out += _page_bytes(pages[b], bsize, end)
    # First overflow bitmap page: bits for the pages allocated so far set, the rest free.
    nbits = l2 + 1
    clearbytes = (nbits + 31) >> 3
    bitmap = bytearray(bytes(clearbytes) + b"\xff" * (bsize - clearbytes))
    words = list(struct.unpack_from(f"{end}{bsize // 4}I", bitmap))
    clearints = ((nbits - 1) >> 5) + 1
    words[clearints - 1] = (0xFFFFFFFF << (nbits % 32)) & 0xFFFFFFFF
    words[0] |= 1
    out += struct.pack(f"{end}{bsize // 4}I", *words)
    return bytes(out)


def _layout(items, l2: int, bsize: int, ffactor: int) -> Optional[list[list[tuple[bytes, bytes]]]]:
    nb = 1 << l2
    high, low = (nb << 1) - 1, nb - 1
    if len(items) // nb > ffactor:
        return None  # libc would have split buckets while inserting
    buckets: list[list[tuple[bytes, bytes]]] = [[] for _ in range(nb)]
    free = [bsize - 6] * nb
    for k, v in items:
        h = default_hash(k) & high
        b = h & low if h > low else h
        need = 4 + len(k) + len(v)
        if need + 4 > free[b]:   # PAIRFITS keeps room for an overflow pointer
            return None
        free[b] -= need
        buckets[b].append((k, v))
    return buckets


def _page_bytes(pairs: list[tuple[bytes, bytes]], bsize: int, end: str) -> bytes:
    if not pairs:
        return bytes(bsize)  # never written by libc: a hole, read back as zeros
    page = bytearray(bsize)
    offsets = []
    off = bsize
    for k, v in pairs:
        off -= len(k)
        page[off:off + len(k)] = k
        offsets.append(off)
        off -= len(v)
        page[off:off + len(v)] = v
        offsets.append(off)
    n = len(offsets)
    table = [n] + offsets + [off - (n + 3) * 2, off]
    struct.pack_into(f"{end}{len(table)}H", page, 0, *table)
    return bytes(page)
