"""Config may come from a pull request: it must not run code, read outside the project, or write odd paths.
And names and tags derived from package data are checked before anything is written."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from builder.common.log import Log
from builder.cli import main
from builder.config.project import load_project
from builder.errors import BuildError, ConfigError
from builder.runs.images import build_release
from tests.buildutil import context, demo_project

ESCAPE = "{{ cycler.__init__.__globals__.os.popen('id').read() }}"


def _build(project: Path, mirror: Path, tmp: Path, *extra: str) -> int:
    return main(["--project", str(project), "build", "freebsd14.2-minimal", "--arch", "amd64", "--out",
                 str(tmp / "out"), "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"),
                 "--lock-dir", str(tmp / "locks"), *extra])


def test_template_cannot_run_code(demo_mirror, tmp_path, capsys):
    project = demo_project(tmp_path)
    tpl = project / "templates" / "FreeBSD-base.conf.j2"
    tpl.write_text(tpl.read_text() + ESCAPE + "\n")
    assert _build(project, demo_mirror, tmp_path) == 2
    err = capsys.readouterr().err
    assert "FreeBSD-base.conf.j2" in err and "cannot render template" in err and "unsafe" in err
    assert not (tmp_path / "out" / "14.2" / "index.json").exists()


def test_tag_template_in_a_release_file_cannot_run_code(demo_mirror, tmp_path, capsys):
    project = demo_project(tmp_path)
    rel = project / "releases" / "14.2.yaml"
    text = rel.read_text()
    assert '"{{ version }}"' in text
    rel.write_text(text.replace('"{{ version }}"', '"{{ version }}' + ESCAPE.replace('"', "'") + '"', 1))
    assert _build(project, demo_mirror, tmp_path) == 2
    assert "unsafe" in capsys.readouterr().err


@pytest.mark.parametrize("template,message", [
    ("/etc/shadow", "relative to families.yaml"),
    ("../../../etc/passwd", "relative to families.yaml"),
    ("templates/link.j2", "outside"),
])
def test_template_path_is_confined_to_the_project(project_copy, template, message):
    (project_copy / "templates" / "link.j2").symlink_to("/etc/hostname")
    fam = project_copy / "families.yaml"
    text = fam.read_text()
    assert "template: templates/FreeBSD-base.conf.j2" in text
    fam.write_text(text.replace("template: templates/FreeBSD-base.conf.j2", f"template: {template}"))
    with pytest.raises(ConfigError) as e:
        load_project(project_copy)
    assert message in str(e.value) and "families.yaml" in str(e.value)


@pytest.mark.parametrize("path", ["/../../x", "/etc/./x", "/etc//x", "/etc/x/", "/"])
def test_image_paths_in_config_are_normal_absolute_paths(project_copy, path):
    fam = project_copy / "families.yaml"
    text = fam.read_text()
    needle = "- path: /usr/local/etc/pkg/repos/FreeBSD-base.conf"
    assert needle in text
    fam.write_text(text.replace(needle, f"- path: {path}"))
    with pytest.raises(ConfigError) as e:
        load_project(project_copy)
    assert "expected an absolute path" in str(e.value) and repr(path) in str(e.value)


@pytest.mark.parametrize("version", ["14.2p1/../../../../x", "14.2p1\nx", "-14.2", "x" * 200])
def test_tags_from_package_data_are_refused_before_anything_is_written(demo_mirror, tmp_path, version):
    project = demo_project(tmp_path)
    ctx = context(project, cache=tmp_path / "cache", mirror=f"file://{demo_mirror}", keys=demo_mirror / "keys",
                  lock_dir=tmp_path / "locks", arch=["amd64"])
    lock = ctx.ensure_lock()
    al = lock.arches["amd64"]
    runtime = al.packages["FreeBSD-runtime"]
    hostile = dataclasses.replace(lock, arches={"amd64": dataclasses.replace(
        al, packages={**al.packages, "FreeBSD-runtime": dataclasses.replace(runtime, version=version)})})
    with pytest.raises(BuildError) as e:
        build_release(ctx, hostile, tmp_path / "out", log=Log(-1))
    assert "FreeBSD-runtime" in str(e.value) and "not a valid OCI tag" in str(e.value)
    assert not (tmp_path / "out").exists() or not any(os.scandir(tmp_path / "out"))
