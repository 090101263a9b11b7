"""Build the FreeBSD OCI base-image family from pkgbase packages."""

__version__ = "0.1.0"
