"""Every image can run what it ships: the shared-library closure of its ELF files.

For each dynamically linked ELF file of a flavour's filesystem (the flavour
with everything below it) the interpreter it asks for must be in the image,
and each DT_NEEDED must be found where FreeBSD's ld-elf.so.1 looks for it
(find_library in libexec/rtld-elf/rtld.c), in this order:

1. DT_RUNPATH, or DT_RPATH when there is no DT_RUNPATH, with $ORIGIN (or
   ${ORIGIN}) replaced by the directory of the object;
2. the ldconfig hints: the directories listed in /etc/ld-elf.so.conf and in
   the files under /usr/local/libdata/ldconfig/, as shipped in the image
   (what /etc/rc.d/ldconfig gives ldconfig);
3. the standard directories, /lib/casper:/lib:/usr/lib.

A DT_NEEDED with a slash is a path. Symlinks inside the image are followed
component by component, as the kernel does, so /usr/lib/libfoo.so.1 ->
/lib/libfoo.so.1 resolves. What rtld finds first must be an ELF file: it does
not skip a file it cannot load and look further.

Left to run time, because they depend on the process: LD_LIBRARY_PATH,
/etc/libmap.conf, the main program's DT_RPATH that a library without
DT_RUNPATH inherits, DF_1_NODEFLIB, and objects loaded with dlopen().

The ELF files' catalogue entries (shlibs_required/provided) play no part:
packages' own metadata can be wrong; the files are what rtld reads.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from builder.config.family import AcceptMiss
from builder.errors import BuildError
from builder.install import elf
from builder.install.fsmodel import FileSystem, Node

STANDARD_LIBRARY_PATH = ("/lib/casper", "/lib", "/usr/lib")
LD_ELF_SO_CONF = "/etc/ld-elf.so.conf"
LDCONFIG_LOCAL_DIR = "/usr/local/libdata/ldconfig"
MAX_SYMLINKS = 32          # the kernel's MAXSYMLINKS
MAX_LISTED = 40            # misses spelled out in one error
# Never loaded by rtld: separate debug files keep the object's program
# headers over empty sections, and under /boot the kernel (PT_INTERP
# "/red/herring") and its modules are loaded by the kernel itself.
SKIP_PREFIXES = ("/usr/lib/debug/", "/boot/")


@dataclass(frozen=True)
class Miss:
    elf: str
    package: str          # who put the ELF file there: a package, or how it got there
    soname: str           # the DT_NEEDED name, or the interpreter path
    kind: str             # library | interpreter
    detail: str


@dataclass
class Closure:
    elf_files: int = 0
    dynamic: int = 0
    libraries: int = 0
    needed: int = 0                      # DT_NEEDED entries, all resolved or accepted
    accepted: list[tuple[Miss, str]] = field(default_factory=list)   # (miss, reason)

    @classmethod
    def from_json(cls, doc: dict) -> "Closure":
        return cls(doc["elf_files"], doc["dynamic"], doc["libraries"], doc["needed"],
                   [(Miss(a["elf"], a["package"], a["soname"], a["kind"], ""), a["reason"]) for a in doc["accepted"]])

    def to_json(self) -> dict:
        return {"elf_files": self.elf_files, "dynamic": self.dynamic, "libraries": self.libraries,
                "needed": self.needed, "unresolved": len(self.accepted),
                "accepted": [{"elf": m.elf, "package": m.package, "soname": m.soname, "kind": m.kind,
                              "reason": reason} for m, reason in self.accepted]}


def resolve(fs: FileSystem, path: str) -> Optional[str]:
    """The image path ``path`` names once symlinks are followed, or None if nothing is there."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            # ``done`` is already the physical path, so this is the real parent
            if done:
                done.pop()
            continue
        here = "/" + "/".join(done + [part])
        node = fs.nodes.get(here)
        if node is None:
            return None
        if node.kind == "symlink":
            links += 1
            if links > MAX_SYMLINKS:
                return None
            if node.target.startswith("/"):
                done = []
            todo = [p for p in node.target.split("/") if p not in ("", ".")] + todo
            continue
        if todo and node.kind != "dir":
            return None
        done.append(part)
    return "/" + "/".join(done)


def elf_of(node: Node) -> Optional[elf.ElfInfo]:
    if node.elf is not None:
        return node.elf
    if node.data is not None:
        return elf.parse(node.data)
    return None


def origin(node: Node) -> str:
    if node.source.startswith("pkg:"):
        name = node.source[4:]
        return name if node.owner else f"extracted from {name}"
    return node.source or "unknown"


def substitute_origin(fs: FileSystem, path: str, elf_path: str) -> str:
    # rtld takes the object's real directory (rtld_dirname_abs of the path
    # the kernel or rtld opened), so a symlinked parent is resolved first.
    here = posixpath.dirname(resolve(fs, elf_path) or elf_path)
    return path.replace("${ORIGIN}", here).replace("$ORIGIN", here)


def hint_dirs(fs: FileSystem, read: Callable[[list[str]], dict[str, bytes]]) -> list[str]:
    """Directories ldconfig would put in the hints from the image's configuration files."""
    files = []
    conf = resolve(fs, LD_ELF_SO_CONF)
    if conf and fs.nodes[conf].kind in ("file", "hardlink"):
        files.append(conf)
    local = resolve(fs, LDCONFIG_LOCAL_DIR)
    if local:
        # rc.d/ldconfig runs ``find DIR -type f``: regular files, at any depth, no symlinks
        files += sorted(p for p, n in fs.nodes.items()
                        if p.startswith(local + "/") and n.kind in ("file", "hardlink"))
    if not files:
        return []
    texts = read(files)
    dirs: list[str] = []
    for p in files:
        for line in texts[p].decode("utf-8", "surrogateescape").splitlines():
            word = line.split("#", 1)[0].split()
            if word and word[0] not in dirs:
                dirs.append(word[0])
    return dirs


def _find(fs: FileSystem, name: str, dirs: Iterable[str]) -> tuple[Optional[str], str]:
    """(image path of the library, "") or (None, why not)."""
    for d in dirs:
        hit = resolve(fs, posixpath.join(d, name))
        if hit is None or fs.nodes[hit].kind not in ("file", "hardlink"):
            continue
        if elf_of(fs.nodes[hit]) is None:
            return None, f"rtld would stop at {d}/{name}, which is not an ELF file"
        return hit, ""
    return None, ""


def check(fs: FileSystem, where: str, *, static: bool = False, accept: Iterable[AcceptMiss] = (),
          read: Callable[[list[str]], dict[str, bytes]] = lambda paths: {},
          providers: Callable[[], dict[str, list[str]]] = dict,
          installed: Iterable[str] = ()) -> tuple[Closure, list[AcceptMiss]]:
    """The closure of ``fs``; raises BuildError naming each unaccepted miss.

    Returns the closure and the ``accept`` entries that matched nothing.
    ``providers()`` (called only on failure) maps a library name to the
    packages that ship it, to say in the error which package would help.
    """
    closure = Closure()
    elves: list[tuple[str, Node, elf.ElfInfo]] = []
    for path in sorted(fs.nodes):
        node = fs.nodes[path]
        if node.kind not in ("file", "hardlink") or path.startswith(SKIP_PREFIXES):
            continue
        info = elf_of(node)
        if info is None or info.type not in (elf.ET_EXEC, elf.ET_DYN):
            continue
        elves.append((path, node, info))
        closure.elf_files += 1
        closure.dynamic += info.linked_dynamically
        closure.libraries += info.shared_object

    unreadable = [f"  {p} ({origin(n)}): {i.problem}" for p, n, i in elves if i.problem]
    if unreadable:
        raise BuildError(f"{where}: cannot read the dynamic section of {len(unreadable)} ELF file(s):\n"
                         + "\n".join(unreadable)
                         + "\n  If the image does not need them, drop them with the flavour's `remove:` in families.yaml")
    if static:
        dynamic = [f"  {p} ({origin(n)})" + (f", interpreter {i.interp}" if i.interp else "")
                   for p, n, i in elves if i.linked_dynamically]
        if dynamic:
            raise BuildError(f"{where} is declared `static: true` but ships {len(dynamic)} dynamically linked "
                             "ELF file(s); it has no dynamic linker or libraries to run them:\n"
                             + "\n".join(dynamic[:MAX_LISTED])
                             + (f"\n  ... and {len(dynamic) - MAX_LISTED} more" if len(dynamic) > MAX_LISTED else ""))
        return closure, list(accept)

    hints = hint_dirs(fs, read)
    misses: list[Miss] = []
    looked_up: dict[tuple[str, tuple[str, ...]], tuple[Optional[str], str]] = {}
    for path, node, info in elves:
        if info.interp is not None:
            hit = resolve(fs, info.interp)
            if hit is None or fs.nodes[hit].kind not in ("file", "hardlink"):
                misses.append(Miss(path, origin(node), info.interp, "interpreter", "not in the image"))
        own = [substitute_origin(fs, d, path) for d in info.search_path()]
        for name in info.needed:
            closure.needed += 1
            if "/" in name:
                target = substitute_origin(fs, name, path)
                hit = resolve(fs, target) if target.startswith("/") else None
                found = hit is not None and fs.nodes[hit].kind in ("file", "hardlink")
                if not found:
                    misses.append(Miss(path, origin(node), name, "library", f"no file {target}"))
                continue
            searched = own + hints + [d for d in STANDARD_LIBRARY_PATH if d not in hints]
            key = (name, tuple(searched))
            if key not in looked_up:   # most files need the same few libraries from the same places
                looked_up[key] = _find(fs, name, searched)
            hit, why = looked_up[key]
            if hit is None:
                misses.append(Miss(path, origin(node), name, "library", why or "not in " + ":".join(searched)))

    accepted = {(a.elf, a.soname): a for a in accept}
    used: set[tuple[str, str]] = set()
    failed: list[Miss] = []
    for m in misses:
        a = accepted.get((m.elf, m.soname))
        if a is None:
            failed.append(m)
        else:
            used.add((m.elf, m.soname))
            closure.accepted.append((m, a.reason))
    if failed:
        raise BuildError(_report(fs, where, failed, providers(), set(installed)))
    return closure, [a for k, a in accepted.items() if k not in used]


def _report(fs: FileSystem, where: str, failed: list[Miss], providers: dict[str, list[str]],
            installed: set[str]) -> str:
    def hint(m: Miss) -> str:
        name = m.soname.rsplit("/", 1)[-1]
        pkgs = providers.get(name, [])
        if not pkgs:
            return "no package in the lock provides it"
        here = [p for p in pkgs if p in installed]
        if here:
            copies = sorted(p for p, n in fs.nodes.items() if p.rsplit("/", 1)[-1] == name
                            or (n.elf is not None and n.elf.soname == name))
            if copies:
                return f"{', '.join(here)} installs it as {', '.join(copies)}, which is not where rtld looks"
            return f"{', '.join(here)} is installed, but its copy is not in the image (removed?)"
        return f"provided by {', '.join(pkgs)} (in the lock, not in this image)"

    lines = [f"{where}: {len(failed)} dynamic dependenc{'y' if len(failed) == 1 else 'ies'} "
             "that ld-elf.so.1 would not find at run time:"]
    for m in failed[:MAX_LISTED]:
        lines.append(f"  {m.elf} ({m.package}) needs {m.kind} {m.soname}: {m.detail}; {hint(m)}")
    if len(failed) > MAX_LISTED:
        lines.append(f"  ... and {len(failed) - MAX_LISTED} more")
    lines.append("  Install the package that provides it, or, if the image can do without, accept the miss in "
                 "families.yaml under this flavour:")
    lines.append("    accept-missing-libraries:")
    lines.append(f"      - {{elf: {failed[0].elf}, soname: {failed[0].soname}, reason: \"<why the image can do without it>\"}}")
    return "\n".join(lines)
