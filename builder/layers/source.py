"""Where one arch's package bytes come from while its layers are built: fetched, scanned, read.

A package is fetched only when its bytes are needed (a layer to write, a file to read), never for a
layer the cache holds or a scan the scan cache holds; fetches asked for together run together.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional, Union

from builder.errors import BuildError
from builder.install.fsmodel import FileSystem
from builder.install.scan import ScannedPackage, read_member, scan_package
from builder.layers.cache import SCAN_ENTRY, ScanCache, layer_key
from builder.resolve.checksum import sha256_of
from builder.resolve.lock import ArchLock

# name -> file, or a function that fetches the named packages and returns name -> file
Packages = Union[Mapping[str, Path], Callable[[list[str]], Mapping[str, Path]]]


class PackageSource:
    def __init__(self, where: str, arch: str, epoch: int, lock: ArchLock, packages: Packages,
                 scans_cache: Optional[ScanCache] = None):
        self.where = where               # "<release>/<arch>": what a refusal names
        self.arch = arch
        self.epoch = epoch
        self.lock = lock
        self.packages = packages
        self.scans_cache = scans_cache
        self._fetched: dict[str, Path] = {}
        self._scans: dict[str, ScannedPackage] = {}
        # small file contents read from packages, remembered: every flavour's post-install
        # work asks for the same files (master.passwd, the CA certificates) again
        self._members: dict[tuple[str, str], bytes] = {}

    def available(self, name: str) -> bool:
        return name in self.lock.packages and (callable(self.packages) or name in self.packages)

    def fetch(self, names: list[str]) -> None:
        names = sorted(n for n in set(names) if n not in self._fetched)
        if names:
            got = self.packages(names) if callable(self.packages) else {n: self.packages[n] for n in names}
            self._fetched.update(got)

    def path(self, name: str) -> Path:
        if not self.available(name):
            raise BuildError(f"{self.where}: package {name} is not in the lock file")
        self.fetch([name])
        return self._fetched[name]

    def scanned(self, name: str) -> ScannedPackage:
        got = self._scans.get(name)
        if got is None:
            locked = self.lock.packages.get(name)
            cache = self.scans_cache if locked else None
            key = layer_key(scan=name, sum=locked.sum, arch=self.arch, epoch=self.epoch, entry=SCAN_ENTRY) \
                if cache else ""
            got = cache.get(key) if cache else None
            if got is None:
                got = scan_package(self.path(name), name, self.arch, self.epoch,
                                   version=locked.version if locked else None)
                # the bytes scanned are the bytes verified: a file swapped in the download cache after
                # its check must not reach the image, nor be filed under the honest package's key
                want = sha256_of(locked.sum) if locked else None
                if want is not None and got.sha256 != want:
                    raise BuildError(f"{self.where}: package {name}: the file read has sha256 {got.sha256}, not the "
                                     f"locked {want}: it changed after it was checked; refusing")
                if cache:
                    cache.put(key, got)
            self._scans[name] = got
        return got

    def providers(self) -> dict[str, list[str]]:
        """shared library -> the locked packages that provide it. Asked only on failure: scanning
        the whole lock costs a pass over packages no flavour may need."""
        out: dict[str, set[str]] = {}
        for name in sorted(n for n in self.lock.packages if self.available(n)):
            sp = self.scanned(name)
            for lib in sp.manifest.get("shlibs_provided") or ():
                out.setdefault(lib, set()).add(name)
            for node in sp.nodes:
                if node.elf is not None and node.elf.shared_object:
                    for key in {node.elf.soname, node.path.rsplit("/", 1)[1]} - {None}:
                        out.setdefault(key, set()).add(name)
        return {k: sorted(v) for k, v in out.items()}

    def member(self, name: str, member: str) -> bytes:
        """One file of a package, by its path in the package."""
        return self.members(name, {member: [member]})[member]

    def members(self, name: str, wanted: Mapping[str, list[str]]) -> dict[str, bytes]:
        """Files of one package (member -> contents), read in one pass over it, remembered."""
        out = {m: self._members[(name, m)] for m in wanted if (name, m) in self._members}
        rest = set(wanted) - set(out)
        if rest:
            got = read_member(self.path(name), name, rest)
            for m in rest:
                self._members[(name, m)] = out[m] = got[m]
        return out

    def read(self, fs: FileSystem, paths: list[str]) -> dict[str, bytes]:
        """The contents of these image paths: generated data, a scan's config files, or package members."""
        out: dict[str, bytes] = {}
        per_pkg: dict[str, dict[str, list[str]]] = {}   # package -> member -> every path naming it (hard links)
        for p in paths:
            node = fs.nodes[p]
            if node.data is not None:
                out[p] = node.data
            elif node.source.startswith("pkg:"):
                pkg, member = node.source[4:], node.target if node.kind == "hardlink" else node.path
                got = self._members.get((pkg, member))
                if got is None:
                    got = self.scanned(pkg).config.get(member)
                if got is not None:
                    out[p] = got
                else:
                    per_pkg.setdefault(pkg, {}).setdefault(member, []).append(p)
        for pkg, members in sorted(per_pkg.items()):
            got = self.members(pkg, members)
            for member, ps in members.items():
                for p in ps:
                    out[p] = got[member]
        return out
