"""SOURCE_DATE_EPOCH from the environment: read in one place, with one rule for a bad value."""
from __future__ import annotations

import os
from typing import Mapping, Optional

from builder.errors import BuildError


def source_date_epoch(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """SOURCE_DATE_EPOCH from the environment: None when unset; a value that is not a whole number of
    seconds is a refusal, never ignored (it would silently give other digests than the user asked for)."""
    v = (os.environ if environ is None else environ).get("SOURCE_DATE_EPOCH")
    if v is None or v == "":
        return None
    if not v.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH={v!r} is not a whole number of seconds since 1970")
    return int(v)
