import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PKGREPO = FIXTURES / "pkgbase-repo"
ETC = FIXTURES / "freebsd-13.2-etc"


@pytest.fixture
def project_copy(tmp_path):
    """A writable copy of the project's declarative files."""
    dst = tmp_path / "project"
    dst.mkdir()
    shutil.copy(ROOT / "families.yaml", dst)
    shutil.copytree(ROOT / "releases", dst / "releases")
    shutil.copytree(ROOT / "templates", dst / "templates")
    shutil.copytree(ROOT / "keys", dst / "keys")
    return dst


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
    os.environ.pop("FREEBSD_IMAGES_CACHE", None)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # No test may touch the user's cache or depend on one.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for var in ("FREEBSD_IMAGES_MIRROR", "FREEBSD_IMAGES_KEYS", "FREEBSD_IMAGES_REGISTRY_INSECURE"):
        monkeypatch.delenv(var, raising=False)
    yield
