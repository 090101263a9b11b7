"""`ci render`: the GitHub Actions workflow that fans the nightly out over runners.

One lock job per release, one build job per (release, arch) uploading its
layout, and a join job per release that assembles the multi-arch indexes and
publishes. Rendered from families.yaml and releases/ so it never drifts.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from builder.config.project import Project

CRON = "17 3 * * *"


def render_workflow(project: Project) -> str:
    # [[ ]] and [% %] so that GitHub's own ${{ }} expressions pass through untouched
    env = jinja2.Environment(variable_start_string="[[", variable_end_string="]]", block_start_string="[%",
                             block_end_string="%]", trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = resources.files("builder").joinpath("data/ci/github-nightly.yml.j2").read_text()
    matrix = []
    for name, rel in project.releases.items():
        for arch in rel.arches:
            matrix.append({"release": name, "arch": arch.name,
                           "images": " ".join(rel.render_name(f) for f in project.family.names)})
    return env.from_string(text).render(releases=list(project.releases), matrix=matrix, cron=CRON)


def workflow_path(project: Project) -> Path:
    return project.root / "ci" / "github-nightly.yml"


def is_current(path: Path, text: str) -> bool:
    return path.exists() and path.read_text() == text
