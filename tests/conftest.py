import os
import shutil
from pathlib import Path

import pytest

from tests.registry import RegistryServer
from tests.tools import require

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PKGREPO = FIXTURES / "pkgbase-repo"
ETC = FIXTURES / "freebsd-13.2-etc"


def demo_project(tmp_path: Path) -> Path:
    """A writable copy of the project's declarative files (families.yaml, releases/, templates/, keys/)
    at tmp_path/project: the project_copy fixture, for tests that want it under another tmp dir."""
    dst = tmp_path / "project"
    dst.mkdir()
    shutil.copy(ROOT / "families.yaml", dst)
    for d in ("releases", "templates", "keys"):
        shutil.copytree(ROOT / d, dst / d)
    return dst


@pytest.fixture
def project_copy(tmp_path):
    """A writable copy of the project's declarative files."""
    return demo_project(tmp_path)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real registry (Debian's docker-registry) on 127.0.0.1, one per module; tests using it are marked tools."""
    require("docker-registry")
    srv = RegistryServer(tmp_path_factory.mktemp("registry"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def demo_mirror(tmp_path_factory):
    """The generated offline mirror for 14.2 (both arches), made once per worker."""
    from builder.config.release import load_release
    from builder.gen.repo import GenOptions, generate
    out = tmp_path_factory.mktemp("mirror")
    generate(load_release(ROOT / "releases" / "14.2.yaml", ROOT), out, opts=GenOptions())
    return out


@pytest.fixture(scope="session", autouse=True)
def _no_user_cache(tmp_path_factory):
    # Module- and session-scoped fixtures build before the per-test cache below is set:
    # they too must never read the user's cache (entries from other builder versions).
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("session-cache"))
    # the cache key lives in the configuration directory: never the user's either
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("session-config"))
    os.environ.pop("FREEBSD_IMAGES_CACHE", None)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # No test may touch the user's cache or depend on one.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    for var in ("FREEBSD_IMAGES_MIRROR", "FREEBSD_IMAGES_KEYS", "FREEBSD_IMAGES_REGISTRY_INSECURE"):
        monkeypatch.delenv(var, raising=False)
    yield


TINY_FAMILY = """
schema: 1
flavours:
  tiny:
    description: one package
    packages: [FreeBSD-zoneinfo]
"""


@pytest.fixture
def hostile_mirror(demo_mirror, tmp_path):
    """A writable copy of the demo mirror's amd64 repositories, and a project with one tiny flavour
    (tests/test_hostile.py and tests/test_hostile_packages.py tamper with them)."""
    abi = "FreeBSD:14:amd64"
    m = tmp_path / "mirror"
    shutil.copytree(demo_mirror / abi, m / abi)
    shutil.copytree(demo_mirror / "keys", m / "keys")
    proj = tmp_path / "project"
    (proj / "releases").mkdir(parents=True)
    (proj / "families.yaml").write_text(TINY_FAMILY)
    shutil.copy(ROOT / "releases/14.2.yaml", proj / "releases/14.2.yaml")
    shutil.copytree(ROOT / "templates", proj / "templates")
    shutil.copytree(ROOT / "keys", proj / "keys")
    return m, proj
