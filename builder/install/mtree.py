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


def _unvis(name: str) -> str:
    # mtree writes special characters as \ooo octal escapes
    out, i = [], 0
    while i < len(name):
        if name[i] == "\\" and i + 3 < len(name) + 1 and name[i + 1:i + 4].isdigit():
            out.append(chr(int(name[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def parse(text: str, root: str = "/", source: str = "mtree") -> list[MtreeEntry]:
    defaults: dict[str, str] = {}
    stack: list[str] = []
    out: list[MtreeEntry] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
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
