"""pkg's repository configuration inside an image, and whether pkg could verify what it names.

pkg reads every ``*.conf`` in /etc/pkg, then in /usr/local/etc/pkg/repos, and a
later definition of a repository overrides the keys it sets (``FreeBSD-base: {
enabled: yes }`` turns on what /etc/pkg/FreeBSD.conf declared). A repository
signed with ``fingerprints`` is trusted only if its ``fingerprints`` directory
holds a ``trusted/`` file with a fingerprint; ``pubkey`` needs its key file. An
image whose configuration names a directory it does not have ships a ``pkg
update`` that fails its signature check: the build refuses it (``check``).

The parser reads the UCL pkg's configuration files use: ``NAME: { key: value,
... }`` (``:``, ``=`` or nothing between key and value; ``,`` or ``;`` after),
quoted or bare values, nested objects and arrays, ``#`` and ``/* */`` comments.
Anything else is refused rather than guessed at.
"""
from __future__ import annotations

import json
import posixpath
import re
from typing import Callable, Optional

from builder.errors import BuildError
from builder.install.fsmodel import FileSystem, Unresolvable
from builder.resolve import ucl

REPO_DIRS = ("/etc/pkg", "/usr/local/etc/pkg/repos")
_TOKEN = re.compile(r'''\s+|\#[^\n]*|/\*.*?\*/|(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[A-Za-z0-9_.+/$@%~-]+)|(?P<p>[{}\[\]:=,;])''',
                    re.S)


def _tokens(text: str, source: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise BuildError(f"{source}: cannot parse pkg configuration at {text[pos:pos + 30]!r}")
        pos = m.end()
        if m.group("str") is not None:
            try:
                out.append(("str", json.loads(m.group("str"))))
            except json.JSONDecodeError as exc:
                raise BuildError(f"{source}: bad string {m.group('str')!r}") from exc
        elif m.group("word") is not None:
            out.append(("word", m.group("word")))
        elif m.group("p") is not None:
            out.append(("p", m.group("p")))
    return out


def parse(text: str, source: str) -> dict:
    """A pkg configuration file as nested dicts (keys as written, values as strings, dicts and lists)."""
    toks = _tokens(text, source)
    i = 0

    def peek() -> Optional[tuple[str, str]]:
        return toks[i] if i < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal i
        if i >= len(toks):
            raise BuildError(f"{source}: unexpected end of pkg configuration")
        i += 1
        return toks[i - 1]

    def value():
        kind, v = take()
        if (kind, v) == ("p", "{"):
            obj = members("}")
            take()
            return obj
        if (kind, v) == ("p", "["):
            arr = []
            while peek() is not None and peek() != ("p", "]"):
                arr.append(value())
                if peek() in (("p", ","), ("p", ";")):
                    take()
            take()
            return arr
        if kind == "p":
            raise BuildError(f"{source}: unexpected {v!r} in pkg configuration")
        return v

    def members(end: Optional[str]) -> dict:
        obj: dict = {}
        while peek() is not None and (end is None or peek() != ("p", end)):
            kind, key = take()
            if kind == "p":
                raise BuildError(f"{source}: expected a key, got {key!r}")
            if peek() in (("p", ":"), ("p", "=")):
                take()
            v = value()
            if isinstance(v, dict) and isinstance(obj.get(key), dict):
                obj[key] = {**obj[key], **v}
            else:
                obj[key] = v
            if peek() in (("p", ","), ("p", ";")):
                take()
        if end is not None and peek() is None:
            raise BuildError(f"{source}: missing {end!r} in pkg configuration")
        return obj

    return members(None)


def config_files(fs: FileSystem) -> list[str]:
    """The files pkg reads, in its order."""
    found: dict[str, list[str]] = {}
    for p, n in fs.nodes.items():
        # rpartition is dirname for the model's canonical paths (REPO_DIRS are not the root)
        d = p.rpartition("/")[0]
        if d in REPO_DIRS and p.endswith(".conf") and n.kind in ("file", "hardlink", "symlink"):
            found.setdefault(d, []).append(p)
    return [p for d in REPO_DIRS for p in sorted(found.get(d, ()))]


def repositories(fs: FileSystem, read: Callable[[list[str]], dict[str, bytes]]) -> dict[str, dict]:
    """name -> the repository's effective settings, with the files that set them under ``_files``."""
    files = [(p, _is_file(fs, p)) for p in config_files(fs)]
    contents = read(sorted({real for _, real in files if real}))
    repos: dict[str, dict] = {}
    for path, real in files:
        if real is None:
            continue   # a dangling link: pkg skips what it cannot open
        for name, body in parse(contents[real].decode("utf-8", "replace"), path).items():
            if not isinstance(body, dict):
                raise BuildError(f"{path}: repository {name!r} is not an object")
            cur = repos.setdefault(name, {"_files": []})
            cur.update(body)
            cur["_files"].append(path)
    return repos


def _is_file(fs: FileSystem, path: str) -> Optional[str]:
    """The path a (possibly symlinked) regular file resolves to, or None."""
    try:
        res = fs.resolve(path)
    except Unresolvable:
        return None
    node = fs.nodes.get(res.path)
    return res.path if node is not None and node.kind in ("file", "hardlink") else None


def problems(fs: FileSystem, read: Callable[[list[str]], dict[str, bytes]]) -> list[str]:
    """Every repository whose signature pkg could not check with what the image holds."""
    out = []
    for name, repo in sorted(repositories(fs, read).items()):
        where = f"repository {name} ({', '.join(repo['_files'])})"
        sig = str(repo.get("signature_type", "none")).lower()
        if sig == "fingerprints":
            fp = repo.get("fingerprints")
            if not isinstance(fp, str) or not fp.startswith("/"):
                out.append(f"{where}: signature_type fingerprints without an absolute fingerprints directory")
                continue
            fp = posixpath.normpath(fp)
            trusted = posixpath.join(fp, "trusted")
            files = sorted(p for p in fs.nodes if p.rpartition("/")[0] == trusted)
            keys = [p for p in files if _is_file(fs, p)]
            good = []
            if keys:
                got = read([_is_file(fs, p) for p in keys])
                for p in keys:
                    try:
                        doc = ucl.parse(got[_is_file(fs, p)].decode("utf-8", "replace"), p)
                    except BuildError:
                        continue
                    if doc.get("function") and doc.get("fingerprint"):
                        good.append(p)
            if not good:
                have = f"{fp} does not exist" if fp not in fs.nodes else (
                    f"there is no {trusted}" if trusted not in fs.nodes else f"{trusted} holds no fingerprint file")
                out.append(f"{where}: fingerprints {fp}: {have}; pkg would refuse every catalogue of this repository")
        elif sig == "pubkey":
            key = repo.get("pubkey")
            if not isinstance(key, str) or not _is_file(fs, posixpath.normpath(key)):
                out.append(f"{where}: pubkey {key} is not a file in the image")
    return out
