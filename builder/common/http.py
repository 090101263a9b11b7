"""Fetching repository files: file://, http(s)://, pkg+http(s)://.

Connection reuse, timeouts, bounded retries with exponential backoff on
connection errors, 5xx and 429, and resume of interrupted bodies with Range.
``pkg+`` URLs mean SRV-record mirror selection to pkg; we treat them as the
plain scheme (pkg.FreeBSD.org answers on its A records too).
"""
from __future__ import annotations

import os
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional

import requests

from builder import __version__
from builder.errors import BuildError

RETRY_STATUS = {429, 500, 502, 503, 504}


class NotFound(BuildError):
    pass


@dataclass
class Stats:
    requests: int = 0
    retries: int = 0
    resumed: int = 0
    bytes: int = 0


def http_url(url: str) -> str:
    return url[4:] if url.startswith("pkg+") else url


class Transport:
    def __init__(self, retries: int = 4, backoff: float = 0.25, timeout: tuple[float, float] = (10.0, 30.0),
                 sleep: Callable[[float], None] = time.sleep, progress: Optional[bool] = None):
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.sleep = sleep
        self.stats = Stats()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"freebsd-images/{__version__}"
        adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=8, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if progress is None:
            progress = sys.stderr.isatty() and not os.environ.get("CI")
        self.progress = progress

    def close(self) -> None:
        self.session.close()

    def fetch_to(self, url: str, out: BinaryIO, label: Optional[str] = None) -> int:
        """Write the body of url to out (opened for writing at position 0); return its size."""
        url = http_url(url)
        if url.startswith("file://"):
            return self._fetch_file(url, out)
        if not url.startswith(("http://", "https://")):
            raise BuildError(f"unsupported URL scheme: {url}")
        return self._fetch_http(url, out, label or url.rsplit("/", 1)[-1])

    def fetch_bytes(self, url: str, limit: int = 512 << 20) -> bytes:
        import io
        buf = io.BytesIO()
        self.fetch_to(url, buf)
        if buf.tell() > limit:
            raise BuildError(f"{url}: larger than {limit} bytes")
        return buf.getvalue()

    def _fetch_file(self, url: str, out: BinaryIO) -> int:
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        try:
            with open(path, "rb") as fh:
                n = 0
                while chunk := fh.read(1 << 20):
                    out.write(chunk)
                    n += len(chunk)
        except FileNotFoundError:
            raise NotFound(f"{url}: not found") from None
        except OSError as exc:
            raise BuildError(f"{url}: {exc.strerror}") from None
        self.stats.bytes += n
        return n

    def _fetch_http(self, url: str, out: BinaryIO, label: str) -> int:
        written = 0
        last_error = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                self.sleep(min(self.backoff * (2 ** (attempt - 1)), 10.0))
            headers = {}
            if written:
                headers["Range"] = f"bytes={written}-"
            self.stats.requests += 1
            try:
                with self.session.get(url, headers=headers, stream=True, timeout=self.timeout) as resp:
                    if resp.status_code == 404 or resp.status_code == 410:
                        raise NotFound(f"{url}: HTTP {resp.status_code}")
                    if resp.status_code in RETRY_STATUS:
                        last_error = f"HTTP {resp.status_code}"
                        retry_after = resp.headers.get("Retry-After", "")
                        if retry_after.isdigit():
                            self.sleep(min(int(retry_after), 30))
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
                    for chunk in resp.iter_content(1 << 16):
                        out.write(chunk)
                        written += len(chunk)
                        self.stats.bytes += len(chunk)
                        if self.progress and expected:
                            print(f"\r{label}: {written * 100 // expected}%", end="", file=sys.stderr)
                    if self.progress and expected:
                        print(file=sys.stderr)
                    if expected is not None and written != expected:
                        last_error = f"body truncated at {written} of {expected} bytes"
                        continue
                    return written
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
        raise BuildError(f"{url}: giving up after {self.retries + 1} attempts ({last_error})")
