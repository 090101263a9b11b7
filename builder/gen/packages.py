"""What the generated pkgbase repository holds: realistic names, deps, files, scripts.

Modelled on FreeBSD 14's pkgbase packages (and the fixture made by pkg): the
same names, origins, dependencies, post-install scripts, config files, hard
links, symlinks and setuid files. Payload sizes grow with ``scale``.
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


def base_packages(arch: str, seed: str, ports_url: str) -> list[GenPackage]:
    f = Filler(f"{seed}/{arch}")
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
               GenFile("/usr/share/misc/termcap", kind="symlink", target="/etc/termcap", mode=0o777)]
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
    pkgs = [runtime, clibs, clibs_dev, openssl_lib, openssl, caroot, certctl, zoneinfo, mtree, kerberos,
            libarchive, libexecinfo, libucl, fetch, rc, bootstrap, rescue, utilities, utilities_man, runtime_dbg]
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
