"""What FreeBSD's dynamic linker reads from an ELF file, read from a stream.

PT_INTERP, and from PT_DYNAMIC: DT_NEEDED, DT_SONAME, DT_RPATH and
DT_RUNPATH. 32- and 64-bit, either byte order, standard library only.

Packages are read once, as a decompressing tar stream, so the file cannot be
seeked. The reader is fed the file's chunks in order and keeps only bounded
regions of it:

- the first ``PREFIX`` bytes: the ELF header, the program headers and, in the
  layouts lld and GNU ld produce, .dynstr (it precedes the code);
- the PT_INTERP and PT_DYNAMIC contents, captured as they stream by (the
  program headers, read first, say where they are);
- each string the dynamic section refers to, at most ``MAX_STRING`` bytes,
  and at most ``MAX_FILE_STRINGS`` bytes together.

A string that had already streamed past, outside the prefix, when the
dynamic section arrived cannot be read again from this stream. ``finish``
then returns None and ``regions`` lists every byte range the answer needs;
the caller streams the file once more into ``ElfReader(size, want=regions)``,
which captures exactly those. So memory per file stays below
PREFIX + MAX_PHDRS + MAX_INTERP + MAX_DYNAMIC + MAX_STRINGS * MAX_STRING
(4 MiB + 64 KiB + 4 KiB + 1 MiB + 1 MiB, about 6.1 MiB) whatever the file's
size, and the prefix is dropped as soon as the answer is complete.

The strings an answer keeps go through a ``StringTable`` shared by every
file of one scan: each distinct string is kept once, so three thousand files
naming the same 255 libraries hold one copy of each name, and the distinct
bytes of the whole scan are bounded (``MAX_SCAN_STRINGS``). A file or a scan
over its bound gets a ``problem`` and the table's ``refused`` says why, for
the scan to refuse the package.

Nothing here raises on a malformed file: offsets outside the file, sizes over
the caps, unterminated strings and the like give an ``ElfInfo`` whose
``problem`` says what is wrong, and the caller decides.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, NoReturn, Optional

PREFIX = 4 << 20
MAX_PHDRS = 64 << 10
MAX_INTERP = 4096
MAX_DYNAMIC = 1 << 20
MAX_STRING = 4096
MAX_STRINGS = 256
# What one file's answer may keep: real objects name a few dozen libraries and
# a run path or two, a few KB; 255 names of 4 KB each (1 MiB) is an attack.
MAX_FILE_STRINGS = 64 << 10
# The distinct dynamic strings of one scan (a package), each counted once with
# its object's overhead: a whole pkgbase set has well under 1 MB of them.
MAX_SCAN_STRINGS = 16 << 20
_STRING_OVERHEAD = 64
# Each pass learns at least one more link of header -> program headers ->
# dynamic segment -> strings, so four passes always suffice.
MAX_PASSES = 4

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
ET_EXEC, ET_DYN = 2, 3
PN_XNUM = 0xFFFF

# (ehdr size, ehdr format after e_ident, phdr format, dyn format) per class
_LAYOUT = {
    1: (52, "HHIIIIIHHHHHH", "IIIIIIII", "iI"),
    2: (64, "HHIQQQIHHHHHH", "IIQQQQQQ", "qQ"),
}

# FreeBSD arch -> (ELF class, e_machine): what a package for that arch must contain.
MACHINE = {"amd64": (2, 62), "aarch64": (2, 183), "riscv64": (2, 243), "powerpc64le": (2, 21),
           "i386": (1, 3), "armv7": (1, 40)}


@dataclass(frozen=True)
class ElfInfo:
    elf_class: int                 # 32 or 64
    endian: str                    # little | big
    type: int                      # e_type: ET_EXEC, ET_DYN, ...
    machine: int
    interp: Optional[str] = None
    needed: tuple[str, ...] = ()
    soname: Optional[str] = None
    rpath: tuple[str, ...] = ()    # every DT_RPATH string, in file order
    runpath: tuple[str, ...] = ()
    dynamic: bool = False          # has a PT_DYNAMIC segment
    problem: Optional[str] = None  # why the dynamic information is incomplete

    @property
    def linked_dynamically(self) -> bool:
        return self.interp is not None or self.dynamic

    @property
    def shared_object(self) -> bool:
        """A library: position-independent and not started by the kernel through an interpreter."""
        return self.type == ET_DYN and self.interp is None

    def search_path(self) -> list[str]:
        """The object's own library directories as rtld takes them (unsubstituted).

        rtld keeps the last DT_RUNPATH, and looks at DT_RPATH only when there
        is no DT_RUNPATH (digest_dynamic2).
        """
        chosen = self.runpath or self.rpath
        return [d for d in chosen[-1].split(":") if d] if chosen else []

    def to_json(self) -> dict:
        out: dict = {"class": self.elf_class, "endian": self.endian, "type": self.type, "machine": self.machine}
        for key in ("interp", "soname", "problem"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("needed", "rpath", "runpath"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        return out


class _Malformed(Exception):
    pass


class StringTable:
    """The dynamic strings kept by every ELF file of one scan, each distinct string once.

    Not thread-safe: one scan, one table. Once over a bound it keeps nothing
    more and ``refused`` says why; the readers then answer with that problem.
    """

    def __init__(self, limit: int = MAX_SCAN_STRINGS):
        self.limit = limit
        self.size = 0
        self.refused: Optional[str] = None
        self._kept: dict[str, str] = {}

    def keep(self, raw: list[Optional[bytes]]) -> list[Optional[str]]:
        """The strings of one file's answer (None stays None), shared with every earlier file's copy."""
        total = sum(len(b) for b in raw if b is not None)
        if total > MAX_FILE_STRINGS:
            self._refuse(f"its dynamic section names {total} bytes of strings, over the limit of "
                                f"{MAX_FILE_STRINGS} bytes for one ELF file")
        out: list[Optional[str]] = []
        for b in raw:
            if b is None:
                out.append(None)
                continue
            s = b.decode("utf-8", "surrogateescape")
            kept = self._kept.get(s)
            if kept is None:
                self.size += len(b) + _STRING_OVERHEAD
                if self.size > self.limit:
                    self._refuse(f"its ELF files name over {self.limit} bytes of distinct dynamic strings "
                                        "(DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH, PT_INTERP)")
                kept = self._kept[s] = s
            out.append(kept)
        return out

    def _refuse(self, why: str) -> NoReturn:
        if self.refused is None:
            self.refused = why
        raise _Malformed(why)


class _Wait(Exception):
    """A region is not complete yet (or was missed): try again with more of the stream."""


class ElfReader:
    """Feed a file's bytes in order with ``feed``; ``finish`` gives the ElfInfo."""

    def __init__(self, size: int, want: Iterable[tuple[int, int]] = (), prefix: Optional[int] = None,
                 strings: Optional[StringTable] = None):
        self.size = size
        self.strings = strings if strings is not None else StringTable()
        self.pos = 0
        self.limit = max(0, min(PREFIX if prefix is None else prefix, size))
        self.head = bytearray()
        self.captured: dict[tuple[int, int], bytearray] = {}
        # every region the answer needed, in order (a dict: 255 strings must not cost 255 scans of a list)
        self.used: dict[tuple[int, int], None] = {}
        self.missed: dict[tuple[int, int], None] = {}
        self.info: Optional[ElfInfo] = None
        self._chunk_start = 0
        self._chunk = b""
        for off, n in want:
            if 0 <= off and 0 <= n and off + n <= size:
                self.captured[(off, n)] = bytearray()
        # memoised parse state
        self._hdr: Optional[tuple] = None
        self._segs: Optional[tuple] = None
        self._dyn: Optional[tuple] = None

    # -- stream side -----------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        start = self.pos
        self.pos += len(chunk)
        if self.info is not None:
            return
        if len(self.head) < self.limit:
            self.head += chunk[:self.limit - len(self.head)]
        self._chunk_start, self._chunk = start, chunk
        for key, buf in self.captured.items():
            self._take(key, buf)
        self._run()
        self._chunk = b""

    def finish(self) -> Optional[ElfInfo]:
        """The result, or None when a second pass with ``want=self.regions`` is needed."""
        if self.info is None:
            # Nothing more will stream by: a region still needed now was missed.
            self._chunk_start, self._chunk = self.pos, b""
            self._run()
        if self.info is not None:
            return self.info
        if self.missed:
            return None
        return self._fail(f"file ends after {self.pos} of {self.size} bytes, before its dynamic information")

    def give_up(self) -> ElfInfo:
        return self._fail(f"dynamic information not captured in {MAX_PASSES} passes over the stream")

    @property
    def regions(self) -> list[tuple[int, int]]:
        return list(dict.fromkeys([*self.used, *self.missed]))

    def _take(self, key: tuple[int, int], buf: bytearray) -> None:
        off, n = key
        nxt = off + len(buf)
        end = self._chunk_start + len(self._chunk)
        if len(buf) < n and self._chunk_start <= nxt < end:
            buf += self._chunk[nxt - self._chunk_start:min(end, off + n) - self._chunk_start]

    def _region(self, off: int, n: int, what: str) -> bytes:
        if off < 0 or n < 0 or off + n > self.size:
            raise _Malformed(f"{what} at offset {off:#x} (+{n}) lies outside the file ({self.size} bytes)")
        key = (off, n)
        if key in self.missed:
            raise _Wait()
        self.used.setdefault(key)
        if off + n <= len(self.head):
            return bytes(self.head[off:off + n])
        buf = self.captured.get(key)
        if buf is None:
            # Start from what the prefix holds; the rest must still be ahead in the stream.
            buf = bytearray(self.head[off:off + n]) if off < len(self.head) else bytearray()
            if off + len(buf) < self._chunk_start:
                self.missed.setdefault(key)
                raise _Wait()
            self.captured[key] = buf
            self._take(key, buf)
        if len(buf) < n:
            raise _Wait()
        return bytes(buf)

    # -- parse side ------------------------------------------------------

    def _fail(self, why: str) -> ElfInfo:
        if self._hdr is None:
            self.info = ElfInfo(0, "", 0, 0, problem=why)
        else:
            klass, end, etype, machine = self._hdr[:4]
            dynamic = self._segs is not None and self._segs[2] is not None
            self.info = ElfInfo(32 * klass, "little" if end == "<" else "big", etype, machine, dynamic=dynamic,
                                problem=why)
        self.head = bytearray()
        self.captured.clear()
        return self.info

    def _run(self) -> None:
        try:
            self.info = self._parse()
        except _Wait:
            pass
        except _Malformed as exc:
            self._fail(str(exc))
        if self.info is not None:
            self.head = bytearray()
            self.captured.clear()

    def _header(self) -> tuple:
        if self._hdr is None:
            ident = self._region(0, 16, "ELF identification")
            if ident[:4] != b"\x7fELF":
                raise _Malformed("not an ELF file")
            klass, data = ident[4], ident[5]
            if klass not in _LAYOUT or data not in (1, 2):
                raise _Malformed(f"unknown ELF class {klass} or data encoding {data}")
            end = "<" if data == 1 else ">"
            size, fmt, _, _ = _LAYOUT[klass]
            f = struct.unpack(end + fmt, self._region(0, size, "ELF header")[16:])
            etype, machine, phoff, phentsize, phnum = f[0], f[1], f[4], f[8], f[9]
            self._hdr = (klass, end, etype, machine, phoff, phentsize, phnum)
        return self._hdr

    def _segments(self) -> tuple:
        """(loads, interp, dynamic): PT_LOAD (offset, vaddr, filesz) and the (offset, filesz) of the others."""
        if self._segs is None:
            klass, end, _, _, phoff, phentsize, phnum = self._header()
            loads: list[tuple[int, int, int]] = []
            interp = dynamic = None
            if phnum:
                if phnum == PN_XNUM:
                    raise _Malformed("program header count in section 0 (PN_XNUM) is not supported")
                fmt = end + _LAYOUT[klass][2]
                if phentsize < struct.calcsize(fmt):
                    raise _Malformed(f"program header entry size {phentsize} is too small")
                if phnum * phentsize > MAX_PHDRS:
                    raise _Malformed(f"{phnum} program headers of {phentsize} bytes exceed {MAX_PHDRS} bytes")
                table = self._region(phoff, phnum * phentsize, "program header table")
                for i in range(phnum):
                    raw = struct.unpack_from(fmt, table, i * phentsize)
                    if klass == 1:
                        ptype, offset, vaddr, _, filesz = raw[:5]
                    else:
                        ptype, _, offset, vaddr, _, filesz = raw[:6]
                    if ptype == PT_LOAD:
                        loads.append((offset, vaddr, filesz))
                    elif ptype == PT_INTERP and interp is None:
                        interp = (offset, filesz)
                    elif ptype == PT_DYNAMIC and dynamic is None:
                        dynamic = (offset, filesz)
            self._segs = (tuple(loads), interp, dynamic)
        return self._segs

    def _dynamic(self) -> tuple:
        """(strtab vaddr or None, strsz or None, [(tag, string offset)]) from PT_DYNAMIC."""
        if self._dyn is None:
            klass, end = self._header()[:2]
            offset, filesz = self._segments()[2]
            fmt = end + _LAYOUT[klass][3]
            entsize = struct.calcsize(fmt)
            if filesz > MAX_DYNAMIC:
                raise _Malformed(f"dynamic segment of {filesz} bytes exceeds {MAX_DYNAMIC} bytes")
            raw = self._region(offset, filesz - filesz % entsize, "dynamic segment")
            strtab = strsz = None
            refs: list[tuple[int, int]] = []
            for tag, val in struct.iter_unpack(fmt, raw):
                if tag == DT_NULL:
                    break
                if tag == DT_STRTAB:
                    strtab = val
                elif tag == DT_STRSZ:
                    strsz = val
                elif tag in (DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH):
                    refs.append((tag, val))
                    if len(refs) > MAX_STRINGS:
                        raise _Malformed(f"more than {MAX_STRINGS} strings in the dynamic section")
            self._dyn = (strtab, strsz, refs)
        return self._dyn

    def _string(self, where: int, limit: int, what: str) -> bytes:
        raw = self._region(where, limit, what)
        nul = raw.find(b"\0")
        if nul < 0:
            raise _Malformed(f"{what} at offset {where:#x} is not NUL-terminated within {limit} bytes")
        return raw[:nul]

    def _strings(self, loads: tuple, strtab: Optional[int], strsz: Optional[int],
                 refs: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        """(tag, string) for each reference, in order; raises _Wait once every missing one is asked for."""
        if not refs:
            return []
        if strtab is None:
            raise _Malformed("dynamic section names strings but has no DT_STRTAB")
        # DT_STRTAB is an address: the PT_LOAD segment that maps it gives the file offset.
        table = next((o + strtab - v for o, v, n in loads if v <= strtab < v + n), None)
        if table is None:
            raise _Malformed(f"DT_STRTAB {strtab:#x} is not in any loaded segment")
        span = strsz if strsz is not None else self.size - table
        if table + span > self.size:
            raise _Malformed(f"string table at {table:#x} (+{span}) lies outside the file ({self.size} bytes)")
        got: dict[int, bytes] = {}    # a string named by many entries is read once
        waiting = False
        for _, val in refs:
            if val >= span:
                raise _Malformed(f"string offset {val:#x} is beyond the string table ({span} bytes)")
            if val not in got:
                try:
                    got[val] = self._string(table + val, min(MAX_STRING, span - val), "dynamic string")
                except _Wait:
                    waiting = True
        if waiting:
            raise _Wait()
        return [(tag, got[val]) for tag, val in refs]

    def _parse(self) -> ElfInfo:
        klass, end, etype, machine = self._header()[:4]
        loads, interp_seg, dyn_seg = self._segments()
        base = dict(elf_class=32 * klass, endian="little" if end == "<" else "big", type=etype, machine=machine)
        # Every region still to come is asked for before giving up on this
        # attempt, so that one more pass over the stream can capture them all.
        waiting = False
        interp = None
        if interp_seg is not None:
            off, n = interp_seg
            if n == 0 or n > MAX_INTERP:
                raise _Malformed(f"interpreter path of {n} bytes (at most {MAX_INTERP})")
            try:
                interp = self._string(off, n, "interpreter path")
            except _Wait:
                waiting = True
        refs: list[tuple[int, bytes]] = []
        if dyn_seg is not None:
            try:
                refs = self._strings(loads, *self._dynamic())
            except _Wait:
                waiting = True
        if waiting:
            raise _Wait()
        kept = self.strings.keep([interp] + [raw for _, raw in refs])
        strings: dict[int, list[str]] = {DT_NEEDED: [], DT_SONAME: [], DT_RPATH: [], DT_RUNPATH: []}
        for (tag, _), s in zip(refs, kept[1:]):
            strings[tag].append(s)
        if dyn_seg is None:
            return ElfInfo(**base, interp=kept[0])
        return ElfInfo(**base, interp=kept[0], needed=tuple(strings[DT_NEEDED]),
                       soname=strings[DT_SONAME][-1] if strings[DT_SONAME] else None,
                       rpath=tuple(strings[DT_RPATH]), runpath=tuple(strings[DT_RUNPATH]), dynamic=True)


def is_elf(head: bytes) -> bool:
    return head[:4] == b"\x7fELF"


def parse(data: bytes, prefix: Optional[int] = None, chunk: int = 1 << 16,
          strings: Optional[StringTable] = None) -> Optional[ElfInfo]:
    """The ElfInfo of a file in memory (None if it is not ELF).

    With a ``prefix`` smaller than the file it is read the way a package
    stream is: in chunks, again with the regions missed, at most MAX_PASSES times.
    """
    if not is_elf(data):
        return None
    want: list[tuple[int, int]] = []
    for _ in range(MAX_PASSES):
        reader = ElfReader(len(data), want, len(data) if prefix is None else prefix, strings)
        for i in range(0, len(data), chunk):
            reader.feed(data[i:i + chunk])
        info = reader.finish()
        if info is not None:
            return info
        want = reader.regions
    return reader.give_up()
