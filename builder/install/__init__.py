"""The work of pkgbase post-install scripts, done in Python without running FreeBSD binaries."""
