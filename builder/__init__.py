"""Build the FreeBSD OCI base-image family from pkgbase packages."""

__version__ = "0.1.0"

# Bumped whenever the same inputs would give different output bytes (tar layout, compression
# framing, pkg database writer): part of every image's build-environment annotation.
FORMAT_VERSION = 2
