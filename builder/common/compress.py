"""Compression in one place: sniffing what a stream is, and the compressors output is written with.

Readers detect the format by content (pkg does the same), never by file name.
Compressors share one shape: ``write`` bytes, then ``finish`` once.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import collections
import queue
import signal
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO, Optional, Union

import deflate
import zstandard

from builder.errors import BuildError

MAGICS = (
    (b"\x28\xb5\x2f\xfd", "tzst"),
    (b"\xfd7zXZ\x00", "txz"),
    (b"\x1f\x8b", "tgz"),
    (b"BZh", "tbz"),
)


def sniff(head: bytes) -> str:
    """The packing format of an archive from its first bytes."""
    for magic, name in MAGICS:
        if head.startswith(magic):
            return name
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise BuildError("not a pkg archive: unknown compression (expected zstd, xz, gzip, bzip2 or tar)")


class _Peek(io.RawIOBase):
    """Give back bytes read for sniffing, then continue with the stream."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[:len(data)] = data
        return len(data)


class Limit:
    """A byte limit that can be tightened once the manifest's flatsize is known."""

    def __init__(self, value: Optional[int]):
        self.value = value


class Bounded(io.RawIOBase):
    """Refuse to yield more than ``limit`` decompressed bytes (archive bombs)."""

    def __init__(self, inner: BinaryIO, limit: Union[int, Limit, None], what: str):
        self._inner = inner
        # a Limit may be tightened while the stream is read (pkgfile: once the manifest is known)
        self._limit = limit if isinstance(limit, Limit) else Limit(limit)
        self._seen = 0
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._inner.read(len(b))
        self._seen += len(data)
        limit = self._limit.value
        if limit is not None and self._seen > limit:
            raise BuildError(f"{self._what}: decompresses to more than {limit} bytes; refusing (archive bomb?)")
        b[:len(data)] = data
        return len(data)


def decompressing(raw: BinaryIO, what: str, limit=None) -> tuple[BinaryIO, str]:
    head = raw.read(512)
    fmt = sniff(head)
    src = io.BufferedReader(_Peek(head, raw), 1 << 16)
    if fmt == "tzst":
        stream: BinaryIO = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
    elif fmt == "txz":
        stream = lzma.LZMAFile(src)
    elif fmt == "tgz":
        stream = gzip.GzipFile(fileobj=src, mode="rb")
    elif fmt == "tbz":
        stream = bz2.BZ2File(src)
    else:
        stream = src
    return io.BufferedReader(Bounded(stream, limit, what), 1 << 16), fmt


# Layers are cut into blocks at fixed offsets of the uncompressed stream and each block is
# compressed on its own: a gzip member (RFC 1952 allows a stream of members) or a zstd frame.
# Blocks compress in parallel, yet the bytes depend only on the data, the level and BLOCK,
# never on the number of workers or on timing.
BLOCK = 4 << 20
GZIP_HEADER = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\x03"   # no name, mtime 0, OS Unix
MAX_IN_FLIGHT = 16        # blocks queued at once, whatever the core count: memory stays flat


def gzip_member(data: bytes, level: int) -> bytes:
    # libdeflate from the pinned `deflate` wheel, never the zlib Python links: zlib and
    # zlib-ng give different bytes at the same level. libdeflate's parsing has no
    # CPU-dispatched variants (only its checksums do), so x86-64 and arm64 agree.
    body = deflate.deflate_compress(data, level)
    return GZIP_HEADER + body + struct.pack("<II", deflate.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


def zstd_frame(data: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True).compress(data)


CODECS = {"gzip": gzip_member, "zstd": zstd_frame}


def versions() -> dict[str, str]:
    """The compressors' versions, recorded with each image (they shape its bytes)."""
    return {"gzip": f"libdeflate via deflate {deflate.__version__}",
            "zstd": f"libzstd {zstandard.ZSTD_VERSION[0]}.{zstandard.ZSTD_VERSION[1]}.{zstandard.ZSTD_VERSION[2]}"
                    f" via zstandard {zstandard.__version__}"}


class Workers:
    """Compression processes shared by every layer of a build.

    The pinned libdeflate binding holds the GIL while it compresses, so
    threads cannot compress in parallel; processes can. Each process runs
    the same ``CODECS`` function on the blocks it is handed over a pipe, so
    the bytes are the ones an in-process call would give. Processes start on
    the first block handed over (a build whose layers all come from the cache
    starts none) and are fed by one thread each, which waits in the pipe's
    system calls with the GIL released.
    """

    def __init__(self, count: int):
        # never more processes than blocks a layer keeps in flight, however many cores the host has
        self.count = max(1, min(count, MAX_IN_FLIGHT // 2))
        self.jobs: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        self.closed = False

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, codec: str, level: int, data: bytes) -> Future:
        fut: Future = Future()
        with self.lock:
            if self.closed:
                raise BuildError("compression workers already stopped")
            if not self.procs:
                self._start()
            self.jobs.put((fut, codec, level, data))
        return fut

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parent.parent.parent)
        # The same interpreter and the same import path: the worker loads the very modules
        # (the pinned deflate and zstandard) this process compresses with.
        path = [root] + [p for p in sys.path if p != root]
        # -I -S: no environment, no site hooks; the path below is the whole import path
        cmd = [sys.executable, "-I", "-S", "-c",
               f"import sys; sys.path[:] = {path!r}; from builder.common.compress import serve; serve()"]
        for _ in range(self.count):
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            t = threading.Thread(target=self._feed, args=(proc,), daemon=True, name="compress-feed")
            self.procs.append(proc)
            self.threads.append(t)
            t.start()

    def _feed(self, proc: subprocess.Popen) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            fut, codec, level, data = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                proc.stdin.write(_JOB.pack(CODEC_IDS[codec], level, len(data)))
                proc.stdin.write(data)
                proc.stdin.flush()
                head = proc.stdout.read(_OUT.size)
                if len(head) != _OUT.size:
                    raise BuildError(f"compression worker exited (code {proc.poll()}) while compressing a block")
                (n,) = _OUT.unpack(head)
                if n > len(data) + (len(data) >> 3) + (1 << 16):   # beyond any codec's bound: not our worker
                    raise BuildError(f"compression worker answered {n} bytes for a {len(data)}-byte block")
                out = proc.stdout.read(n)
                if len(out) != n:
                    raise BuildError(f"compression worker exited (code {proc.poll()}) half-way through a block")
                fut.set_result(out)
            except BaseException as exc:   # whatever it is, the layer waiting on this block must hear of it
                fut.set_exception(exc if isinstance(exc, BuildError)
                                  else BuildError(f"compression worker failed: {type(exc).__name__}: {exc}"))

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        # queued blocks of a failed layer are never compressed
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass   # a worker that died with input unread: its failure was reported with the block
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


_JOB = struct.Struct("<BBQ")    # codec, level, block length
_OUT = struct.Struct("<Q")      # compressed length
CODEC_IDS = {"gzip": 1, "zstd": 2}


def serve(stdin: Optional[BinaryIO] = None, stdout: Optional[BinaryIO] = None) -> None:
    """A compression worker's loop: blocks in, compressed blocks out, until end of input."""
    # Ctrl-C reaches the whole process group: the builder handles it, and closing our input ends us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    fns = {i: CODECS[c] for c, i in CODEC_IDS.items()}
    while head := stdin.read(_JOB.size):
        codec, level, n = _JOB.unpack(head)
        data = stdin.read(n)
        out = fns[codec](data, level)
        stdout.write(_OUT.pack(len(out)))
        stdout.write(out)
        stdout.flush()


class BlockCompressor(io.RawIOBase):
    """``write`` the uncompressed stream, ``finish`` once; compressed blocks reach ``sink`` in order.

    Blocks go to ``workers`` when there are any, except a layer's only block,
    which is compressed here: a small layer starts no process.
    """

    def __init__(self, sink: BinaryIO, codec: str, level: int, workers: Optional[Workers] = None,
                 block: int = BLOCK):
        self.sink, self.codec, self.level, self.block = sink, codec, level, block
        self.fn = CODECS[codec]
        self.buf: list[bytes] = []
        self.buffered = 0
        self.queue: collections.deque = collections.deque()
        self.blocks = 0
        self.workers = workers
        self.in_flight = min(MAX_IN_FLIGHT, 2 * workers.count) if workers else 1

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = len(b)
        self.buf.append(bytes(b))
        self.buffered += n
        if self.buffered >= self.block:
            data = b"".join(self.buf)
            cut = 0
            while len(data) - cut >= self.block:
                self._submit(data[cut:cut + self.block])
                cut += self.block
            self.buf = [data[cut:]] if cut < len(data) else []
            self.buffered = len(data) - cut
        return n

    def _submit(self, data: bytes, only: bool = False) -> None:
        self.blocks += 1
        if self.workers is None or only:
            self.sink.write(self.fn(data, self.level))
            return
        self.queue.append(self.workers.submit(self.codec, self.level, data))
        while len(self.queue) >= self.in_flight:
            self.sink.write(self.queue.popleft().result())

    def finish(self) -> None:
        if self.buffered or not self.blocks:
            self._submit(b"".join(self.buf), only=not self.blocks)
            self.buf, self.buffered = [], 0
        while self.queue:
            self.sink.write(self.queue.popleft().result())

    def close(self) -> None:
        """Drop this layer's queued blocks (when it failed half-way and ``finish`` never ran)."""
        while self.queue:
            self.queue.popleft().cancel()


class Xz:
    def __init__(self, sink, preset: int):
        self.sink = sink
        self.c = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)

    def write(self, b) -> int:
        self.sink.write(self.c.compress(bytes(b)))
        return len(b)

    def finish(self) -> None:
        self.sink.write(self.c.flush())
