"""What the generated pkgbase repository holds: realistic names, deps, files, scripts.

Modelled on FreeBSD 14's pkgbase packages (and the fixture made by pkg): the
same names, origins, dependencies, post-install scripts, config files, hard
links, symlinks and setuid files. Payload sizes grow with ``scale``. A line of
FreeBSD 15 or later (15.0, stable/15, main) gets that line's repository: its
package names and the FreeBSD-set-* metapackages (see ``fifteen``), as
tests/fixtures/freebsd-oci/images.yaml records them per line; 14.x lines have
14's names and no sets. The names are FreeBSD's own, never a release file's
package-map: a map that renamed them wrongly would ask for packages this
repository, like pkg.FreeBSD.org, does not have.
"""
from __future__ import annotations


from dataclasses import dataclass, field
from importlib import resources
from typing import Optional

from builder.common.compress import gzip_member
from builder.gen.payload import RTLD, Filler, ca_certificate, elf_image, tzif

PWD_SCRIPT = ("pwd_mkdb -i -p -d ${PKG_ROOTDIR}/etc ${PKG_ROOTDIR}/etc/master.passwd\n"
              "services_mkdb -l -q -o ${PKG_ROOTDIR}/var/db/services.db ${PKG_ROOTDIR}/etc/services")
CERTCTL_SCRIPT = "[ -x /usr/sbin/certctl ] && env DESTDIR=${PKG_ROOTDIR} /usr/sbin/certctl rehash"
CAP_MKDB_SCRIPT = "cap_mkdb ${PKG_ROOTDIR}/etc/login.conf"


@dataclass
class GenFile:
    path: str
    kind: str = "file"               # file | symlink | hardlink
    data: bytes = b""
    mode: int = 0o444
    target: str = ""                 # symlink target or hard link source
    uname: str = "root"
    gname: str = "wheel"
    # ELF stand-ins: ``data`` holds the filler body until ``link`` builds the
    # file around it with the package's libraries (eager filler keeps every
    # other file's bytes independent of link details).
    elf: Optional[str] = None        # exe | lib | rtld | static
    needed: tuple[str, ...] = ()     # besides the package's shlibs_required
    runpath: Optional[str] = None


@dataclass
class GenPackage:
    name: str
    origin: str
    comment: str
    deps: tuple[str, ...] = ()
    files: list[GenFile] = field(default_factory=list)
    directories: list[tuple[str, int]] = field(default_factory=list)
    config: tuple[str, ...] = ()
    scripts: dict[str, str] = field(default_factory=dict)
    vital: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    licenses: tuple[str, ...] = ("BSD2CLAUSE",)
    categories: tuple[str, ...] = ("base",)
    prefix: str = "/"
    shlibs_required: tuple[str, ...] = ()
    shlibs_provided: tuple[str, ...] = ()
    bulk_kb: int = 0                 # extra payload at scale 1
    bulk_dir: str = "/usr/lib"
    bulk_elf: bool = True            # False: the bulk is data files, not programs and libraries
    version: Optional[str] = None    # None: the repository's version
    desc: Optional[str] = None


def _data(name: str) -> bytes:
    return resources.files("builder.gen").joinpath("data").joinpath(name).read_bytes()


def _exe(path: str, arch: str, filler: Filler, size: int = 3064, mode: int = 0o555, **links) -> GenFile:
    return GenFile(path, data=filler.bytes(size), mode=mode, elf=links.pop("elf", "exe"), **links)


def _lib(path: str, arch: str, filler: Filler, size: int, **links) -> GenFile:
    return GenFile(path, data=filler.bytes(size), mode=0o444, elf=links.pop("elf", "lib"), **links)


def elf_stand_in(arch: str, kind: str, path: str, body: bytes, needed: tuple[str, ...],
                 runpath: Optional[str] = None) -> bytes:
    """The ELF file a stand-in of this kind is: what FreeBSD's would carry for the loader.

    Executables ask for ld-elf.so.1, libraries name themselves (DT_SONAME is
    the file name, as in FreeBSD), both need the package's libraries; rtld
    itself has a dynamic section but needs nothing; static ones have none.
    """
    name = path.rsplit("/", 1)[1]
    if kind == "static":
        return elf_image(arch, False, body, dynamic=False)
    if kind == "rtld":
        return elf_image(arch, True, body)
    if kind == "lib":
        return elf_image(arch, True, body, needed=tuple(n for n in needed if n != name), soname=name, runpath=runpath)
    return elf_image(arch, False, body, needed=needed, interp=RTLD, runpath=runpath)


def link(pkgs: list[GenPackage], arch: str) -> list[GenPackage]:
    for p in pkgs:
        for g in p.files:
            if g.elf is not None:
                g.data = elf_stand_in(arch, g.elf, g.path, g.data, tuple(dict.fromkeys(g.needed + p.shlibs_required)),
                                      g.runpath)
                g.elf = None
    return pkgs


def _etc(path: str, mode: int = 0o644) -> GenFile:
    return GenFile(path, data=_data("etc/" + path.rsplit("/", 1)[1]), mode=mode)


CA_ROOTS = ("Demo_Root_CA_Alpha", "Demo_Root_CA_Bravo", "Demo_Root_CA_Charlie", "Demo_Root_CA_Delta",
            "Demo_Root_CA_Echo", "Demo_Root_CA_Foxtrot", "Demo_Global_Root_G2", "Demo_Global_Root_G3")
CA_UNTRUSTED = ("Demo_Revoked_Root_CA",)


def _core_packages(arch: str, f: Filler, seed: str) -> list[GenPackage]:
    """The vital base: runtime, C libraries, OpenSSL, the CA roots and certctl."""
    kb = 1024
    libc = ("libc.so.7",)
    runtime_bins = ["/bin/sh", "/bin/ls", "/bin/cat", "/bin/cp", "/bin/mv", "/bin/rm", "/bin/mkdir",
                    "/bin/chmod", "/bin/test", "/bin/ln", "/bin/echo", "/bin/ps", "/bin/date", "/bin/csh",
                    "/sbin/init", "/sbin/nologin", "/usr/sbin/pwd_mkdb", "/usr/sbin/services_mkdb",
                    "/usr/sbin/pw", "/usr/bin/cap_mkdb", "/usr/bin/id", "/usr/bin/env", "/usr/bin/login",
                    "/usr/bin/passwd"]
    runtime = GenPackage(
        "FreeBSD-runtime", "base/runtime", "FreeBSD Base System", deps=("FreeBSD-clibs",), vital=True,
        annotations={"set": "minimal"},
        files=[_etc("/etc/master.passwd", 0o600), _etc("/etc/group"), _etc("/etc/login.conf"),
               _etc("/etc/services"), _etc("/etc/termcap.small"), _etc("/etc/shells"), _etc("/etc/rc.conf"),
               _etc("/etc/profile"), _etc("/etc/nsswitch.conf"), _etc("/etc/hosts"), _etc("/etc/protocols"),
               _etc("/etc/networks"), _etc("/etc/netconfig"),
               # as FreeBSD lays it out: the database in /usr/share/misc, /etc/termcap a link to it
               GenFile("/usr/share/misc/termcap", data=_data("etc/termcap.small"), mode=0o444),
               GenFile("/etc/termcap", kind="symlink", target="/usr/share/misc/termcap", mode=0o777)]
        + [_lib(p, arch, f, s) for p, s in (("/lib/libutil.so.9", 79 * kb), ("/lib/libedit.so.8", 96 * kb),
                                             ("/lib/libncursesw.so.9", 120 * kb), ("/lib/libxo.so.0", 60 * kb),
                                             ("/lib/libkvm.so.7", 40 * kb), ("/lib/libmd.so.6", 50 * kb),
                                             ("/lib/libelf.so.2", 52 * kb), ("/lib/libjail.so.1", 12 * kb),
                                             ("/lib/libsbuf.so.6", 10 * kb))]
        + [_exe(p, arch, f) for p in runtime_bins]
        + [_exe("/usr/bin/su", arch, f, 2064, 0o4555),
           GenFile("/usr/bin/chfn", kind="symlink", target="chpass", mode=0o777),
           GenFile("/bin/[", kind="hardlink", target="/bin/test", mode=0o555),
           GenFile("/usr/bin/chpass", kind="hardlink", target="/usr/bin/passwd", mode=0o555)],
        config=("/etc/master.passwd", "/etc/group", "/etc/login.conf", "/etc/services", "/etc/shells"),
        directories=[("/var/empty", 0o555), ("/root", 0o750), ("/tmp", 0o1777)],
        scripts={"post-install": PWD_SCRIPT + "\n" + CAP_MKDB_SCRIPT},
        shlibs_required=("libc.so.7", "libthr.so.3"),
        shlibs_provided=("libedit.so.8", "libelf.so.2", "libjail.so.1", "libkvm.so.7", "libmd.so.6",
                         "libncursesw.so.9", "libsbuf.so.6", "libutil.so.9", "libxo.so.0"),
        bulk_kb=300, bulk_dir="/usr/libexec")
    clibs = GenPackage(
        "FreeBSD-clibs", "base/clibs", "Core C Libraries", vital=True, annotations={"set": "minimal"},
        # pkg leaves a package's own libraries out of shlibs_required: these need libc all the same.
        files=[_lib("/lib/libc.so.7", arch, f, 400 * kb), _lib("/lib/libthr.so.3", arch, f, 60 * kb, needed=libc),
               _lib("/lib/libm.so.5", arch, f, 90 * kb, needed=libc),
               _lib("/lib/libgcc_s.so.1", arch, f, 40 * kb, needed=libc),
               _lib("/lib/libcxxrt.so.1", arch, f, 50 * kb, needed=("libgcc_s.so.1",) + libc),
               _exe("/libexec/ld-elf.so.1", arch, f, 60 * kb, elf="rtld"),
               _lib("/usr/lib/libc++.so.1", arch, f, 200 * kb, needed=("libcxxrt.so.1", "libgcc_s.so.1") + libc),
               _lib("/lib/libz.so.6", arch, f, 50 * kb, needed=libc),
               _lib("/lib/libcrypt.so.5", arch, f, 25 * kb, needed=libc),
               GenFile("/usr/lib/libthr.so", kind="symlink", target="../../lib/libthr.so.3", mode=0o777)],
        shlibs_provided=("libc++.so.1", "libc.so.7", "libcrypt.so.5", "libcxxrt.so.1", "libgcc_s.so.1",
                         "libm.so.5", "libthr.so.3", "libz.so.6"),
        bulk_kb=400, bulk_dir="/usr/lib/private")
    clibs_dev = GenPackage(
        "FreeBSD-clibs-dev", "base/clibs-dev", "Core C Libraries (Development Files)", deps=("FreeBSD-clibs",),
        files=[GenFile("/usr/include/stdio.h", data=b"/* stdio.h */\n#include <sys/cdefs.h>\n", mode=0o444),
               GenFile("/usr/lib/libc.a", data=f.bytes(8 * kb), mode=0o444)])
    openssl_lib = GenPackage(
        "FreeBSD-openssl-lib", "base/openssl-lib", "OpenSSL Libraries", deps=("FreeBSD-clibs",),
        files=[_lib("/lib/libcrypto.so.30", arch, f, 300 * kb), _lib("/usr/lib/libssl.so.30", arch, f, 80 * kb)],
        shlibs_required=("libc.so.7", "libthr.so.3"), shlibs_provided=("libcrypto.so.30", "libssl.so.30"),
        bulk_kb=300, bulk_dir="/usr/lib/engines-3")
    openssl = GenPackage(
        "FreeBSD-openssl", "base/openssl", "OpenSSL Utility", deps=("FreeBSD-openssl-lib",),
        files=[_exe("/usr/bin/openssl", arch, f, 4064),
               GenFile("/etc/ssl/openssl.cnf", data=b"# OpenSSL configuration\nopenssl_conf = default_conf\n", mode=0o644)],
        config=("/etc/ssl/openssl.cnf",),
        shlibs_required=("libc.so.7", "libcrypto.so.30", "libssl.so.30"))
    caroot = GenPackage(
        "FreeBSD-caroot", "base/caroot", "SSL Certificates", deps=("FreeBSD-openssl",), licenses=("MPL20",),
        files=[GenFile(f"/usr/share/certs/trusted/{n}.pem", data=ca_certificate(n, seed)) for n in CA_ROOTS]
        + [GenFile(f"/usr/share/certs/untrusted/{n}.pem", data=ca_certificate(n, seed)) for n in CA_UNTRUSTED],
        scripts={"post-install": CERTCTL_SCRIPT})
    certctl = GenPackage(
        "FreeBSD-certctl", "base/certctl", "Certificate management tool", deps=("FreeBSD-openssl",),
        files=[GenFile("/usr/sbin/certctl", data=b"#!/bin/sh\n# certctl: manage the trusted certificate store\n", mode=0o555)])
    return [runtime, clibs, clibs_dev, openssl_lib, openssl, caroot, certctl]


def _system_packages(arch: str, f: Filler) -> list[GenPackage]:
    """Time zones, the hierarchy specs and the libraries the larger flavours need."""
    kb = 1024
    zones = (("Etc/UTC", 0, "UTC"), ("Europe/London", 0, "GMT"), ("America/New_York", -18000, "EST"),
             ("Asia/Shanghai", 28800, "CST"), ("Europe/Berlin", 3600, "CET"), ("Asia/Tokyo", 32400, "JST"))
    zoneinfo = GenPackage(
        "FreeBSD-zoneinfo", "base/zoneinfo", "Timezone database", licenses=("PD",),
        annotations={"set": "minimal,minimal-jail"},
        files=[GenFile(f"/usr/share/zoneinfo/{z}", data=tzif(off, ab)) for z, off, ab in zones]
        + [GenFile("/usr/share/zoneinfo/zone.tab",
                   data="".join(f"XX\t+0000+00000\t{z}\n" for z, _, _ in zones).encode()),
           GenFile("/usr/share/zoneinfo/UTC", kind="hardlink", target="/usr/share/zoneinfo/Etc/UTC"),
           GenFile("/usr/share/zoneinfo/Etc/Universal", kind="hardlink", target="/usr/share/zoneinfo/Etc/UTC"),
           GenFile("/usr/share/zoneinfo/Etc/Zulu", kind="hardlink", target="/usr/share/zoneinfo/Etc/UTC")],
        bulk_kb=40, bulk_dir="/usr/share/zoneinfo/posix", bulk_elf=False)
    mtree = GenPackage(
        "FreeBSD-mtree", "base/mtree", "mtree utility and FreeBSD hierarchy specs",
        files=[GenFile(f"/etc/mtree/{n}", data=_data(f"mtree/{n}"), mode=0o444)
               for n in ("BSD.root.dist", "BSD.var.dist", "BSD.usr.dist", "BSD.include.dist", "BSD.debug.dist")]
        + [_exe("/usr/sbin/mtree", arch, f, 3064)], shlibs_required=("libc.so.7",))
    kerberos = GenPackage(
        "FreeBSD-kerberos-lib", "base/kerberos-lib", "Kerberos Libraries", deps=("FreeBSD-clibs",),
        files=[_lib("/usr/lib/libkrb5.so.11", arch, f, 60 * kb), _lib("/usr/lib/libgssapi.so.10", arch, f, 30 * kb)],
        shlibs_required=("libc.so.7", "libcrypto.so.30"), shlibs_provided=("libgssapi.so.10", "libkrb5.so.11"),
        bulk_kb=100, bulk_dir="/usr/lib/gssapi")
    libarchive = GenPackage(
        "FreeBSD-libarchive", "base/libarchive", "Archive library", deps=("FreeBSD-clibs",),
        files=[_lib("/usr/lib/libarchive.so.7", arch, f, 120 * kb)],
        shlibs_required=("libc.so.7", "libcrypto.so.30", "libz.so.6"), shlibs_provided=("libarchive.so.7",),
        bulk_kb=60)
    libexecinfo = GenPackage(
        "FreeBSD-libexecinfo", "base/libexecinfo", "Backtrace library", deps=("FreeBSD-clibs",),
        files=[_lib("/usr/lib/libexecinfo.so.1", arch, f, 12 * kb)], shlibs_provided=("libexecinfo.so.1",),
        shlibs_required=("libc.so.7",))
    libucl = GenPackage(
        "FreeBSD-libucl", "base/libucl", "UCL parsing library", deps=("FreeBSD-clibs",),
        files=[_lib("/usr/lib/libprivateucl.so.1", arch, f, 50 * kb)], shlibs_provided=("libprivateucl.so.1",),
        shlibs_required=("libc.so.7",), bulk_kb=20)
    fetch = GenPackage(
        "FreeBSD-fetch", "base/fetch", "fetch(1) and libfetch", deps=("FreeBSD-clibs",),
        files=[_exe("/usr/bin/fetch", arch, f, 2564), _lib("/usr/lib/libfetch.so.6", arch, f, 40 * kb)],
        shlibs_required=("libc.so.7", "libcrypto.so.30", "libssl.so.30"), shlibs_provided=("libfetch.so.6",),
        bulk_kb=20)
    return [zoneinfo, mtree, kerberos, libarchive, libexecinfo, libucl, fetch]


def _userland_packages(arch: str, f: Filler, ports_url: str) -> list[GenPackage]:
    """rc, pkg's bootstrap, rescue, the utilities and their manual and debug packages."""
    kb = 1024
    rc_files = ["DAEMON", "FILESYSTEMS", "LOGIN", "NETWORKING", "SERVERS", "cleanvar", "cron", "ldconfig",
                "netif", "routing", "syslogd", "tmp"]
    rc = GenPackage(
        "FreeBSD-rc", "base/rc", "FreeBSD rc scripts", deps=("FreeBSD-runtime",),
        files=[GenFile(f"/etc/rc.d/{n}", data=f"#!/bin/sh\n#\n# PROVIDE: {n}\n\n. /etc/rc.subr\n\nname=\"{n}\"\nrun_rc_command \"$1\"\n".encode(), mode=0o555)
               for n in rc_files]
        + [GenFile("/etc/rc", data=b"#!/bin/sh\n# System startup script run by init on autoboot\n", mode=0o644),
           GenFile("/etc/rc.subr", data=b"# rc.subr: functions used by various rc scripts\n" * 40, mode=0o644),
           GenFile("/etc/defaults/rc.conf", data=b"# This is rc.conf - a file full of useful variables\n" * 60, mode=0o644)],
        bulk_kb=30, bulk_dir="/usr/share/examples/rc", bulk_elf=False)
    bootstrap = GenPackage(
        "FreeBSD-pkg-bootstrap", "base/pkg-bootstrap", "pkg(7) bootstrap tool", deps=("FreeBSD-clibs",),
        files=[_exe("/usr/sbin/pkg", arch, f, 3064),
               GenFile("/etc/pkg/FreeBSD.conf", mode=0o644, data=(
                   'FreeBSD: {\n'
                   f'  url: "{ports_url}",\n'
                   '  mirror_type: "srv",\n'
                   '  signature_type: "fingerprints",\n'
                   '  fingerprints: "/usr/share/keys/pkg",\n'
                   '  enabled: yes\n'
                   '}\n').encode())],
        config=("/etc/pkg/FreeBSD.conf",),
        directories=[("/usr/share/keys/pkg/revoked", 0o755)], shlibs_required=("libc.so.7",))
    rescue = GenPackage(
        "FreeBSD-rescue", "base/rescue", "Statically linked rescue tools",
        files=[_exe("/rescue/rescue", arch, f, 200 * kb, elf="static")]
        + [GenFile(f"/rescue/{n}", kind="hardlink", target="/rescue/rescue", mode=0o555)
           for n in ("sh", "ls", "cat", "mount")])
    util_bins = ["awk", "sed", "grep", "find", "xargs", "tar", "less", "vi", "head", "tail", "sort", "uniq",
                 "wc", "tr", "cut", "diff", "cmp", "du", "file", "install"]
    utilities = GenPackage(
        "FreeBSD-utilities", "base/utilities", "Non-vital programs and libraries",
        deps=("FreeBSD-runtime", "FreeBSD-clibs"), annotations={"set": "minimal"},
        files=[_exe(f"/usr/bin/{n}", arch, f, 3064) for n in util_bins]
        + [GenFile("/usr/bin/more", kind="symlink", target="less", mode=0o777),
           GenFile("/usr/bin/egrep", kind="hardlink", target="/usr/bin/grep", mode=0o555),
           GenFile("/usr/bin/fgrep", kind="hardlink", target="/usr/bin/grep", mode=0o555)],
        shlibs_required=("libc.so.7", "libedit.so.8", "libutil.so.9"),
        bulk_kb=600, bulk_dir="/usr/libexec/utilities")
    utilities_man = GenPackage(
        "FreeBSD-utilities-man", "base/utilities-man", "Non-vital programs and libraries (Manual Pages)",
        deps=("FreeBSD-utilities",),
        files=[GenFile(f"/usr/share/man/man1/{n}.1.gz", data=gzip_member(f".Dd\n.Dt {n.upper()} 1\n".encode(), 9))
               for n in util_bins[:5]])
    runtime_dbg = GenPackage(
        "FreeBSD-runtime-dbg", "base/runtime-dbg", "FreeBSD Base System (Debugging Symbols)", deps=("FreeBSD-runtime",),
        files=[GenFile("/usr/lib/debug/bin/sh.debug", data=f.bytes(8 * kb), mode=0o444, elf="static")])
    return [rc, bootstrap, rescue, utilities, utilities_man, runtime_dbg]


def base_packages(arch: str, seed: str, ports_url: str, major: int = 14, pkg_conf: Optional[bytes] = None,
                  trust: Optional[dict[str, bytes]] = None) -> list[GenPackage]:
    """The base repository of a line of this ``major``. ``major`` >= 15 (15.0, stable/15, main)
    gives those lines': their package names, the packages FreeBSD's notoolchain image names, a
    FreeBSD-set-devel-sized toolchain and the FreeBSD-set-* metapackages; FreeBSD-pkg-bootstrap
    then ships ``pkg_conf`` as /etc/pkg/FreeBSD.conf and the ``trust`` files ({image path:
    content}), as FreeBSD 15's does."""
    f = Filler(f"{seed}/{arch}")
    # one Filler for all: the order the packages are made in is the order their bytes are drawn in
    pkgs = _core_packages(arch, f, seed) + _system_packages(arch, f) + _userland_packages(arch, f, ports_url)
    if major >= 15:
        pkgs = fifteen(pkgs, arch, seed, pkg_conf, trust or {})
    for p in pkgs:
        p.desc = p.comment + "."
    return link(pkgs, arch)


def ports_packages(arch: str, seed: str, abi_version: str) -> list[GenPackage]:
    f = Filler(f"{seed}/{arch}/ports")
    pkg = GenPackage(
        "pkg", "ports-mgmt/pkg", "Package manager", prefix="/usr/local", categories=("ports-mgmt",),
        annotations={"FreeBSD_version": abi_version, "flavor": ""}, version="2.0.6",
        # pkg finds libpkg next door through its run path, as a relocatable port would.
        files=[_exe("/usr/local/sbin/pkg", arch, f, 6 * 1024, needed=("libpkg.so.4",), runpath="$ORIGIN/../lib"),
               _exe("/usr/local/sbin/pkg-static", arch, f, 12 * 1024, elf="static"),
               _lib("/usr/local/lib/libpkg.so.4", arch, f, 8 * 1024),
               GenFile("/usr/local/etc/pkg.conf.sample", data=b"# pkg.conf: see pkg.conf(5)\n", mode=0o644),
               GenFile("/usr/local/share/man/man8/pkg.8.gz", data=gzip_member(b".Dd\n.Dt PKG 8\n", 9), mode=0o444)],
        shlibs_required=("libc.so.7", "libcrypto.so.30", "libssl.so.30"), shlibs_provided=("libpkg.so.4",),
        bulk_kb=40, bulk_dir="/usr/local/libexec/pkg")
    pkg.desc = "Package manager."
    return link([pkg], arch)


# --- FreeBSD 15 ------------------------------------------------------------------------------

# 15 moved these out of runtime and utilities into packages of their own
MOVED_IN_15 = {"/bin/csh": "FreeBSD-csh", "/usr/bin/vi": "FreeBSD-vi"}
# 15 kept 14's Kerberos names when MIT Kerberos replaced Heimdal: FreeBSD-kerberos (the client)
# and FreeBSD-kerberos-lib. (main called them FreeBSD-krb5* from c7da9fb90b0b to 4cb1baa7d85c,
# July 2025, before stable/15 branched; no line has those names.)
LIBS = ("libc.so.7", "libthr.so.3")
NCURSES = LIBS + ("libncursesw.so.9", "libutil.so.9")
SSL = LIBS + ("libcrypto.so.30", "libssl.so.30")
KRB = SSL + ("libkrb5.so.11", "libgssapi.so.10")
CXX = LIBS + ("libm.so.5", "libc++.so.1", "libcxxrt.so.1", "libgcc_s.so.1", "libz.so.6")

# name: (set(s), programs, libraries provided [(path, KiB)], text files [(path, mode)], shlibs required,
#        dependencies, bulk KiB at scale 1, bulk directory, bulk is ELF)
# The packages FreeBSD's notoolchain image adds (release/tools/oci-image-notoolchain.conf: the
# set-minimal-jail members, the packages it names besides, and the 57 of its earlier list), then
# FreeBSD-set-devel's: compilers, linkers, debugger, headers and static libraries, about 10 MB at
# scale 1 (--scale 100 gives a toolchain of about 1 GB, like FreeBSD's).
FIFTEEN = {
    "FreeBSD-acct": ("optional", ["/usr/sbin/accton", "/usr/sbin/sa", "/usr/bin/lastcomm"], [], [], LIBS, (), 20, "/usr/libexec/acct", True),
    "FreeBSD-at": ("optional", ["/usr/bin/at", "/usr/libexec/atrun"], [], [("/var/at/at.deny", 0o600)], LIBS, (), 10, "/usr/libexec/at", True),
    "FreeBSD-audit": ("optional", ["/usr/sbin/auditd", "/usr/sbin/audit", "/usr/sbin/praudit"],
                      [("/usr/lib/libbsm.so.3", 60)], [("/etc/security/audit_control", 0o600)], LIBS, (), 40, "/usr/libexec/audit", True),
    "FreeBSD-autofs": ("optional", ["/usr/sbin/automount", "/usr/sbin/automountd", "/usr/sbin/autounmountd"], [],
                       [("/etc/auto_master", 0o644)], LIBS + ("libutil.so.9",), (), 20, "/usr/libexec/autofs", True),
    "FreeBSD-bmake": ("devel", ["/usr/bin/make"], [], [("/usr/share/mk/sys.mk", 0o444)], LIBS, (), 30,
                      "/usr/share/mk", False),
    "FreeBSD-blocklist": ("optional", ["/usr/sbin/blocklistd", "/usr/sbin/blocklistctl"], [("/usr/lib/libblocklist.so.0", 16)],
                          [("/etc/blocklistd.conf", 0o644)], LIBS + ("libutil.so.9",), (), 10, "/usr/libexec/blocklist", True),
    "FreeBSD-bsnmp": ("optional", ["/usr/sbin/bsnmpd", "/usr/bin/bsnmpget"], [("/usr/lib/libbsnmp.so.6", 50)],
                      [("/etc/snmpd.config", 0o600)], SSL, (), 60, "/usr/lib/snmp", True),
    "FreeBSD-console-tools": ("minimal", ["/usr/sbin/kbdcontrol", "/usr/sbin/vidcontrol", "/usr/sbin/kbdmap"], [], [],
                              NCURSES, (), 120, "/usr/share/vt/keymaps", False),
    "FreeBSD-cron": ("minimal,minimal-jail", ["/usr/sbin/cron", "/usr/bin/crontab"], [], [("/etc/crontab", 0o644)],
                     LIBS + ("libutil.so.9",), (), 10, "/usr/libexec/cron", True),
    "FreeBSD-csh": ("minimal,minimal-jail", ["/bin/csh"], [], [("/etc/csh.cshrc", 0o644), ("/etc/csh.login", 0o644)],
                    NCURSES + ("libcrypt.so.5",), (), 20, "/usr/share/examples/tcsh", False),
    "FreeBSD-devd": ("minimal", ["/sbin/devd", "/usr/sbin/devctl"], [], [("/etc/devd.conf", 0o644)], CXX, (), 30, "/etc/devd", False),
    "FreeBSD-dma": ("minimal,minimal-jail", ["/usr/libexec/dma", "/usr/libexec/dma-mbox-create"], [],
                    [("/etc/dma/dma.conf", 0o644)], SSL, (), 20, "/usr/share/examples/dma", False),
    "FreeBSD-ee": ("minimal,minimal-jail", ["/usr/bin/ee"], [], [], NCURSES, (), 10, "/usr/share/nls/ee", False),
    "FreeBSD-fd": ("optional", ["/usr/sbin/fdcontrol", "/usr/sbin/fdformat", "/usr/bin/fdread", "/usr/bin/fdwrite"], [], [],
                   LIBS, (), 10, "/usr/libexec/fd", True),
    "FreeBSD-ftp": ("optional", ["/usr/bin/ftp", "/usr/libexec/ftpd"], [], [("/etc/ftpusers", 0o644)],
                    NCURSES + ("libedit.so.8",), (), 20, "/usr/libexec/ftp", True),
    "FreeBSD-inetd": ("optional", ["/usr/sbin/inetd"], [], [("/etc/inetd.conf", 0o644)], LIBS + ("libutil.so.9",), (),
                      10, "/usr/libexec/inetd", True),
    "FreeBSD-ipf": ("optional", ["/sbin/ipf", "/sbin/ipfstat", "/sbin/ipnat"], [], [], LIBS + ("libkvm.so.7",), (),
                    40, "/usr/share/examples/ipfilter", False),
    "FreeBSD-ipfw": ("optional", ["/sbin/ipfw", "/sbin/dnctl"], [], [], LIBS + ("libutil.so.9",), (), 20, "/usr/share/examples/ipfw", False),
    "FreeBSD-iscsi": ("optional", ["/usr/bin/iscsictl", "/usr/sbin/iscsid", "/usr/sbin/ctld"], [], [],
                      LIBS + ("libutil.so.9", "libxo.so.0"), (), 30, "/usr/libexec/iscsi", True),
    "FreeBSD-jail": ("minimal,minimal-jail", ["/usr/sbin/jail", "/usr/sbin/jexec", "/usr/sbin/jls"], [],
                     [("/etc/jail.conf.sample", 0o644)], LIBS + ("libjail.so.1", "libutil.so.9", "libxo.so.0"), (),
                     20, "/usr/share/examples/jails", False),
    "FreeBSD-kerberos": ("optional,optional-jail", ["/usr/bin/kinit", "/usr/bin/klist", "/usr/bin/kdestroy",
                                                     "/usr/sbin/kadmin"], [],
                         [("/etc/krb5.conf.sample", 0o644)], KRB, ("FreeBSD-kerberos-lib",), 80, "/usr/libexec/krb5", True),
    "FreeBSD-libcompiler_rt-dev": ("devel", [], [], [], (), (), 400, "/usr/lib/clang/19/lib/freebsd", False),
    "FreeBSD-locales": ("minimal,minimal-jail", [], [], [], (), (), 300, "/usr/share/locale", False),
    "FreeBSD-lp": ("optional", ["/usr/bin/lpr", "/usr/bin/lpq", "/usr/sbin/lpd"], [], [("/etc/printcap", 0o644)],
                   LIBS, (), 20, "/usr/libexec/lpr", True),
    "FreeBSD-natd": ("optional", ["/sbin/natd"], [], [], LIBS, (), 10, "/usr/libexec/natd", True),
    "FreeBSD-netmap": ("optional", ["/usr/sbin/valectl"], [("/usr/lib/libnetmap.so.0", 20)], [], LIBS, (), 10,
                       "/usr/libexec/netmap", True),
    "FreeBSD-newsyslog": ("minimal,minimal-jail", ["/usr/sbin/newsyslog"], [], [("/etc/newsyslog.conf", 0o644)],
                          LIBS + ("libutil.so.9",), (), 10, "/usr/libexec/newsyslog", True),
    "FreeBSD-nfs": ("optional", ["/sbin/mount_nfs", "/usr/sbin/nfsd", "/usr/sbin/mountd", "/usr/bin/showmount"], [], [],
                    LIBS + ("libutil.so.9",), (), 40, "/usr/libexec/nfs", True),
    "FreeBSD-nuageinit": ("optional", [], [], [("/usr/libexec/nuageinit", 0o555), ("/etc/rc.d/nuageinit", 0o555)], (), (),
                          10, "/usr/share/flua/nuage", False),
    "FreeBSD-periodic": ("minimal,minimal-jail", [], [], [("/usr/sbin/periodic", 0o555), ("/etc/periodic/daily/100.clean-disks", 0o555),
                                                         ("/etc/defaults/periodic.conf", 0o644)], (), (), 20, "/etc/periodic/security", False),
    "FreeBSD-pf": ("optional", ["/sbin/pfctl", "/usr/sbin/ftp-proxy", "/usr/sbin/authpf"], [("/lib/libpfctl.so.0", 30)],
                   [("/etc/pf.os", 0o644)], LIBS + ("libutil.so.9",), (), 40, "/usr/share/examples/pf", False),
    "FreeBSD-quotacheck": ("optional", ["/sbin/quotacheck", "/usr/sbin/repquota", "/usr/bin/quota"], [], [],
                           LIBS + ("libutil.so.9",), (), 10, "/usr/libexec/quota", True),
    "FreeBSD-rcmds": ("optional", ["/usr/bin/rsh", "/usr/bin/rlogin", "/usr/sbin/rwhod"], [], [], LIBS + ("libutil.so.9",), (),
                      10, "/usr/libexec/rcmds", True),
    "FreeBSD-resolvconf": ("minimal,minimal-jail", [], [], [("/sbin/resolvconf", 0o555), ("/etc/resolvconf.conf", 0o644)], (), (),
                           10, "/usr/libexec/resolvconf", False),
    "FreeBSD-ssh": ("minimal,minimal-jail", ["/usr/bin/ssh", "/usr/bin/scp", "/usr/bin/sftp", "/usr/sbin/sshd",
                                             "/usr/bin/ssh-keygen", "/usr/bin/ssh-agent"], [("/usr/lib/libprivatessh.so.5", 200)],
                    [("/etc/ssh/sshd_config", 0o644), ("/etc/ssh/ssh_config", 0o644), ("/etc/ssh/moduli", 0o644)],
                    KRB + ("libutil.so.9", "libz.so.6"), ("FreeBSD-openssl-lib", "FreeBSD-kerberos-lib"), 150, "/usr/libexec/ssh", True),
    "FreeBSD-syslogd": ("minimal,minimal-jail", ["/usr/sbin/syslogd"], [], [("/etc/syslog.conf", 0o644)],
                        LIBS + ("libutil.so.9",), (), 10, "/usr/libexec/syslogd", True),
    "FreeBSD-tcpd": ("optional", ["/usr/sbin/tcpd", "/usr/sbin/tcpdchk"], [("/usr/lib/libwrap.so.6", 20)], [("/etc/hosts.allow", 0o644)],
                     LIBS, (), 10, "/usr/libexec/tcpd", True),
    "FreeBSD-telnet": ("optional", ["/usr/bin/telnet"], [], [], NCURSES + ("libcrypto.so.30",), (), 20, "/usr/libexec/telnet", True),
    "FreeBSD-ufs": ("minimal", ["/sbin/newfs", "/sbin/fsck_ffs", "/sbin/tunefs", "/sbin/dumpfs", "/sbin/growfs"],
                    [("/lib/libufs.so.8", 30)], [], LIBS + ("libutil.so.9",), (), 40, "/usr/libexec/ufs", True),
    "FreeBSD-unbound": ("optional", ["/usr/sbin/local-unbound", "/usr/sbin/local-unbound-control"],
                        [("/usr/lib/libprivateunbound.so.5", 150)], [], SSL, ("FreeBSD-openssl-lib",), 60,
                        "/usr/libexec/unbound", True),
    "FreeBSD-vi": ("minimal,minimal-jail", ["/usr/bin/vi"], [], [("/usr/share/vi/catalog/english", 0o444)], NCURSES, (),
                   60, "/usr/share/vi/catalog", False),
    "FreeBSD-xz": ("optional,optional-jail", ["/usr/bin/xz"], [("/usr/lib/liblzma.so.5", 60)], [], LIBS, (), 20,
                   "/usr/libexec/xz", True),
    "FreeBSD-yp": ("optional", ["/usr/bin/ypcat", "/usr/bin/ypmatch", "/usr/sbin/ypbind"], [("/usr/lib/libypclnt.so.4", 20)], [],
                   LIBS, (), 20, "/usr/libexec/yp", True),
    "FreeBSD-zfs": ("minimal", ["/sbin/zfs", "/sbin/zpool", "/usr/sbin/zdb", "/sbin/bectl"],
                    [("/lib/libzfs.so.4", 300), ("/lib/libnvpair.so.2", 60), ("/lib/libzfs_core.so.2", 40), ("/lib/libuutil.so.2", 30)],
                    [("/etc/zfs/zpool.d/README", 0o644)], LIBS + ("libm.so.5", "libz.so.6", "libcrypto.so.30", "libgeom.so.5"),
                    ("FreeBSD-geom",), 300, "/usr/libexec/zfs", True),
    "FreeBSD-geom": ("minimal", ["/sbin/geom", "/sbin/gpart"], [("/lib/libgeom.so.5", 30)], [], LIBS + ("libutil.so.9",), (),
                     20, "/lib/geom", True),
    # FreeBSD-set-devel
    "FreeBSD-clang": ("devel", ["/usr/bin/clang", "/usr/bin/clang-cpp", "/usr/bin/clang-format"], [], [], CXX + ("libexecinfo.so.1",),
                      (), 4200, "/usr/libexec/clang", True),
    "FreeBSD-lld": ("devel", ["/usr/bin/ld.lld"], [], [], CXX, (), 900, "/usr/libexec/lld", True),
    "FreeBSD-lldb": ("devel", ["/usr/bin/lldb", "/usr/bin/lldb-server"], [("/usr/lib/liblldb.so.19", 300)], [],
                     CXX + ("libedit.so.8", "libncursesw.so.9", "libxo.so.0"), (), 1500, "/usr/libexec/lldb", True),
    "FreeBSD-toolchain": ("devel", ["/usr/bin/ar", "/usr/bin/nm", "/usr/bin/objcopy", "/usr/bin/readelf", "/usr/bin/size",
                                    "/usr/bin/strings", "/usr/bin/strip", "/usr/bin/addr2line", "/usr/bin/c++filt",
                                    "/usr/bin/yacc", "/usr/bin/lex"], [], [],
                          LIBS + ("libelf.so.2", "libz.so.6"), (), 600, "/usr/libexec/toolchain", True),
    "FreeBSD-clibs-dev": ("devel", [], [], [("/usr/include/stdlib.h", 0o444), ("/usr/include/unistd.h", 0o444)], (),
                          ("FreeBSD-clibs",), 1200, "/usr/lib/static", False),
    "FreeBSD-runtime-dev": ("devel", [], [], [("/usr/include/libutil.h", 0o444)], (), ("FreeBSD-runtime",), 300,
                            "/usr/include/runtime", False),
    "FreeBSD-openssl-lib-dev": ("devel", [], [], [("/usr/include/openssl/ssl.h", 0o444)], (), ("FreeBSD-openssl-lib",), 400,
                                "/usr/include/openssl/all", False),
    "FreeBSD-kerberos-lib-dev": ("devel", [], [], [("/usr/include/krb5.h", 0o444)], (), ("FreeBSD-kerberos-lib",), 200,
                                 "/usr/include/krb5", False),
    "FreeBSD-zfs-dev": ("devel", [], [], [("/usr/include/libzfs.h", 0o444)], (), ("FreeBSD-zfs",), 300,
                        "/usr/include/zfs", False),
    "FreeBSD-libarchive-dev": ("devel", [], [], [("/usr/include/archive.h", 0o444)], (), ("FreeBSD-libarchive",), 200,
                               "/usr/include/libarchive", False),
}
# the explicit dependencies of the sets (release/packages/sets/*.ucl); members come from the annotations
SET_DEPS = {"devel": ("minimal",), "optional": ("minimal",), "optional-jail": ("minimal-jail",),
            "base": ("minimal", "optional", "devel"), "base-jail": ("minimal-jail", "optional-jail", "devel")}
SET_COMMENTS = {"minimal": "Basic multi-user system", "minimal-jail": "Basic multi-user jail system",
                "devel": "Developments tools", "optional": "Optional base system software",
                "optional-jail": "Optional base system software for jails", "base": "All base system software",
                "base-jail": "All base system software for jails"}
# sets of the packages the 14 model already has
SETS_15 = {"FreeBSD-runtime": "minimal,minimal-jail", "FreeBSD-clibs": "minimal,minimal-jail",
           "FreeBSD-utilities": "minimal,minimal-jail", "FreeBSD-zoneinfo": "minimal,minimal-jail",
           "FreeBSD-openssl-lib": "minimal,minimal-jail", "FreeBSD-openssl": "minimal,minimal-jail",
           "FreeBSD-caroot": "minimal,minimal-jail", "FreeBSD-certctl": "minimal,minimal-jail",
           "FreeBSD-mtree": "minimal,minimal-jail", "FreeBSD-kerberos-lib": "minimal,minimal-jail",
           "FreeBSD-libarchive": "minimal,minimal-jail", "FreeBSD-libexecinfo": "minimal,minimal-jail",
           "FreeBSD-libucl": "minimal,minimal-jail", "FreeBSD-fetch": "minimal,minimal-jail",
           "FreeBSD-rc": "minimal,minimal-jail", "FreeBSD-pkg-bootstrap": "minimal,minimal-jail",
           "FreeBSD-rescue": "minimal", "FreeBSD-clibs-dev": "devel", "FreeBSD-utilities-man": "optional",
           "FreeBSD-runtime-dbg": "base-dbg"}


def _text(path: str) -> bytes:
    return f"# {path}: generated stand-in for FreeBSD's file\n".encode()


def fifteen(pkgs: list[GenPackage], arch: str, seed: str, pkg_conf: Optional[bytes],
            trust: dict[str, bytes]) -> list[GenPackage]:
    """The base repository of FreeBSD 15 and later lines from 14's model: the packages split out,
    the notoolchain and devel packages, and the set metapackages (as release/packages/create-sets.sh
    makes them: one FreeBSD-set-NAME per ``set`` annotation, depending on its members). 14's
    names stay: 15 renamed none of the packages modelled here."""
    f = Filler(f"{seed}/{arch}/15")
    by = {p.name: p for p in pkgs}
    for p in by.values():
        p.files = [g for g in p.files if g.path not in MOVED_IN_15]
        if p.name in SETS_15:
            p.annotations = dict(p.annotations, set=SETS_15[p.name])
    boot = by["FreeBSD-pkg-bootstrap"]
    if pkg_conf is not None:
        boot.files = [g for g in boot.files if g.path != "/etc/pkg/FreeBSD.conf"] + [
            GenFile("/etc/pkg/FreeBSD.conf", data=pkg_conf, mode=0o644)]
    dirs = sorted({p.rsplit("/", 1)[0] for p in trust} | {p.rsplit("/", 2)[0] + "/revoked" for p in trust})
    boot.files += [GenFile(p, data=trust[p], mode=0o644) for p in sorted(trust)]
    boot.directories = sorted(set(boot.directories) | {(d, 0o755) for d in dirs})
    for name, (sets, bins, libs, texts, needs, deps, bulk, bulk_dir, bulk_elf) in FIFTEEN.items():
        short = name[len("FreeBSD-"):]
        p = by.get(name) or GenPackage(name, f"base/{short}", FIFTEEN_COMMENTS.get(name, f"FreeBSD {short}"))
        p.annotations = dict(p.annotations, set=sets)
        p.files = list(p.files) + [_exe(b, arch, f, 3064) for b in bins] \
            + [_lib(path, arch, f, kib * 1024) for path, kib in libs] \
            + [GenFile(path, data=_text(path), mode=mode) for path, mode in texts]
        p.shlibs_required = tuple(dict.fromkeys(p.shlibs_required + tuple(needs)))
        p.shlibs_provided = tuple(sorted(set(p.shlibs_provided) | {path.rsplit("/", 1)[1] for path, _ in libs}))
        p.deps = tuple(dict.fromkeys(p.deps + tuple(deps)))
        p.config = tuple(dict.fromkeys(p.config + tuple(path for path, mode in texts if path.startswith("/etc/")
                                                        and mode & 0o111 == 0)))
        if bulk and p.bulk_kb == 0:
            p.bulk_kb, p.bulk_dir, p.bulk_elf = bulk, bulk_dir, bulk_elf
        by[name] = p
    # the hard links FreeBSD's packages carry for these programs
    by["FreeBSD-csh"].files.append(GenFile("/bin/tcsh", kind="hardlink", target="/bin/csh", mode=0o555))
    by["FreeBSD-vi"].files += [GenFile(f"/usr/bin/{n}", kind="hardlink", target="/usr/bin/vi", mode=0o555)
                               for n in ("ex", "view", "nvi", "nex", "nview")]
    by["FreeBSD-ee"].files.append(GenFile("/usr/bin/edit", kind="hardlink", target="/usr/bin/ee", mode=0o555))
    by["FreeBSD-clang"].files += [GenFile(f"/usr/bin/{n}", kind="hardlink", target="/usr/bin/clang", mode=0o555)
                                  for n in ("cc", "c++", "clang++", "cpp")]
    by["FreeBSD-lld"].files.append(GenFile("/usr/bin/ld", kind="symlink", target="ld.lld", mode=0o777))
    out = sorted(by.values(), key=lambda p: p.name)
    members: dict[str, list[str]] = {}
    for p in out:
        for s in (p.annotations.get("set") or "").split(","):
            if s:
                members.setdefault(s, []).append(p.name)
    for s in sorted(set(members) | set(SET_DEPS)):
        deps = tuple(f"FreeBSD-set-{d}" for d in SET_DEPS.get(s, ())) + tuple(members.get(s, ()))
        out.append(GenPackage(f"FreeBSD-set-{s}", "base", f"{SET_COMMENTS.get(s, s)} (metapackage)", deps=deps,
                              vital=s in ("minimal", "minimal-jail")))
    return out


FIFTEEN_COMMENTS = {
    "FreeBSD-kerberos": "Kerberos client", "FreeBSD-ssh": "Secure Shell", "FreeBSD-zfs": "ZFS filesystem",
    "FreeBSD-clang": "Clang C/C++ compiler", "FreeBSD-lld": "LLVM linker", "FreeBSD-lldb": "LLVM debugger",
    "FreeBSD-toolchain": "Binary utilities", "FreeBSD-locales": "Locale data", "FreeBSD-pf": "pf packet filter",
    "FreeBSD-bmake": "Program maintenance utility", "FreeBSD-xz": "LZMA2 data compression",
}
