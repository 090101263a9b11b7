"""From source, same bits: the pinned writers built from their sdists give the golden digests.

A host without wheels (FreeBSD, or macOS on a Python no wheel covers) builds apsw, deflate and
zstandard from source. Each test makes a scratch venv, installs the writers built here with
`--no-binary` and every other dependency as a wheel at its pinned version (constraints.txt), and
builds the demo family with that venv's Python: the refs must be the golden ones
(tests/fixtures/golden/). How the sdists are built: tests/from_source.py.

apsw's sdist needs the SQLite release it bundles, sqlite-autoconf-3500100.tar.gz, which it downloads
from sqlite.org; no registry reachable here ships it, so the apsw test runs only where that file is
supplied (FREEBSD_IMAGES_SOURCES, as the nightly's from-source job does) and skips, naming it, elsewhere.
"""
from __future__ import annotations

import json
import os

import pytest

from tests import from_source, golden
from tests.tools import under_ci

pytestmark = pytest.mark.slow


def _mismatch(got: dict, want: dict) -> str:
    return "\n".join(f"  {comp} {ref}: built {got.get(comp, {}).get(ref)}, golden {want.get(comp, {}).get(ref)}"
                     for comp in sorted(set(got) | set(want))
                     for ref in sorted(set(got.get(comp, {})) | set(want.get(comp, {})))
                     if got.get(comp, {}).get(ref) != want.get(comp, {}).get(ref))


@pytest.fixture(scope="module")
def golden_refs():
    return json.loads(golden.GOLDEN.read_text())["refs"]


@pytest.fixture(scope="module")
def toolchain():
    missing = from_source.missing_toolchain()
    if missing:
        msg = (f"building the writers from source needs {' and '.join(missing)} "
               f"(apt-get install build-essential python3-dev)")
        (pytest.fail if under_ci() else pytest.skip)(msg)


@pytest.fixture(scope="module")
def compressors_from_source(toolchain, tmp_path_factory):
    """deflate and zstandard wheels compiled here from their sdists (bundled libdeflate, libzstd)."""
    work = tmp_path_factory.mktemp("writers-src")
    pip = from_source.make_venv(work / "build-venv")
    return from_source.build_wheels(pip, ("deflate", "zstandard"), work / "wheelhouse")


def build_with(tmp_path, demo_mirror, wheels: dict) -> tuple[dict, dict]:
    """A scratch venv with these wheels and every other dependency from its wheel; (what runs, refs)."""
    pip = from_source.make_venv(tmp_path / "venv")
    from_source.install(pip, list(wheels.values()))
    python = str(tmp_path / "venv" / "bin" / "python")
    runs = from_source.what_runs(python)
    for name, wheel in wheels.items():  # the writer that runs is the one compiled here, not a wheel from PyPI
        assert runs["from"][name] == wheel.as_uri(), (name, runs["from"])
    assert runs["versions"] == {w: from_source.pinned(w) for w in from_source.WRITERS}
    assert runs["drift"] == [], "a writer built from source is not the pinned one:\n" + "\n".join(runs["drift"])
    work = tmp_path / "build"
    work.mkdir()
    return runs, golden.build_all(demo_mirror, work, prefix=[python, "-m", "builder"])


def test_deflate_and_zstandard_from_source_give_the_golden_digests(compressors_from_source, demo_mirror, tmp_path,
                                                                     golden_refs):
    runs, got = build_with(tmp_path, demo_mirror, compressors_from_source)
    assert runs["from"]["apsw"] == ""          # apsw: its pinned wheel from the index
    assert (runs["zstd"], runs["zstandard_backend"]) == ("1.5.6", "cext")
    assert got == golden_refs, "deflate/zstandard built from source write other bytes:\n" + _mismatch(got, golden_refs)


def test_all_three_writers_from_source_give_the_golden_digests(request, demo_mirror, tmp_path, golden_refs):
    version = from_source.pinned("apsw")
    tarball, missing = from_source.find_sqlite_tarball(version)
    if tarball is None:
        if from_source.SOURCES_ENV in os.environ:   # the from-source job supplies it: missing there is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    request.getfixturevalue("toolchain")
    # the tarball is checked against the apsw sdist's checksums before anything is compiled
    tree = from_source.prepare_apsw(from_source.download_sdist("apsw", version, tmp_path / "sdist"), tarball,
                                    tmp_path / "apsw-src")
    wheels = dict(request.getfixturevalue("compressors_from_source"))
    pip = from_source.make_venv(tmp_path / "apsw-build-venv")
    wheels["apsw"] = from_source.build_apsw_wheel(pip, tree, tmp_path / "wheelhouse")
    runs, got = build_with(tmp_path, demo_mirror, wheels)
    assert (runs["sqlite"], runs["amalgamation"]) == (".".join(version.split(".")[:3]), True)
    assert got == golden_refs, "the writers built from source write other bytes:\n" + _mismatch(got, golden_refs)
