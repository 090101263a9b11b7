"""HTTP for every network read and write: one session setup, one retry policy.

Repository downloads (``Transport``) and the registry client both go through
``Http.send``: bounded retries with exponential backoff on connection errors,
5xx and 429, honouring ``Retry-After`` (seconds or HTTP-date) but never
sleeping longer than ``RetryPolicy.max_wait``. ``Transport`` adds Range resume
of interrupted bodies on top. ``file://`` URLs are read directly; ``pkg+``
URLs mean SRV-record mirror selection to pkg, which we treat as the plain
scheme (pkg.FreeBSD.org answers on its A records too).

A server is not trusted to be reasonable: every download and every reply read
whole (``Http.fetch``) has a byte limit (refused as soon as it is passed, or when
Content-Length announces more) and a total deadline over all its attempts, on top
of the per-read timeout (which a server trickling one byte a second never trips).
The deadline is kept by a watchdog (``watching``) that shuts the socket of the
request in flight when it passes, so a trickle of headers, a body or a silent
peer all end then, not only a body checked between reads.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator, Mapping, Optional

if TYPE_CHECKING:
    import requests

from builder import __version__
from builder.errors import BuildError

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class NotFound(BuildError):
    pass


def retry_after(value: Optional[str], now: Callable[[], float] = time.time) -> Optional[float]:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        import email.utils   # here: only a throttled registry sends a date (and the import costs every run)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        secs = when.timestamp() - now()
    if math.isnan(secs):
        return None
    return max(0.0, secs)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 4
    backoff: float = 0.25          # first wait; doubles per attempt
    max_wait: float = 30.0         # cap for backoff and for any Retry-After a server asks for
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def wait(self, attempt: int, retry_after_header: Optional[str] = None, budget: float = math.inf) -> None:
        """Sleep before retry number ``attempt`` (1-based), never past ``budget`` seconds."""
        asked = retry_after(retry_after_header)
        delay = asked if asked is not None else self.backoff * (2 ** (attempt - 1))
        self.sleep(max(0.0, min(delay, self.max_wait, budget)))


@dataclass
class Stats:
    requests: int = 0
    retries: int = 0
    resumed: int = 0
    bytes: int = 0


class TooLarge(BuildError):
    pass


class TooSlow(BuildError):
    pass


CHUNK = 1 << 16
PACKAGE_DEADLINE = 30 * 60.0     # seconds for one package, every attempt included
CATALOGUE_DEADLINE = 2 * 60.0    # seconds for meta.conf or one catalogue archive


class Budget:
    """The byte limit and the deadline of one operation (a download, a request and its reply),
    checked as data arrives; ``task`` names the operation in a refusal."""

    def __init__(self, what: str, limit: Optional[int], deadline: Optional[float], task: str = "download"):
        self.what, self.limit, self.deadline, self.task = what, limit, deadline, task
        self.start = time.monotonic()

    def part(self, what: str, limit: Optional[int]) -> "Budget":
        """A step of this operation with its own name and byte limit, sharing its deadline."""
        step = Budget(what, limit, self.deadline, self.task)
        step.start = self.start
        return step

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - self.elapsed()

    def too_slow(self, received: int) -> TooSlow:
        return TooSlow(f"{self.what}: no complete {self.task} within the {self.deadline:g}s deadline "
                       f"({self.elapsed():.1f}s elapsed, {received} bytes received); refusing")

    def check_time(self, received: int) -> None:
        if self.left() <= 0:
            raise self.too_slow(received)

    def check_size(self, size: int, announced: bool = False) -> None:
        if self.limit is not None and size > self.limit:
            if announced:
                raise TooLarge(f"{self.what}: server announces {size} bytes, over the limit of {self.limit} bytes; "
                               "refusing")
            raise TooLarge(f"{self.what}: server sent more than the limit of {self.limit} bytes; refusing")

    def timeout(self, configured: tuple[float, float]) -> tuple[float, float]:
        # a request must not wait on the network past the deadline either
        left = max(self.left(), 0.001)
        return (min(configured[0], left), min(configured[1], left))


# --- the deadline's watchdog ---------------------------------------------------------------
# A per-read timeout restarts with every byte, so a peer trickling the status line, the
# headers or a request body that we send never trips it. The watchdog is a timer that shuts
# the sockets of the requests its thread made while it ran: whatever blocked on them wakes
# with an error, which the retry loop turns into TooSlow as the deadline has passed.

class _Watch:
    def __init__(self):
        self.conns: list = []   # urllib3 connections used under this watch
        self.lock = threading.Lock()
        self.live, self.fired = True, False

    def add(self, conn) -> None:
        with self.lock:
            if self.live and conn not in self.conns:
                self.conns.append(conn)

    def cut(self) -> None:
        with self.lock:
            if not self.live:
                return          # the operation ended as the timer fired: its sockets are others' now
            self.fired = True
            for conn in self.conns:
                sock = conn.sock          # None before it connects and after it closes
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            self.live = False


class _Watches(threading.local):
    def __init__(self):
        self.stack: list[_Watch] = []   # this thread's open watches, innermost last


_watches = _Watches()


def _register(conn) -> None:
    if _watches.stack:
        _watches.stack[-1].add(conn)


@contextlib.contextmanager
def watching(budget: Budget) -> Iterator[None]:
    """Hold budget's deadline over everything this thread sends and reads inside the block."""
    if budget.deadline is None:
        yield
        return
    watch = _Watch()
    _watches.stack.append(watch)
    timer = threading.Timer(max(budget.left(), 0.0), watch.cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        watch.close()
        _watches.stack.remove(watch)


@functools.lru_cache(maxsize=None)
def _adapter_class() -> type:
    """requests' adapter whose connections report to the thread's watch (made on first use:
    importing requests costs every run, and a build from cached layers needs no network)."""
    import requests
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def watched(base: type) -> type:
        class Watched(base):
            def connect(self):                  # a TLS handshake happens here, before putrequest
                _register(self)
                return super().connect()

            def putrequest(self, *a, **kw):     # every request on a new or reused connection
                _register(self)
                return super().putrequest(*a, **kw)
        return Watched

    class Pool(HTTPConnectionPool):
        ConnectionCls = watched(HTTPConnection)

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = watched(HTTPSConnection)

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *a, **kw):
            super().init_poolmanager(*a, **kw)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TLSPool}

    return Adapter


def new_session() -> "requests.Session":
    import requests   # here, not at the top: a build whose layers are all cached never opens a connection
    s = requests.Session()
    s.headers["User-Agent"] = f"freebsd-images/{__version__}"
    # Retries are ours (RetryPolicy), so that downloads and the registry share one policy.
    adapter = _adapter_class()(pool_connections=8, pool_maxsize=8, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


@dataclass(frozen=True)
class Reply:
    """An answer read whole within its budget (``Http.fetch``)."""
    status_code: int
    reason: str
    headers: Mapping[str, str]      # case-insensitive, as requests gives them
    content: bytes
    url: str

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def close(self) -> None:
        pass                          # nothing held: the body is read


def _arrivals(resp: requests.Response):
    """The body as it arrives: read1 returns whatever one socket read gave, where read(n)
    (and iter_content) would block until n bytes came, deaf to any deadline meanwhile."""
    import urllib3
    raw = resp.raw
    if isinstance(raw, urllib3.BaseHTTPResponse):
        def read() -> bytes:
            return raw.read1(CHUNK, decode_content=True)
    else:                        # a file-like answer from another adapter (tests' fake hosts)
        def read() -> bytes:
            return raw.read(CHUNK)
    while True:
        chunk = read()
        if not chunk:
            return
        yield chunk


class Http:
    """A session plus the retry policy; ``send`` and ``fetch`` retry what is worth retrying."""

    def __init__(self, policy: Optional[RetryPolicy] = None, timeout: tuple[float, float] = (10.0, 30.0)):
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self._session = None
        self.stats = Stats()

    @property
    def session(self):
        if self._session is None:
            self._session = new_session()
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def send(self, method: str, url: str, describe: str, retry: bool = True, budget: Optional[Budget] = None,
             **kw) -> requests.Response:
        """One request, retried on connection errors and RETRY_STATUS; the last answer is returned as is.

        With ``budget``, no attempt, wait or read outlasts its deadline; a caller streaming the body
        holds ``watching(budget)`` over its reading too. ``retry=False`` is for callers that retry a
        larger unit themselves (a resumable body) with the same policy: errors then propagate as they are.
        """
        if not retry:
            kw.setdefault("timeout", self.timeout)
            self.stats.requests += 1
            return self.session.request(method, url, **kw)
        return self._retrying(describe, budget or Budget(describe, None, None),
                              lambda timeout: self.session.request(method, url, timeout=timeout, **kw))

    def fetch(self, method: str, url: str, describe: str, budget: Budget, **kw) -> Reply:
        """A request and its whole reply, within budget's byte limit and deadline (every attempt
        included); retried like ``send``, a refusal (too large, too slow) is not."""
        def once(timeout) -> Reply:
            with self.session.request(method, url, timeout=timeout, stream=True, **kw) as r:
                return Reply(r.status_code, r.reason or "", r.headers, self._body(r, method, budget), r.url)
        with watching(budget):
            return self._retrying(describe, budget, once)

    def _body(self, r: requests.Response, method: str, budget: Budget) -> bytes:
        if method == "HEAD":
            return b""
        total = r.headers.get("Content-Length")
        if total and total.isdigit():
            budget.check_size(int(total), announced=True)
        body = bytearray()
        for chunk in _arrivals(r):
            body += chunk
            self.stats.bytes += len(chunk)
            budget.check_size(len(body))
            budget.check_time(len(body))
        return bytes(body)

    def _retrying(self, describe: str, budget: Budget, once: Callable):
        """once(timeout) -> an answer, retried on connection and read errors and RETRY_STATUS
        while attempts and budget's time last: the one retry policy of every request."""
        import requests
        import urllib3
        transient = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                     urllib3.exceptions.HTTPError)
        for attempt in range(self.policy.retries + 1):
            budget.check_time(0)
            if attempt:
                self.stats.retries += 1
            self.stats.requests += 1
            last = attempt >= self.policy.retries
            try:
                answer = once(budget.timeout(self.timeout))
            except requests.exceptions.SSLError as exc:
                # TLS spoken to a plain-HTTP server (or the reverse) fails the same way every time: say
                # what to do at once instead of retrying
                if "WRONG_VERSION_NUMBER" in str(exc) or "wrong version number" in str(exc).lower():
                    raise BuildError(f"{describe}: the server does not speak TLS; a local plain-HTTP registry "
                                     "needs --insecure (or FREEBSD_IMAGES_REGISTRY_INSECURE=1)") from exc
                raise BuildError(f"{describe}: TLS failed: {type(exc).__name__}") from exc
            except transient as exc:
                if budget.left() <= 0:
                    raise budget.too_slow(0) from exc
                if last:
                    raise BuildError(f"{describe}: {type(exc).__name__} after {attempt + 1} attempts") from exc
                self.policy.wait(attempt + 1, budget=budget.left())
                continue
            if budget.left() <= 0:
                # the watchdog's cut can end the headers or body early and look like a whole answer
                answer.close()
                raise budget.too_slow(0)
            if answer.status_code in RETRY_STATUS and not last:
                answer.close()
                self.policy.wait(attempt + 1, answer.headers.get("Retry-After"), budget.left())
                continue
            return answer
        raise AssertionError("unreachable")


def http_url(url: str) -> str:
    return url[4:] if url.startswith("pkg+") else url


class Transport(Http):
    """Repository files: file://, http(s)://, pkg+http(s)://, with Range resume of interrupted bodies."""

    def __init__(self, retries: int = 4, backoff: float = 0.25, timeout: tuple[float, float] = (10.0, 30.0),
                 sleep: Callable[[float], None] = time.sleep, progress: Optional[bool] = None,
                 package_deadline: float = PACKAGE_DEADLINE, catalogue_deadline: float = CATALOGUE_DEADLINE):
        super().__init__(RetryPolicy(retries, backoff, sleep=sleep), timeout)
        if progress is None:
            progress = sys.stderr.isatty() and not os.environ.get("CI")
        self.progress = progress
        self.package_deadline = package_deadline
        self.catalogue_deadline = catalogue_deadline

    def fetch_to(self, url: str, out: BinaryIO, label: Optional[str] = None, limit: Optional[int] = None,
                 deadline: Optional[float] = None, what: Optional[str] = None) -> int:
        """Write the body of url to out (opened for writing at position 0); return its size.

        More than ``limit`` bytes, or no complete body within ``deadline`` seconds
        (all attempts together), is a refusal naming ``what`` (default: the URL).
        """
        url = http_url(url)
        budget = Budget(what or url, limit, deadline)
        if url.startswith("file://"):
            return self._fetch_file(url, out, budget)
        if not url.startswith(("http://", "https://")):
            raise BuildError(f"unsupported URL scheme: {url}")
        with watching(budget):
            return self._fetch_http(url, out, label or url.rsplit("/", 1)[-1], budget)

    def fetch_bytes(self, url: str, limit: int, deadline: Optional[float] = None) -> bytes:
        buf = io.BytesIO()
        self.fetch_to(url, buf, limit=limit, deadline=self.catalogue_deadline if deadline is None else deadline)
        return buf.getvalue()

    def _fetch_file(self, url: str, out: BinaryIO, budget: Budget) -> int:
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        try:
            with open(path, "rb") as fh:
                n = 0
                while chunk := fh.read(1 << 20):
                    n += len(chunk)
                    budget.check_size(n)
                    out.write(chunk)
        except FileNotFoundError as exc:
            raise NotFound(f"{url}: not found") from exc
        except OSError as exc:
            raise BuildError(f"{url}: {exc.strerror}") from exc
        self.stats.bytes += n
        return n

    def _fetch_http(self, url: str, out: BinaryIO, label: str, budget: Budget) -> int:
        import requests
        import urllib3
        written = 0
        last_error = "no attempt"
        # Each pass is one body transfer; a body cut short is resumed with Range on the next pass.
        for attempt in range(self.policy.retries + 1):
            budget.check_time(written)
            if attempt:
                self.stats.retries += 1
            # Range offsets count the bytes as stored, so no content coding on the way.
            headers = {"Accept-Encoding": "identity"}
            if written:
                headers["Range"] = f"bytes={written}-"
            try:
                with self.send("GET", url, url, retry=False, headers=headers, stream=True,
                               timeout=budget.timeout(self.timeout)) as resp:
                    if resp.status_code in (404, 410):
                        raise NotFound(f"{url}: HTTP {resp.status_code}")
                    if resp.status_code in RETRY_STATUS:
                        last_error = f"HTTP {resp.status_code}"
                        if attempt < self.policy.retries:
                            self.policy.wait(attempt + 1, resp.headers.get("Retry-After"), budget.left())
                        continue
                    if resp.status_code == 206 and written:
                        start = resp.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
                        if start != str(written):
                            out.seek(0)
                            out.truncate()
                            written = 0
                            last_error = "server resumed at the wrong offset"
                            continue
                        self.stats.resumed += 1
                    elif resp.status_code == 200:
                        if written:
                            out.seek(0)
                            out.truncate()
                            written = 0
                    else:
                        raise BuildError(f"{url}: HTTP {resp.status_code} {resp.reason}")
                    total = resp.headers.get("Content-Length")
                    expected = written + int(total) if total and total.isdigit() else None
                    if expected is not None:
                        budget.check_size(expected, announced=True)
                    for chunk in _arrivals(resp):
                        written += len(chunk)
                        self.stats.bytes += len(chunk)
                        budget.check_size(written)
                        budget.check_time(written)
                        out.write(chunk)
                        if self.progress and expected:
                            print(f"\r{label}: {written * 100 // expected}%", end="", file=sys.stderr)
                    if self.progress and expected:
                        print(file=sys.stderr)
                    budget.check_time(written)     # a body the watchdog cut may look complete
                    if expected is not None and written != expected:
                        last_error = f"body truncated at {written} of {expected} bytes"
                        continue
                    return written
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError) as exc:
                last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                if budget.left() <= 0:
                    raise budget.too_slow(written) from exc
                if attempt < self.policy.retries:
                    self.policy.wait(attempt + 1, budget=budget.left())
                continue
        raise BuildError(f"{url}: giving up after {self.policy.retries + 1} attempts ({last_error})")
