"""A mistake in the project's files is reported at its line, even when only resolving finds it."""
from __future__ import annotations

import pytest

from builder.cli import main
from tests.conftest import demo_project

RELEASE = "14.2"


def _typo(tmp_path, old: str, new: str):
    project = demo_project(tmp_path)
    path = project / "families.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if new.strip() in l)
    col = path.read_text().splitlines()[line - 1].index(new.strip().lstrip("- ")) + 1
    return project, line, col


def _where(mirror):
    return ["--mirror", f"file://{mirror}", "--keys", str(mirror / "keys")]


@pytest.mark.parametrize("command", ["check", "build"])
def test_an_unknown_package_is_reported_at_its_line_naming_the_flavour(demo_mirror, tmp_path, monkeypatch, capsys,
                                                                        command):
    project, line, col = _typo(tmp_path, "      - FreeBSD-utilities\n", "      - FreeBSD-utilitis\n")
    monkeypatch.chdir(project)
    argv = ["check", "--release", RELEASE] if command == "check" else \
        ["build", "--release", RELEASE, "--all", "--lock-dir", str(tmp_path / "locks"), "--out", str(tmp_path / "o")]
    assert main(argv + _where(demo_mirror)) == 2
    errors = [l for l in capsys.readouterr().err.splitlines() if "error:" in l]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"families.yaml:{line}:{col}: error: flavour small, release {RELEASE}, ")
    assert "unknown package FreeBSD-utilitis" in errors[0] and "did you mean FreeBSD-utilities" in errors[0]


def test_an_unknown_repository_is_reported_at_the_package_that_names_it(demo_mirror, tmp_path, monkeypatch, capsys):
    project, line, col = _typo(tmp_path, "      - FreeBSD-utilities\n",
                               "      - {name: FreeBSD-utilities, repository: nope}\n")
    monkeypatch.chdir(project)
    assert main(["check", "--release", RELEASE] + _where(demo_mirror)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"families.yaml:{line}:") and "from repository 'nope'" in err and "flavour small" in err
    assert len(err.splitlines()) == 1        # one line, not one per release file


@pytest.mark.parametrize("flag,value", [("--release", "99"), ("--arch", "sparc"), ("--flavour", "nope")])
def test_plan_refuses_a_filter_that_matches_nothing(capsys, flag, value):
    assert main(["plan", flag, value]) == 2
    assert f"unknown {flag[2:]} '{value}'" in capsys.readouterr().err


def test_a_missing_template_is_reported_at_its_line(tmp_path, monkeypatch, capsys):
    project, line, col = _typo(tmp_path, "template: templates/FreeBSD-base.conf.j2", "template: templates/FreeBSD-bse.conf.j2")
    monkeypatch.chdir(project)
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"families.yaml:{line}:") and "templates/FreeBSD-bse.conf.j2' is not a file" in err
    assert "did you mean templates/FreeBSD-base.conf.j2" in err
