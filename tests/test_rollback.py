"""A mirror may replay an old, validly signed catalogue: lock, build --update and nightly refuse to go back.
And a signed catalogue's package paths cannot make `mirror` write outside its destination."""
from __future__ import annotations

import json
import shutil

import pytest

from builder.cli import main
from builder.config.release import load_release
from builder.gen.repo import GenOptions, generate
from tests.buildutil import demo_project, read_members
from tests.conftest import ROOT
from tests.test_hostile import _resign_data

OLD, NEW = 1731456000, 1733000000


def _mirror(path, epoch, bumps=()):
    shutil.rmtree(path, ignore_errors=True)
    generate(load_release(ROOT / "releases" / "14.2.yaml", ROOT), path, ["amd64"],
             GenOptions(epoch=epoch, bumps=tuple(bumps)))
    return path


@pytest.fixture
def locked_at_p2(tmp_path):
    """A project locked against a newer catalogue (FreeBSD-runtime 14.2p2), then a mirror replaying 14.2p1."""
    project = demo_project(tmp_path)
    new = _mirror(tmp_path / "new", NEW, [("FreeBSD-runtime", "14.2p2")])
    args = ["--project", str(project), "lock", "14.2", "--arch", "amd64", "--mirror", f"file://{new}",
            "--keys", str(new / "keys")]
    assert main(args) == 0
    old = _mirror(tmp_path / "old", OLD)
    return project, old


def _with_mirror(args, old):
    return args + ["--mirror", f"file://{old}", "--keys", str(old / "keys")]


def test_lock_refuses_a_replayed_older_catalogue(locked_at_p2, capsys):
    project, old = locked_at_p2
    before = (project / "releases" / "14.2.lock.json").read_bytes()
    assert main(_with_mirror(["--project", str(project), "lock", "14.2", "--arch", "amd64"], old)) == 2
    err = capsys.readouterr().err
    assert "refusing catalogues that roll the lock back" in err
    assert "FreeBSD-runtime would go down from 14.2p2 to 14.2p1" in err
    assert "repository base: catalogue built 2024-11-13" in err and "older than the locked one (2024-11-30" in err
    assert (project / "releases" / "14.2.lock.json").read_bytes() == before


def test_build_update_refuses_too_and_allow_downgrade_accepts(locked_at_p2, tmp_path, capsys):
    project, old = locked_at_p2
    build = _with_mirror(["--project", str(project), "build", "freebsd14.2-static", "--arch", "amd64",
                          "--out", str(tmp_path / "out"), "--update"], old)
    assert main(build) == 2
    assert "roll the lock back" in capsys.readouterr().err
    assert main(build + ["--allow-downgrade"]) == 0
    assert "accepted downgrade" in capsys.readouterr().err
    lock = json.loads((project / "releases" / "14.2.lock.json").read_text())
    assert lock["arches"]["amd64"]["packages"]["FreeBSD-runtime"]["version"] == "14.2p1"


def test_nightly_refuses_and_records_an_accepted_downgrade(locked_at_p2, tmp_path, capsys):
    project, old = locked_at_p2
    out = tmp_path / "night"
    nightly = _with_mirror(["--project", str(project), "nightly", "14.2", "--arch", "amd64", "--no-verify",
                            "--out", str(out)], old)
    assert main(nightly) == 2
    assert not (out / "report" / "report.json").exists()
    assert main(nightly + ["--allow-downgrade"]) == 0
    report = json.loads((out / "report" / "report.json").read_text())["releases"][0]
    assert any("FreeBSD-runtime would go down from 14.2p2 to 14.2p1" in d for d in report["downgrades_accepted"])
    assert "FreeBSD-runtime would go down" in (out / "report" / "report.md").read_text()
    # the generated catalogues are far older than 14.2's catalogue-max-age: a possibly frozen mirror
    assert report["stale_catalogues"] and "is the mirror frozen?" in report["stale_catalogues"][0]


@pytest.mark.parametrize("repopath", ["../../../../outside.pkg", "/tmp/outside.pkg", "All/./x.pkg", "All//x.pkg"])
def test_signed_package_paths_cannot_leave_the_repository(tmp_path, repopath, capsys):
    mirror = _mirror(tmp_path / "m", OLD)
    repo = mirror / "FreeBSD:14:amd64" / "base_release_2"
    doc = json.loads(read_members(repo / "data.pkg", "data.pkg", {"data"})["data"])
    entry = next(e for e in doc["packages"] if e["name"] == "FreeBSD-zoneinfo")
    entry["repopath"] = entry["path"] = repopath
    _resign_data(repo, json.dumps(doc).encode())
    project = demo_project(tmp_path)
    dest = tmp_path / "deep" / "a" / "b" / "dest"
    code = main(["--project", str(project), "mirror", "14.2", str(dest), "--arch", "amd64",
                 "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys")])
    err = capsys.readouterr().err
    assert code == 2
    assert "FreeBSD-zoneinfo" in err and repr(repopath) in err and "refusing repository path" in err
    assert not (tmp_path / "outside.pkg").exists() and not (tmp_path / "deep" / "outside.pkg").exists()
