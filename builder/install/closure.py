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
    return Resolver(fs).resolve(path)


class Resolver:
    """Path lookups in one filesystem, as the kernel makes them, each step taken once.

    A step is one name in one physical directory, followed through its
    symlinks; it is remembered with the number of symlinks it took, so a run
    path through a chain of 31 symlinks, named by three thousand files, costs
    the chain once and each later lookup a dictionary hit. MAX_SYMLINKS counts
    over a whole lookup, as the kernel counts, so a step is only remembered as
    failing for want of links below the budget it failed with.
    """

    def __init__(self, fs: FileSystem):
        self.fs = fs
        self._steps: dict[tuple[str, str], tuple[Optional[str], int]] = {}
        self._short: dict[tuple[str, str], int] = {}    # step -> the largest budget known too small
        self._walks: dict[str, tuple[Optional[str], int]] = {}

    def resolve(self, path: str) -> Optional[str]:
        return self.walk(path)[0]

    def walk(self, path: str) -> tuple[Optional[str], int]:
        """(physical path or None, symlinks followed) of an absolute (or root-relative) path."""
        got = self._walks.get(path)
        if got is None:
            got = self._walks[path] = self._walk("/", path, MAX_SYMLINKS)
        return got

    def step(self, here: str, name: str, budget: int) -> tuple[Optional[str], int]:
        """``name`` in the physical directory ``here``, its symlinks followed within ``budget`` links."""
        key = (here, name)
        got = self._steps.get(key)
        if got is not None:
            return got
        if budget <= self._short.get(key, -1):
            return None, budget + 1
        path = here.rstrip("/") + "/" + name
        node = self.fs.nodes.get(path)
        if node is None or node.kind != "symlink":
            got = (None if node is None else path, 0)
        elif budget < 1:
            got = (None, 1)
        else:
            # a relative target starts in the link's (physical) directory
            found, n = self._walk(here, node.target, budget - 1)
            got = (found, n + 1)
        if got[0] is None and got[1] > budget:
            self._short[key] = max(budget, self._short.get(key, -1))
        else:
            self._steps[key] = got
        return got

    def _walk(self, here: str, path: str, budget: int) -> tuple[Optional[str], int]:
        if path.startswith("/"):
            here = "/"
        parts = [p for p in path.split("/") if p not in ("", ".")]
        links = 0
        for i, part in enumerate(parts):
            if part == "..":
                here = posixpath.dirname(here)   # ``here`` is physical, so this is the real parent
                continue
            got, n = self.step(here, part, budget - links)
            links += n
            if got is None or links > budget:
                return None, links
            if i < len(parts) - 1 and got != "/" and self.fs.nodes[got].kind != "dir":
                return None, links
            here = got
        return here, links


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


def substitute_origin(path: str, origin_dir: str) -> str:
    return path.replace("${ORIGIN}", origin_dir).replace("$ORIGIN", origin_dir)


def _kind(fs: FileSystem, path: Optional[str]) -> Optional[str]:
    """The kind of what a lookup found ("dir" for the root, which is never a node)."""
    if path is None:
        return None
    return "dir" if path == "/" else fs.nodes[path].kind


def hint_dirs(fs: FileSystem, read: Callable[[list[str]], dict[str, bytes]],
              res: Optional[Resolver] = None) -> list[str]:
    """Directories ldconfig would put in the hints from the image's configuration files."""
    res = res or Resolver(fs)
    files = []
    conf = res.resolve(LD_ELF_SO_CONF)
    if _kind(fs, conf) in ("file", "hardlink"):
        files.append(conf)
    local = res.resolve(LDCONFIG_LOCAL_DIR)
    if local:
        # rc.d/ldconfig runs ``find DIR -type f``: regular files, at any depth, no symlinks
        files += sorted(p for p, n in fs.nodes.items()
                        if p.startswith(local.rstrip("/") + "/") and n.kind in ("file", "hardlink"))
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


def _search_dirs(res: Resolver, dirs: list[str]) -> tuple[tuple[str, int], ...]:
    """The directories of a search path that exist, as (physical path, symlinks to reach it), first of each kept.

    Spellings differ from file to file ($ORIGIN, symlinked parents); where
    they lead mostly does not, and lookups are remembered by where they lead.
    """
    out: dict[tuple[str, int], None] = {}
    for d in dirs:
        found = res.walk(d)
        if _kind(res.fs, found[0]) == "dir":
            out.setdefault(found)
    return tuple(out)


def _find(res: Resolver, name: str, dirs: tuple[tuple[str, int], ...]) -> tuple[Optional[str], str]:
    """(image path of the library, "") or (None, why not), from the directories of ``_search_dirs``."""
    for d, links in dirs:
        hit, more = res.step(d, name, MAX_SYMLINKS - links)
        if hit is None or links + more > MAX_SYMLINKS or _kind(res.fs, hit) not in ("file", "hardlink"):
            continue
        if elf_of(res.fs.nodes[hit]) is None:
            return None, f"rtld would stop at {d.rstrip('/')}/{name}, which is not an ELF file"
        return hit, ""
    return None, ""


class _Misses:
    """Misses sorted into accepted and failed; of the failed only what a report shows is kept."""

    def __init__(self, accept: Iterable[AcceptMiss], closure: Closure):
        self.accepted = {(a.elf, a.soname): a for a in accept}
        self.used: set[tuple[str, str]] = set()
        self.closure = closure
        self.failed: list[Miss] = []
        self.count = 0

    def add(self, m: Miss) -> None:
        a = self.accepted.get((m.elf, m.soname))
        if a is not None:
            self.used.add((m.elf, m.soname))
            self.closure.accepted.append((m, a.reason))
            return
        self.count += 1
        if len(self.failed) < MAX_LISTED:
            self.failed.append(m)


def _readable(elves: list[tuple[str, Node, elf.ElfInfo]], where: str) -> None:
    unreadable = [f"  {p} ({origin(n)}): {i.problem}" for p, n, i in elves if i.problem]
    if unreadable:
        raise BuildError(f"{where}: cannot read the dynamic section of {len(unreadable)} ELF file(s):\n"
                         + "\n".join(unreadable[:MAX_LISTED])
                         + (f"\n  ... and {len(unreadable) - MAX_LISTED} more" if len(unreadable) > MAX_LISTED else "")
                         + "\n  If the image does not need them, drop them with the flavour's `remove:` in families.yaml")


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
    _readable(elves, where)
    if static:
        dynamic = [f"  {p} ({origin(n)})" + (f", interpreter {i.interp}" if i.interp else "")
                   for p, n, i in elves if i.linked_dynamically]
        if dynamic:
            raise BuildError(f"{where} is declared `static: true` but ships {len(dynamic)} dynamically linked "
                             "ELF file(s); it has no dynamic linker or libraries to run them:\n"
                             + "\n".join(dynamic[:MAX_LISTED])
                             + (f"\n  ... and {len(dynamic) - MAX_LISTED} more" if len(dynamic) > MAX_LISTED else ""))
        return closure, list(accept)
    misses = _Misses(accept, closure)
    _look_up(fs, elves, hint_dirs(fs, read), misses)
    if misses.count:
        raise BuildError(_report(fs, where, misses.failed, misses.count, providers(), set(installed)))
    return closure, [a for k, a in misses.accepted.items() if k not in misses.used]


def _look_up(fs: FileSystem, elves: list[tuple[str, Node, elf.ElfInfo]], hints: list[str], misses: _Misses) -> None:
    """Every interpreter and DT_NEEDED of ``elves``, looked up the way rtld does.

    Linear in the files and their run-path entries: symlinks are followed once
    (Resolver), and a library is looked up once per distinct place to look.
    """
    res = Resolver(fs)
    default = hints + [d for d in STANDARD_LIBRARY_PATH if d not in hints]
    paths: dict[tuple[tuple[str, int], ...], int] = {}    # each distinct search path, by where it leads
    looked_up: dict[tuple[str, int], tuple[Optional[str], str]] = {}
    for path, node, info in elves:
        if info.interp is not None and _kind(fs, res.resolve(info.interp)) not in ("file", "hardlink"):
            misses.add(Miss(path, origin(node), info.interp, "interpreter", "not in the image"))
        # rtld takes the object's real directory (rtld_dirname_abs of the path
        # the kernel or rtld opened), so a symlinked parent is resolved first.
        here = posixpath.dirname(res.resolve(path) or path)
        searched: Optional[list[str]] = None
        for name in info.needed:
            misses.closure.needed += 1
            if "/" in name:
                target = substitute_origin(name, here)
                hit = res.resolve(target) if target.startswith("/") else None
                if _kind(fs, hit) not in ("file", "hardlink"):
                    misses.add(Miss(path, origin(node), name, "library", f"no file {target}"))
                continue
            if searched is None:
                searched = [substitute_origin(d, here) for d in info.search_path()] + default
                dirs = _search_dirs(res, searched)
                sid = paths.setdefault(dirs, len(paths))
                detail = ""
            key = (name, sid)
            if key not in looked_up:   # most files need the same few libraries from the same places
                looked_up[key] = _find(res, name, dirs)
            hit, why = looked_up[key]
            if hit is None:
                detail = detail or "not in " + ":".join(searched)   # one string for the file's misses
                misses.add(Miss(path, origin(node), name, "library", why or detail))


def _report(fs: FileSystem, where: str, failed: list[Miss], count: int, providers: dict[str, list[str]],
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

    lines = [f"{where}: {count} dynamic dependenc{'y' if count == 1 else 'ies'} "
             "that ld-elf.so.1 would not find at run time:"]
    for m in failed[:MAX_LISTED]:
        lines.append(f"  {m.elf} ({m.package}) needs {m.kind} {m.soname}: {m.detail}; {hint(m)}")
    if count > MAX_LISTED:
        lines.append(f"  ... and {count - MAX_LISTED} more")
    lines.append("  Install the package that provides it, or, if the image can do without, accept the miss in "
                 "families.yaml under this flavour:")
    lines.append("    accept-missing-libraries:")
    lines.append(f"      - {{elf: {failed[0].elf}, soname: {failed[0].soname}, reason: \"<why the image can do without it>\"}}")
    return "\n".join(lines)
