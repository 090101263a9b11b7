"""mtree(5) specification files: the FreeBSD directory hierarchy (BSD.*.dist).

Supports what the hierarchy specs use: ``/set`` and ``/unset`` defaults,
nested directory entries closed by ``..``, and the keywords type, uname,
gname, uid, gid, mode, flags, link and tags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from builder.errors import BuildError


@dataclass(frozen=True)
class MtreeEntry:
    path: str                  # absolute, under the spec's root
    type: str                  # dir | file | link
    uname: str
    gname: str
    mode: int
    flags: str = ""
    link: Optional[str] = None
    tags: str = ""


def _keywords(tokens: list[str], source: str, lineno: int) -> dict[str, str]:
    out = {}
    for t in tokens:
        if t in ("nochange", "optional", "ignore"):
            out[t] = "yes"
            continue
        if "=" not in t:
            raise BuildError(f"{source}:{lineno}: bad keyword {t!r} (want key=value)")
        k, v = t.split("=", 1)
        out[k] = v
    return out


# strunvis(3) as mtree reads names back: FreeBSD's mtree writes them with strsvis(VIS_CSTYLE)
# ("\s" space, "\\" backslash, "\#" hash ...), libarchive's writer as \ooo bytes; both decode
# to bytes, which are the name's UTF-8.
_CSTYLE = {"\\": b"\\", "s": b" ", "#": b"#", "n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a",
           "b": b"\b", "f": b"\f", "v": b"\v", "0": b"\0", "E": b"\033", "*": b"*", "?": b"?", "[": b"["}


def _unvis(name: str) -> str:
    out, i = bytearray(), 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 3 < len(name) + 1 and all(ch in "01234567" for ch in name[i + 1:i + 4]) \
                and len(name[i + 1:i + 4]) == 3:
            out.append(int(name[i + 1:i + 4], 8) & 0xFF)
            i += 4
        elif c == "\\" and i + 1 < len(name) and name[i + 1] in _CSTYLE:
            out += _CSTYLE[name[i + 1]]
            i += 2
        else:
            out += c.encode("utf-8")
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _strip_comment(raw: str) -> str:
    """Drop a comment: a token starting with an unescaped '#' (an escaped one is "\\#")."""
    kept = []
    for tok in raw.split():
        if tok.startswith("#"):
            break
        kept.append(tok)
    return " ".join(kept)


def parse(text: str, root: str = "/", source: str = "mtree") -> list[MtreeEntry]:
    defaults: dict[str, str] = {}
    stack: list[str] = []
    out: list[MtreeEntry] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if not line:
            continue
        tokens = line.split()
        head = tokens[0]
        if head == "/set":
            defaults.update(_keywords(tokens[1:], source, lineno))
            continue
        if head == "/unset":
            for k in tokens[1:]:
                defaults.pop(k, None)
            continue
        if head == "..":
            if not stack:
                raise BuildError(f"{source}:{lineno}: '..' above the root")
            stack.pop()
            continue
        if "/" in head and head != ".":
            raise BuildError(f"{source}:{lineno}: full path entries are not supported: {head}")
        name = _unvis(head)
        if name == ".." or (name != "." and "/" in name):
            raise BuildError(f"{source}:{lineno}: refusing entry {name!r}")
        kw = dict(defaults)
        kw.update(_keywords(tokens[1:], source, lineno))
        typ = kw.get("type", "file")
        parts = stack + ([] if name == "." else [name])
        path = "/" + "/".join(p for p in [root.strip("/")] + parts if p)
        try:
            mode = int(kw.get("mode", "0755" if typ == "dir" else "0644"), 8)
        except ValueError as exc:
            raise BuildError(f"{source}:{lineno}: bad mode {kw.get('mode')!r}") from exc
        out.append(MtreeEntry(path, typ, kw.get("uname", "root"), kw.get("gname", "wheel"), mode,
                              kw.get("flags", ""), kw.get("link"), kw.get("tags", "")))
        if typ == "dir":
            if name == "." and stack:
                raise BuildError(f"{source}:{lineno}: '.' inside a directory")
            stack.append("" if name == "." else name)  # the root's own '..' closes it
    return out


SPEC_ROOTS = {"BSD.root.dist": "/", "BSD.var.dist": "/var", "BSD.usr.dist": "/usr",
              "BSD.include.dist": "/usr/include", "BSD.debug.dist": "/usr/lib"}
