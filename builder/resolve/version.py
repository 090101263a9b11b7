"""pkg's version ordering (``pkg version -t``), reimplemented from its documented rules.

``PORTVERSION[_REVISION][,EPOCH]``: epoch first, then the version, then the
revision. Versions are dot-separated components of number, letter(s), patch
number; ``pl`` < ``alpha`` < ``beta`` < ``pre`` < ``rc`` sort as letters below
a bare number; ``*`` is the smallest component; missing components are 0.
"""
from __future__ import annotations

from typing import Optional

_STAGES = (("pl", 0), ("alpha", 1), ("beta", 2), ("pre", 16), ("rc", 18))


def _split(v: str) -> tuple[str, int, int]:
    rev_at = v.rfind("_")
    revision = _leading_int(v[rev_at + 1:]) if rev_at >= 0 else 0
    body_end = rev_at if rev_at >= 0 else len(v)
    search_from = rev_at + 1 if rev_at >= 0 else 0
    ep_at = v.rfind(",", search_from)
    epoch = _leading_int(v[ep_at + 1:]) if ep_at >= 0 else 0
    if ep_at >= 0 and rev_at < 0:
        body_end = ep_at
    return v[:body_end], epoch, revision


def _leading_int(s: str) -> int:
    n = 0
    for ch in s:
        if not ch.isdigit():
            break
        n = n * 10 + int(ch)
    return n


def _component(s: str, i: int) -> tuple[tuple[int, int, int], int]:
    """Parse one (number, letter, patchlevel) component at s[i:]; return it and the next index."""
    n = a = pl = 0
    has_stage = has_pl = False
    if i < len(s) and s[i].isdigit():
        j = i
        while j < len(s) and s[j].isdigit():
            j += 1
        n, i = int(s[i:j]), j
    elif i < len(s) and s[i] == "*":
        n = -2
        i += 1
        while i < len(s) and s[i] != "+":
            i += 1
    else:
        n, has_stage = -1, True
    if i < len(s) and s[i].isalpha():
        c: Optional[str] = s[i].lower()
        has_pl = True
        if i + 1 < len(s) and s[i + 1].isalpha():
            for name, value in _STAGES:
                end = i + len(name)
                if s[i:end].lower() == name and not (end < len(s) and s[end].isalpha()):
                    if has_stage:
                        a, i = value, end
                    else:
                        a, has_pl = 0, False  # a dot is implied before the stage word
                    c = None
                    break
        if c is not None:
            a = ord(c) - ord("a") + 1
            while i < len(s) and s[i].isalpha():
                i += 1
    if has_pl:
        if i < len(s) and s[i].isdigit():
            j = i
            while j < len(s) and s[j].isdigit():
                j += 1
            pl, i = int(s[i:j]), j
        else:
            pl = -1
    while i < len(s) and not s[i].isalnum() and s[i] not in "+*":
        i += 1
    return (n, a, pl), i


def compare(v1: str, v2: str) -> int:
    """-1, 0 or 1 as pkg_version_cmp orders two versions."""
    b1, e1, r1 = _split(v1)
    b2, e2, r2 = _split(v2)
    if e1 != e2:
        return -1 if e1 < e2 else 1
    if b1.lower() != b2.lower():
        i = j = 0
        while i < len(b1) or j < len(b2):
            block1 = not (i < len(b1) and b1[i] != "+")
            block2 = not (j < len(b2) and b2[j] != "+")
            c1 = c2 = (0, 0, 0)
            if not block1:
                c1, i = _component(b1, i)
            if not block2:
                c2, j = _component(b2, j)
            if block1 and block2:
                i += i < len(b1)
                j += j < len(b2)
            elif c1 != c2:
                return -1 if c1 < c2 else 1
    if r1 != r2:
        return -1 if r1 < r2 else 1
    return 0
