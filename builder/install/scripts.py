"""Recognise pkgbase post-install scripts and produce their effect in Python."""
from __future__ import annotations

import re

from builder.errors import BuildError

KNOWN = (
    ("pwd_mkdb", re.compile(r"^(/usr/sbin/)?pwd_mkdb( -[A-Za-z]+| -d \S+)* \S*/etc/master\.passwd$")),
    ("services_mkdb", re.compile(r"^(/usr/sbin/)?services_mkdb( -[A-Za-z]+| -o \S+)* \S*/etc/services$")),
    ("cap_mkdb", re.compile(r"^(/usr/bin/)?cap_mkdb( -[A-Za-z]+| -f \S+)* \S*/etc/login\.conf$")),
    ("certctl", re.compile(r"^(\[ -x /usr/sbin/certctl \] && )?(env DESTDIR=\S+ )?(/usr/sbin/)?certctl( -[A-Za-z]+)* rehash$")),
)


def recognise(package: str, scripts: dict, ignored: dict[str, str]) -> frozenset[str]:
    """The actions a package's install scripts ask for; unknown scripts stop the build."""
    actions: set[str] = set()
    for kind, body in sorted(scripts.items()):
        if kind not in ("post-install", "install", "pre-install"):
            continue  # deinstall/upgrade scripts never run while building an image
        for line in body.splitlines():
            line = " ".join(line.split())
            if not line or line.startswith("#"):
                continue
            for name, pattern in KNOWN:
                if pattern.match(line):
                    actions.add(name)
                    break
            else:
                if package in ignored:
                    continue
                raise BuildError(
                    f"package {package}: its {kind} script does something the builder does not know how to do "
                    f"without running FreeBSD binaries:\n    {line}\n  full script:\n    "
                    + body.replace("\n", "\n    ")
                    + f"\n  If the image does not need it, add to families.yaml: ignore-scripts: {{{package}: \"<reason>\"}}")
    return frozenset(actions)
