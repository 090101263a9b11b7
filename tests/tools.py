"""External tools the tests check our output with: skipped locally when absent, required under CI.

Locally a missing tool skips the test with one line naming the Debian package
that brings it; with CI=true (as .ci/run runs) a missing tool fails the run,
so a green CI always means the real tools looked at the output.
"""
from __future__ import annotations

import os
import shutil

import pytest

# The independent OCI tools. A test that needs any of them (under CI it fails without them) is
# marked tools, so that pytest -m "not tools" runs exactly the tests that need none of them.
TOOLS = ("skopeo", "umoci", "oci-image-tool", "docker-registry")

DEBIAN_PACKAGE = {
    "skopeo": "skopeo", "umoci": "umoci", "oci-image-tool": "oci-image-tool",
    "docker-registry": "docker-registry", "diffoscope": "diffoscope-minimal", "sqlite3": "sqlite3",
    "gpg": "gnupg", "readelf": "binutils", "podman": "podman",
}


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _missing(tools) -> list[str]:
    return [t for t in tools if not shutil.which(t)]


def _message(missing: list[str]) -> str:
    pkgs = " ".join(sorted({DEBIAN_PACKAGE.get(t, t) for t in missing}))
    return f"not installed: {', '.join(missing)} (apt-get install {pkgs}; .ci/run installs them)"


def require(*tools: str) -> None:
    """Skip the calling test (or fixture) unless every tool is on PATH; under CI, fail instead."""
    missing = _missing(tools)
    if missing:
        if under_ci():
            pytest.fail(_message(missing))
        pytest.skip(_message(missing))


def have(tool: str) -> bool:
    """For an extra check inside a test: False locally when absent, a failure under CI."""
    if shutil.which(tool):
        return True
    if under_ci():
        pytest.fail(_message([tool]))
    return False
