"""HTTP for every network read and write: one session setup, one retry policy.

Repository downloads (``Transport``) and the registry client both go through
``Http.send``: bounded retries with exponential backoff on connection errors,
5xx and 429, honouring ``Retry-After`` (seconds or HTTP-date) but never
sleeping longer than ``RetryPolicy.max_wait``. ``Transport`` adds Range resume
of interrupted bodies on top. ``file://`` URLs are read directly; ``pkg+``
URLs mean SRV-record mirror selection to pkg, which we treat as the plain
scheme (pkg.FreeBSD.org answers on its A records too).

A repository server is not trusted to be reasonable: every download has a byte
limit (refused as soon as it is passed, or when Content-Length announces more)
and a total deadline over all its attempts, on top of the per-read timeout
(which a server trickling one byte a second never trips).
"""
from __future__ import annotations

import io
import math
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Optional

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


def new_session() -> "requests.Session":
    import requests   # here, not at the top: a build whose layers are all cached never opens a connection
    s = requests.Session()
    s.headers["User-Agent"] = f"freebsd-images/{__version__}"
    # Retries are ours (RetryPolicy), so that downloads and the registry share one policy.
    adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=8, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


class Http:
    """A session plus the retry policy; ``send`` retries what is worth retrying."""

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

    def send(self, method: str, url: str, describe: str, retry: bool = True, **kw) -> requests.Response:
        """One request, retried on connection errors and RETRY_STATUS; the last answer is returned as is.

        ``retry=False`` is for callers that retry a larger unit themselves (a resumable body)
        with the same policy: connection errors then propagate as they are.
        """
        import requests
        kw.setdefault("timeout", self.timeout)
        if not retry:
            self.stats.requests += 1
            return self.session.request(method, url, **kw)
        for attempt in range(self.policy.retries + 1):
            if attempt:
                self.stats.retries += 1
            self.stats.requests += 1
            try:
                r = self.session.request(method, url, **kw)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.policy.retries:
                    raise BuildError(f"{describe}: {type(exc).__name__} after {attempt + 1} attempts") from exc
                self.policy.wait(attempt + 1)
                continue
            if r.status_code in RETRY_STATUS and attempt < self.policy.retries:
                r.close()
                self.policy.wait(attempt + 1, r.headers.get("Retry-After"))
                continue
            return r
        raise AssertionError("unreachable")


def http_url(url: str) -> str:
    return url[4:] if url.startswith("pkg+") else url


class TooLarge(BuildError):
    pass


class TooSlow(BuildError):
    pass


CHUNK = 1 << 16
PACKAGE_DEADLINE = 30 * 60.0     # seconds for one package, every attempt included
CATALOGUE_DEADLINE = 2 * 60.0    # seconds for meta.conf or one catalogue archive


class _Budget:
    """The byte limit and the deadline of one download, checked as data arrives."""

    def __init__(self, what: str, limit: Optional[int], deadline: Optional[float]):
        self.what, self.limit, self.deadline = what, limit, deadline
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - self.elapsed()

    def too_slow(self, received: int) -> TooSlow:
        return TooSlow(f"{self.what}: no complete download within the {self.deadline:g}s deadline "
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


def _arrivals(resp: requests.Response):
    """The body as it arrives: read1 returns whatever one socket read gave, where read(n)
    (and iter_content) would block until n bytes came, deaf to any deadline meanwhile."""
    while True:
        chunk = resp.raw.read1(CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


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
        budget = _Budget(what or url, limit, deadline)
        if url.startswith("file://"):
            return self._fetch_file(url, out, budget)
        if not url.startswith(("http://", "https://")):
            raise BuildError(f"unsupported URL scheme: {url}")
        return self._fetch_http(url, out, label or url.rsplit("/", 1)[-1], budget)

    def fetch_bytes(self, url: str, limit: int, deadline: Optional[float] = None) -> bytes:
        buf = io.BytesIO()
        self.fetch_to(url, buf, limit=limit, deadline=self.catalogue_deadline if deadline is None else deadline)
        return buf.getvalue()

    def _fetch_file(self, url: str, out: BinaryIO, budget: _Budget) -> int:
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

    def _fetch_http(self, url: str, out: BinaryIO, label: str, budget: _Budget) -> int:
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
