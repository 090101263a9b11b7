"""The writers that shape output bytes are pinned where pip sees them, and checked before a byte is written."""
from __future__ import annotations

import dataclasses
import re

from builder.cli import main
from builder.common import writers
from builder.oci.layout import Layout
from tests.conftest import ROOT, demo_project

RELEASE = "14.2"


def _pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r'^\s*"?([A-Za-z0-9_.-]+)==([0-9][^";\s#]*)', text, re.M)}


def test_pyproject_and_constraints_pin_exactly_the_writers_the_check_wants():
    # pip install . (no constraints) must get the writers the golden digests were made with
    pyproject, constraints = _pins((ROOT / "pyproject.toml").read_text()), _pins((ROOT / "constraints.txt").read_text())
    for w in writers.PINS:
        assert pyproject.get(w.distribution) == w.version, (w.distribution, "pyproject.toml")
        assert constraints.get(w.distribution) == w.version, (w.distribution, "constraints.txt")


def test_the_pinned_environment_has_no_drift():
    # this environment is installed from constraints.txt and builds the golden digests
    # (tests/test_reproducible.py): its writers' versions and probes are the pins
    assert writers.drift(writers.running()) == []


def _faked(monkeypatch, which: str, **changes):
    """Another library behind the boundary the check reads (what runs), the build itself untouched."""
    real = writers.running()
    monkeypatch.setattr(writers, "running", lambda: dict(real, **{which: dataclasses.replace(real[which], **changes)}))


def _build(tmp_path, mirror, *extra) -> list[str]:
    project = demo_project(tmp_path)
    return ["--project", str(project), "build", "--release", RELEASE, "--flavour", "static", "--arch", "amd64",
            "--out", str(tmp_path / "out"), "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"),
            "--lock-dir", str(tmp_path / "locks"), *extra]


def test_another_sqlite_is_refused_before_a_byte_is_written(demo_mirror, tmp_path, monkeypatch, capsys):
    _faked(monkeypatch, "apsw", distribution="3.54.1.0", native="3.54.1", probe="0" * 64)
    assert main(_build(tmp_path, demo_mirror)) == 2
    err = capsys.readouterr().err
    assert "apsw 3.54.1.0 running SQLite 3.54.1 is another version" in err
    assert "the pinned writer is apsw 3.50.1.0 with SQLite 3.50.1" in err
    assert "pip install -c constraints.txt" in err and "--allow-writer-drift" in err
    assert not (tmp_path / "out").exists()


def test_a_writer_that_writes_other_bytes_under_the_pinned_version_is_refused(demo_mirror, tmp_path, monkeypatch,
                                                                               capsys):
    # FreeBSD's py-apsw links the system SQLite: same version numbers, other compile options
    _faked(monkeypatch, "deflate", probe="f" * 64)
    assert main(_build(tmp_path, demo_mirror)) == 2
    assert "libdeflate: deflate 0.8.1 running libdeflate (bundled with deflate 0.8.1) writes other bytes" \
        in capsys.readouterr().err


def test_drift_allowed_is_warned_and_recorded_in_the_image(demo_mirror, tmp_path, monkeypatch, capsys):
    _faked(monkeypatch, "zstandard", native="1.5.7")
    assert main(_build(tmp_path, demo_mirror, "--allow-writer-drift")) == 0
    assert "warning: building with another writer than the pinned one" in capsys.readouterr().err
    layout = Layout(tmp_path / "out" / RELEASE)
    manifest = layout.read_json(layout.refs()[f"freebsd{RELEASE}-static:{RELEASE}-amd64"].digest)
    env = manifest["annotations"]["org.freebsd.images.build-environment"]
    assert "writer drift: libzstd: zstandard 0.23.0 running libzstd 1.5.7 is another version" in env
