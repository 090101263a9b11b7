"""The subset of UCL that pkg writes: meta.conf and fingerprint files.

``key = value;`` or ``key: value`` lines with quoted strings, integers and
booleans, ``#`` comments. Nested objects are not needed for these files and are
refused rather than misread.
"""
from __future__ import annotations

import json
import re

from builder.errors import BuildError

# what JSON's "\ud800" escapes decode to: no file name, URL, message or UTF-8 document can hold one
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE = re.compile(r"""^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(?:=|:)?\s*(.*?)\s*;?\s*$""")


def parse(text: str, source: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith('"') else raw.strip()
        if not line:
            continue
        m = _LINE.match(line)
        if not m or m.group(2).startswith("{") or m.group(2).startswith("["):
            raise BuildError(f"{source}:{lineno}: cannot parse {raw.strip()!r}")
        key, value = m.group(1), m.group(2).rstrip(";").strip()
        if value.startswith('"'):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise BuildError(f"{source}:{lineno}: bad string {value!r}") from exc
            if LONE_SURROGATE.search(out[key]):
                raise BuildError(f"{source}:{lineno}: bad string {value!r}")
        elif re.fullmatch(r"-?[0-9]+", value):
            out[key] = int(value)
        elif value.lower() in ("true", "yes", "on"):
            out[key] = True
        elif value.lower() in ("false", "no", "off"):
            out[key] = False
        else:
            out[key] = value
    return out


def dump(items: list[tuple[str, object]]) -> str:
    """Write ``key = value;`` lines the way pkg repo writes meta.conf."""
    lines = []
    for k, v in items:
        if isinstance(v, bool):
            val = "true" if v else "false"
        elif isinstance(v, int):
            val = str(v)
        else:
            val = json.dumps(v)
        lines.append(f"{k} = {val};")
    return "\n".join(lines) + "\n"
