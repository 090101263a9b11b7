"""Where a run's words go: the one way every stage reports progress, details and warnings.

Results go to stdout and are the CLI's business; everything here goes to stderr (or the stream
given), one write per line, because arches build in threads and print() writes the newline
separately (two threads' lines would interleave).
"""
from __future__ import annotations

import sys
from typing import Optional, TextIO


class Log:
    """``verbosity`` below 0 (``-q``): warnings only; 0: progress; above 0 (``-v``): details too."""

    def __init__(self, verbosity: int = 0, stream: Optional[TextIO] = None):
        self.verbosity = verbosity
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        # looked up when written, not when made: pytest's capsys swaps sys.stderr per test
        return self._stream if self._stream is not None else sys.stderr

    def info(self, msg: str) -> None:
        if self.verbosity >= 0:
            self.stream.write(msg + "\n")

    def detail(self, msg: str) -> None:
        if self.verbosity > 0:
            self.stream.write(msg + "\n")

    def warn(self, msg: str) -> None:
        self.stream.write(f"warning: {msg}\n")

