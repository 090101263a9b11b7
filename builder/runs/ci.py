"""`ci render`: the GitHub Actions workflow that fans the nightly out over runners.

One lock job per release, one build job per (release, arch) uploading its
layout, and a join job per release that assembles the multi-arch indexes and
publishes. A reproduce job builds one release on two runner images with two
Pythons and a compare job diffs the two layouts; publishing waits for it.
Rendered from families.yaml and releases/ so it never drifts.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from builder.common import templates

from builder.config.project import Project

CRON = "17 3 * * *"
PYTHON = "3.11"

# Every action pinned to the full commit of a release tag (the tag in the comment, for
# humans and Dependabot). Tags move; commits do not.
ACTIONS = {
    "checkout": ("actions/checkout", "34e114876b0b11c390a56381ad16ebd13914f8d5", "v4.3.1"),
    "setup-python": ("actions/setup-python", "a26af69be951a213d495a4c3e4e4022e16d87065", "v5.6.0"),
    "upload-artifact": ("actions/upload-artifact", "ea165f8d65b6e75b540449e92b4886f43607fa02", "v4.6.2"),
    "download-artifact": ("actions/download-artifact", "d3f86a106a0bac45b974a628896c90dbdf5c8093", "v4.3.0"),
}

# The two environments the reproduce job builds in: oldest supported Python on the older
# runner image, newest on the newer one. compare diffs their layouts.
REPRODUCE_ENVS = (("ubuntu-22.04", "3.9"), ("ubuntu-24.04", "3.13"))


def reproduce_release(project: Project) -> str:
    """The release the reproduce job builds twice: the newest point release (fixed packages),
    else the newest release line."""
    points = [name for name, rel in project.releases.items() if rel.kind == "release"]
    return (points or list(project.releases))[-1]


def render_workflow(project: Project) -> str:
    # [[ ]] and [% %] so that GitHub's own ${{ }} expressions pass through untouched
    env = templates.environment(variable_start_string="[[", variable_end_string="]]", block_start_string="[%",
                                block_end_string="%]", trim_blocks=True, lstrip_blocks=True)
    text = resources.files("builder").joinpath("data/ci/github-nightly.yml.j2").read_text()
    matrix = []
    for name, rel in project.releases.items():
        for arch in rel.arches:
            matrix.append({"release": name, "arch": arch.name,
                           "images": " ".join(rel.render_name(f) for f in project.family.names)})
    rep = reproduce_release(project)
    envs = [{"os": os_, "python": py, "artifact": f"reproduce-{rep}-{os_}-py{py}"} for os_, py in REPRODUCE_ENVS]
    uses = {key: f"{repo}@{sha} # {tag}" for key, (repo, sha, tag) in ACTIONS.items()}
    return env.from_string(text).render(releases=list(project.releases), matrix=matrix, cron=CRON, python=PYTHON,
                                        uses=uses, reproduce={"release": rep, "envs": envs})


def workflow_path(project: Project) -> Path:
    return project.root / "ci" / "github-nightly.yml"


def is_current(path: Path, text: str) -> bool:
    return path.exists() and path.read_text() == text
