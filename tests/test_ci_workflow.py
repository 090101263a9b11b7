"""The nightly workflow read as GitHub reads it, checked by GitHub's schema and zizmor, and run.

Static: the rendered ci/github-nightly.yml, parsed with yaml.safe_load, has
real matrices, every ${{ matrix.X }} exists, every downloaded artifact is
uploaded by a job the downloader needs, and every call of our CLI parses
with the real argument parser. The same checks flag the bugs they exist for.
Dynamic: the run: steps of one (release, arch) cell, and of the reproduce and
compare jobs, run in order against the offline mirror and a local registry.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from builder.cli import build_parser
from builder.config.project import load_project
from builder.gen.repo import GenOptions, generate
from builder.oci.layout import Layout
from builder.runs.ci import ACTIONS, REPRODUCE_ENVS, render_workflow, reproduce_release
from tests.conftest import ROOT
from tests.ghactions import (Runner, StepFailed, check_artifacts, check_cli_calls, check_matrices,
                             check_matrix_references, expand_matrix, load_workflow, matched_artifacts, needs)
from tests.tools import TOOLS, require

WORKFLOW = ROOT / "ci" / "github-nightly.yml"
INDEX = "application/vnd.oci.image.index.v1+json"
GITHUB = {"actor": "octocat", "token": "ghs_sample"}
# the repository variables unset (the defaults) and set (a mirror and a registry)
VARS_UNSET: dict = {}
VARS_SET = {"FREEBSD_IMAGES_REGISTRY": "ghcr.io/example", "FREEBSD_IMAGES_MIRROR": "https://mirror.example.org/pkg",
            "FREEBSD_IMAGES_KEYS": "keys/mirror", "FREEBSD_IMAGES_REGISTRY_INSECURE": ""}
SECRETS_SET = {"FREEBSD_IMAGES_REGISTRY_USER": "relng", "FREEBSD_IMAGES_REGISTRY_PASSWORD": "s3cret"}


@pytest.fixture(scope="module")
def project():
    return load_project(ROOT)


@pytest.fixture(scope="module")
def wf():
    return load_workflow(WORKFLOW.read_text())


def cells(wf, job, *keys):
    return sorted(tuple(c[k] for k in keys) for c in expand_matrix(wf["jobs"][job]))


# --- item 3: read as GitHub reads it ---------------------------------------------------------

def test_rendered_file_is_what_the_checks_read(project):
    assert WORKFLOW.read_text() == render_workflow(project), "stale: run `python -m builder ci render`"


def test_matrices_are_real_lists(wf, project):
    assert check_matrices(wf) == []
    assert wf["on"]["schedule"] and "workflow_dispatch" in wf["on"]  # `on:` read back as True, restored
    releases = sorted((r,) for r in project.releases)
    pairs = sorted((r, a.name) for r, rel in project.releases.items() for a in rel.arches)
    assert cells(wf, "lock", "release") == releases      # one job per release line, not one for all
    assert cells(wf, "publish", "release") == releases
    assert cells(wf, "build", "release", "arch") == pairs
    assert cells(wf, "reproduce", "os", "python") == sorted(REPRODUCE_ENVS)
    assert expand_matrix(wf["jobs"]["compare"]) == [{}]


def test_matrix_references_exist(wf):
    assert check_matrix_references(wf) == []


@pytest.mark.parametrize("vars", [VARS_UNSET, VARS_SET], ids=["vars-unset", "vars-set"])
def test_downloaded_artifacts_are_uploaded_by_needed_jobs(wf, project, vars):
    assert check_artifacts(wf, vars, {}, GITHUB) == []
    # the join job gets every arch's layout of its release and nothing else; compare gets both reproductions
    for rel in project.releases.values():
        got = matched_artifacts(wf, "publish", {"release": rel.name}, vars, {}, GITHUB)
        assert got == sorted(f"layout-{rel.name}-{a.name}" for a in rel.arches)
    rep = reproduce_release(project)
    assert matched_artifacts(wf, "compare", {}, vars, {}, GITHUB) == sorted(
        f"reproduce-{rep}-{os_}-py{py}" for os_, py in REPRODUCE_ENVS)
    assert needs(wf, "publish") == {"build", "compare", "reproduce", "lock"}


# jobs whose steps call no CLI of ours: from-source builds the writers and runs tests/test_from_source.py
NO_CLI = {"from-source"}


@pytest.mark.parametrize("vars,secrets", [(VARS_UNSET, {}), (VARS_SET, SECRETS_SET)], ids=["vars-unset", "vars-set"])
def test_run_steps_call_the_real_cli(wf, project, vars, secrets):
    problems, calls = check_cli_calls(wf, build_parser, project.releases, vars, secrets, GITHUB)
    assert problems == []
    by_job = {}
    for job, cell, argv in calls:
        by_job.setdefault(job, set()).add(argv[0])
    assert by_job == {"lock": {"lock"}, "build": {"build", "verify"}, "reproduce": {"build"},
                      "compare": {"diff"}, "publish": {"assemble", "publish"}}
    n_cells = sum(len(expand_matrix(j)) for jid, j in wf["jobs"].items() if jid not in NO_CLI)
    two_calls = len(expand_matrix(wf["jobs"]["build"])) + len(expand_matrix(wf["jobs"]["publish"]))
    assert len(calls) == n_cells + two_calls  # every cell calls the CLI; build and publish cells twice
    lock_calls = [argv for job, _, argv in calls if job == "lock"]
    assert sorted(lock_calls) == sorted(["lock", r, "--lock-dir", "locks"] for r in project.releases)


def test_from_source_job_runs_the_from_source_test(wf):
    """The stand-in cannot run it (it compiles for minutes and fetches from sqlite.org); .ci/run runs the same test."""
    job = wf["jobs"]["from-source"]
    oses = [c["os"] for c in expand_matrix(job)]
    assert any(o.startswith("ubuntu-") for o in oses) and any(o.startswith("macos-") for o in oses)
    runs = [s for s in job["steps"] if "run" in s]
    assert [s["run"] for s in runs][-1] == "python -m pytest tests/test_from_source.py -m slow"
    assert runs[-2]["run"] == 'python -m tests.from_source fetch-sqlite "$RUNNER_TEMP/sources"'
    assert runs[-1]["env"] == {"FREEBSD_IMAGES_SOURCES": "${{ runner.temp }}/sources"}
    assert "from-source" not in needs(wf, "publish")   # a nightly check, not a gate on publishing


BROKEN = """
on: {workflow_dispatch: {}}
jobs:
  lock:
    strategy: {matrix: {release: ['"14", "14.2"']}}
    steps:
      - run: python -m builder lock ${{ matrix.release }} --lock-dir locks
      - uses: actions/upload-artifact@v4
        with: {name: "lock-${{ matrix.release }}", path: "locks/${{ matrix.release }}.lock.json"}
  build:
    strategy: {matrix: {release: ['"14", "14.2"'], arch: amd64}}
    steps:
      - uses: actions/download-artifact@v4
        with: {name: "lock-${{ matrix.release }}", path: locks}
      - run: python -m builder build --release 14.2 --arch ${{ matrix.arch }} --lockdir locks
  publish:
    needs: build
    steps:
      - run: freebsd-images publish out/${{ matrix.release }} --to "$REGISTRY"
"""


def test_the_checks_catch_what_they_exist_for(project):
    # the old bug (a one-entry matrix holding a joined string) and its friends
    wf = load_workflow(BROKEN)
    assert check_matrices(wf) == ["build: matrix dimension 'arch' is not a non-empty list of scalars: 'amd64'"]
    refs = check_matrix_references(wf)
    assert refs == ["publish: uses matrix.release but has no matrix"]
    arts = check_artifacts(wf, {}, {}, GITHUB)
    assert len(arts) == 1 and "by lock, which build does not need" in arts[0]
    problems, _ = check_cli_calls(wf, build_parser, project.releases, {}, {}, GITHUB)
    assert any(p.startswith("lock ") and "does not parse" in p and "unrecognized arguments" in p for p in problems)
    assert any(p.startswith("build ") and "--lockdir" in p for p in problems)
    assert any(p.startswith("publish ") and "$REGISTRY is not set" in p for p in problems)


# --- item 2: pinned, least privilege, bounded ------------------------------------------------

def test_actions_pinned_and_jobs_least_privilege(wf):
    text = WORKFLOW.read_text()
    pins = {f"{repo}@{sha} # {tag}" for repo, sha, tag in ACTIONS.values()}
    uses = re.findall(r"uses:\s*(.+)", text)
    assert uses and set(uses) <= pins, set(uses) - pins
    assert all(re.fullmatch(r"[0-9a-f]{40}", sha) and re.fullmatch(r"v\d+\.\d+\.\d+", tag)
               for _, sha, tag in ACTIONS.values())
    assert wf["permissions"] == {}
    assert wf["concurrency"]["group"] and wf["concurrency"]["cancel-in-progress"] is False
    for jid, job in wf["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int) and 0 < job["timeout-minutes"] <= 120, jid
        want = {"contents": "read", "packages": "write"} if jid == "publish" else {"contents": "read"}
        assert job["permissions"] == want, jid
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, jid
        uses_secrets = "secrets." in json.dumps(job)
        assert uses_secrets == (jid == "publish"), jid
    # secrets reach only the publishing step, never the job's or workflow's env
    pub = wf["jobs"]["publish"]
    assert "secrets." not in json.dumps(wf.get("env")) + json.dumps(pub.get("env"))
    assert [s["run"].split()[3] for s in pub["steps"] if "secrets." in json.dumps(s)] == ["publish"]
    assert pub["environment"] and pub["if"]


# --- item 5: GitHub's schema and zizmor ------------------------------------------------------

def pinned(package: str) -> str:
    m = re.search(rf'"({re.escape(package)}==[^"]+)"', (ROOT / "pyproject.toml").read_text())
    return m.group(1) if m else package


def tool(exe: str, package: str) -> str:
    found = shutil.which(exe) or shutil.which(exe, path=str(Path(sys.executable).parent))
    if found:
        return found
    msg = f"{exe} not installed: pip install '{pinned(package)}' (in the test extras)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + "; CI=true requires it")
    pytest.skip(msg)


def broken_variant(tmp_path: Path) -> Path:
    """The workflow with its checkouts unpinned and persisting credentials."""
    text = WORKFLOW.read_text()
    repo, sha, tag = ACTIONS["checkout"]
    text = text.replace(f"{repo}@{sha} # {tag}", f"{repo}@v4").replace("persist-credentials: false", "fetch-depth: 1")
    path = tmp_path / "nightly.yml"
    path.write_text(text)
    return path


def test_workflow_matches_githubs_schema(tmp_path):
    exe = tool("check-jsonschema", "check-jsonschema")
    r = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # and the schema does see mistakes
    bad = tmp_path / "bad.yml"
    bad.write_text(WORKFLOW.read_text().replace("timeout-minutes: 20", "timeout-minutes: soon", 1))
    r = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "timeout-minutes" in r.stdout + r.stderr


def zizmor(exe: str, path: Path) -> list[dict]:
    r = subprocess.run([exe, "--offline", "--no-exit-codes", "--format", "json", "--persona", "auditor", str(path)],
                       capture_output=True, text=True, env=dict(os.environ, NO_COLOR="1"))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_zizmor_finds_nothing_medium_or_high(tmp_path):
    exe = tool("zizmor", "zizmor")
    serious = [(f["ident"], f["determinations"]["severity"]) for f in zizmor(exe, WORKFLOW)
               if f["determinations"]["severity"] in ("Medium", "High")]
    assert serious == []
    # the findings of the issue, on the workflow as it was, are what zizmor reports
    found = {f["ident"] for f in zizmor(exe, broken_variant(tmp_path))
             if f["determinations"]["severity"] in ("Medium", "High")}
    assert {"unpinned-uses", "artipacked"} <= found


# --- item 4: run the steps ------------------------------------------------------------------

def mirror_for(release: str, demo_mirror: Path, tmp_path: Path) -> Path:
    if release == "14.2":
        return demo_mirror
    out = tmp_path / f"mirror-{release}"
    generate(load_project(ROOT).release(release), out, opts=GenOptions())
    return out


def mirror_vars(mirror: Path) -> dict:
    return {"FREEBSD_IMAGES_MIRROR": f"file://{mirror}", "FREEBSD_IMAGES_KEYS": str(mirror / "keys")}


def order(wf: dict, jobs: list[str]) -> list[str]:
    """jobs in an order that respects needs."""
    out: list[str] = []
    while len(out) < len(jobs):
        out += [j for j in jobs if j not in out and needs(wf, j) & set(jobs) <= set(out)][:1]
    return out


@pytest.mark.tools
def test_workflow_steps_run_for_one_release_arch(wf, project, demo_mirror, registry, tmp_path):
    require(*TOOLS)
    release, arch = "14.2", "amd64"
    ns = f"{registry.host}/nightly-ci"
    runner = Runner(wf, ROOT, tmp_path / "run", vars=dict(mirror_vars(demo_mirror), FREEBSD_IMAGES_REGISTRY=ns,
                                                          FREEBSD_IMAGES_REGISTRY_INSECURE="1"))
    # the jobs fanned out per release (and arch): their cells for 14.2/amd64, in needs order
    chosen = {j: [c for c in expand_matrix(job) if c.get("release") == release and c.get("arch", arch) == arch]
              for j, job in wf["jobs"].items() if all("release" in c for c in expand_matrix(job))}
    assert {j: len(c) for j, c in chosen.items()} == {"lock": 1, "build": 1, "publish": 1}
    workspaces = {}
    for job in order(wf, list(chosen)):
        workspaces[job] = runner.run_job(job, chosen[job][0])
        assert workspaces[job] is not None, f"{job} was skipped"
    ran = [what.split(":", 1)[1].strip().split()[3] for _, _, what, _ in runner.log if what.startswith("run:")]
    assert ran == ["lock", "build", "verify", "assemble", "publish"]
    assert "reproducible" in next(out for _, _, what, out in runner.log if " verify " in what)

    # what the publish job assembled is what the registry now serves
    layout = Layout(workspaces["publish"] / "out" / release)
    refs = {r: d for r, d in layout.refs().items() if d.media_type == INDEX}  # NAME:TAG of each multi-arch index
    names = {project.release(release).render_name(f) for f in project.family.names}
    assert {r.rsplit(":", 1)[0] for r in refs} == names
    for ref, desc in refs.items():
        name, tag = ref.rsplit(":", 1)
        r = requests.get(f"http://{registry.host}/v2/nightly-ci/{name}/manifests/{tag}", headers={"Accept": INDEX},
                         timeout=10)
        assert r.status_code == 200, (ref, r.text)
        assert r.headers["Docker-Content-Digest"] == desc.digest
        assert [m["platform"]["architecture"] for m in r.json()["manifests"]] == ["amd64"]
    skopeo = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                             f"docker://{ns}/{sorted(names)[0]}:{release}"], capture_output=True, text=True)
    assert skopeo.returncode == 0 and json.loads(skopeo.stdout)["mediaType"] == INDEX, skopeo.stderr


def test_reproduce_and_compare_jobs_run(wf, project, demo_mirror, tmp_path):
    release = reproduce_release(project)
    runner = Runner(wf, ROOT, tmp_path / "run", vars=mirror_vars(mirror_for(release, demo_mirror, tmp_path)))
    runner.run_job("lock", {"release": release})
    for cell in expand_matrix(wf["jobs"]["reproduce"]):
        assert runner.run_job("reproduce", cell) is not None
    runner.run_job("compare", {})
    diff_out = [out for job, _, what, out in runner.log if job == "compare" and what.startswith("run:")]
    assert diff_out == ["identical\n"]
    # compare fails on a difference: drop one ref from one of the two layouts
    art = sorted(p for p in runner.artifacts.iterdir() if p.name.startswith(f"reproduce-{release}-"))[1]
    index = json.loads((art / "index.json").read_text())
    index["manifests"] = index["manifests"][:-1]
    (art / "index.json").write_text(json.dumps(index))
    with pytest.raises(StepFailed) as exc:
        runner.run_job("compare", {})
    assert exc.value.rc == 1 and "only in A" in exc.value.output
