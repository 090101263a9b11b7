"""The rendered CI workflow is current and fans out per (release, arch); per-arch
layouts assembled by the join job equal a single multi-arch build."""
import yaml

from builder.runs.ci import render_workflow
from builder.cli import main
from builder.oci.layout import Layout
from builder.config.project import load_project
from tests.buildutil import demo_project
from tests.conftest import ROOT
from tests.test_build import build_args


def test_checked_in_workflow_is_not_stale():
    project = load_project(ROOT)
    assert (ROOT / "ci" / "github-nightly.yml").read_text() == render_workflow(project), \
        "ci/github-nightly.yml is stale: run `python -m builder ci render`"
    assert main(["--project", str(ROOT), "ci", "render", "--check"]) == 0


def test_workflow_matrix_and_join(tmp_path):
    project = load_project(ROOT)
    doc = yaml.safe_load(render_workflow(project))
    include = doc["jobs"]["build"]["strategy"]["matrix"]["include"]
    want = {(r, a.name) for r, rel in project.releases.items() for a in rel.arches}
    assert {(i["release"], i["arch"]) for i in include} == want
    assert doc["jobs"]["build"]["needs"] == "lock" and doc["jobs"]["publish"]["needs"] == ["build", "compare"]
    steps = " ".join(s.get("run", "") for s in doc["jobs"]["publish"]["steps"])
    assert "builder assemble" in steps and "builder publish" in steps
    # a stale file is detected
    stale = tmp_path / "wf.yml"
    stale.write_text("old\n")
    assert main(["--project", str(ROOT), "ci", "render", "--check", "--out", str(stale)]) == 1


def test_assembled_per_arch_layouts_equal_one_build(demo_mirror, tmp_path):
    project = demo_project(tmp_path)
    whole = tmp_path / "whole"
    assert main(build_args(project, demo_mirror, whole)) == 0
    parts = []
    for arch in ("amd64", "aarch64"):
        out = tmp_path / f"part-{arch}"
        assert main(build_args(project, demo_mirror, out, "--arch", arch)) == 0
        parts.append(out / "14.2")
    assert main(["assemble", str(tmp_path / "joined"), *map(str, parts)]) == 0
    a, b = Layout(whole / "14.2").refs(), Layout(tmp_path / "joined").refs()
    assert {k: v.digest for k, v in a.items()} == {k: v.digest for k, v in b.items()}
