"""Where a run's words go: the one way every stage reports progress, details and warnings.

Results go to stdout and are the CLI's business; everything here goes to stderr (or the stream
given), one write per line under a lock, because arches build in threads and print() writes the
newline separately (two threads' lines would interleave).

On a terminal, a status line at the bottom says what is being done now (``status``), and the
progress lines scroll above it. Elsewhere (a CI log, a pipe) there is no status line and each
progress line starts with the seconds since the run started, so a log shows where time went.
A status line is a carriage return and an erase-line sequence: no library for that, and so no
dependency to pin and audit for it.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Optional, TextIO

ERASE = "\r\x1b[K"


class Log:
    """``verbosity`` below 0 (``-q``): warnings only; 0: progress; above 0 (``-v``): details too."""

    def __init__(self, verbosity: int = 0, stream: Optional[TextIO] = None, live: Optional[bool] = None):
        self.verbosity = verbosity
        self._stream = stream
        self._live = live
        self._lock = threading.Lock()
        self._status = ""
        self._start = time.monotonic()

    @property
    def stream(self) -> TextIO:
        # looked up when written, not when made: pytest's capsys swaps sys.stderr per test
        return self._stream if self._stream is not None else sys.stderr

    @property
    def live(self) -> bool:
        if self._live is not None:
            return self._live
        try:
            return self.verbosity >= 0 and self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def _line(self, text: str, stamped: bool) -> None:
        with self._lock:
            if self.live:
                self.stream.write(f"{ERASE}{text}\n{self._status}")
            else:
                self.stream.write((f"[{time.monotonic() - self._start:7.1f}s] " if stamped else "") + text + "\n")
            self.stream.flush()

    def info(self, msg: str) -> None:
        if self.verbosity >= 0:
            self._line(msg, stamped=True)

    def detail(self, msg: str) -> None:
        if self.verbosity > 0:
            self._line(msg, stamped=True)

    def warn(self, msg: str) -> None:
        self._line(f"warning: {msg}", stamped=False)

    def status(self, msg: str) -> None:
        """What is being done now: the bottom line of a terminal, replaced by the next; nothing elsewhere."""
        if self.live:
            with self._lock:
                self._status = msg[: 200]
                self.stream.write(ERASE + self._status)
                self.stream.flush()

    def done(self) -> None:
        if self.live and self._status:
            with self._lock:
                self._status = ""
                self.stream.write(ERASE)
                self.stream.flush()
