"""ci/nightly.sh end to end, offline: generated mirror, a real local registry, the report;
an unchanged second night publishes nothing; a bumped package republishes only what it touches."""
import json
import os
import subprocess
import sys

import pytest

from builder.config.release import load_release
from builder.gen.repo import GenOptions, generate
from tests.buildutil import demo_project
from tests.conftest import ROOT
from tests.tools import TOOLS, require

RELEASE = "14.2"
pytestmark = pytest.mark.tools   # a real registry and skopeo


def night(project, out, env):
    r = subprocess.run([str(ROOT / "ci" / "nightly.sh"), RELEASE], env=dict(env, FREEBSD_IMAGES_PROJECT=str(project)), capture_output=True, text=True, cwd=project)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "report" / "report.json").read_text())["releases"][0], (out / "report" / "report.md").read_text()


def test_nightly_end_to_end(tmp_path, registry):
    require(*TOOLS)
    mirror = tmp_path / "mirror"
    rel = load_release(ROOT / "releases" / f"{RELEASE}.yaml", ROOT)
    generate(rel, mirror, opts=GenOptions())
    project = demo_project(tmp_path)
    out = tmp_path / "nightly"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"),
               FREEBSD_IMAGES_REGISTRY=f"{registry.host}/nightly", FREEBSD_IMAGES_REGISTRY_INSECURE="1",
               FREEBSD_IMAGES_MIRROR=f"file://{mirror}", FREEBSD_IMAGES_KEYS=str(mirror / "keys"),
               FREEBSD_IMAGES_OUT=str(out))
    env.pop("SOURCE_DATE_EPOCH", None)

    first, md = night(project, out, env)
    assert first["reproducible"] is True
    assert {i["action"] for i in first["images"]} == {"published"}
    assert len(first["images"]) == 4 and all(len(i["platforms"]) == 2 for i in first["images"])
    assert "| freebsd14.2-small |" in md and "reproducible" in md
    # every image's shared-library closure, counted
    closures = {(i["image"], p["arch"]): p["closure"] for i in first["images"] for p in i["platforms"]}
    assert all(c["unresolved"] == 0 for c in closures.values())
    assert closures[("freebsd14.2-static", "amd64")]["elf_files"] == 0
    assert closures[("freebsd14.2-small", "amd64")]["dynamic"] > 0
    assert "| ELF files | dynamic | libraries | unresolved |" in md
    digests1 = {i["image"]: i["index"] for i in first["images"]}

    second, _ = night(project, out, env)
    assert {i["action"] for i in second["images"]} == {"unchanged"}
    assert second["changed_since_last_publish"] == [] and second["published"] is False
    assert {i["image"]: i["index"] for i in second["images"]} == digests1

    # one package moves in the mirror
    generate(rel, mirror, opts=GenOptions(bumps=(("FreeBSD-utilities", "14.2p2"),)))
    third, md3 = night(project, out, env)
    changes = third["changed_since_last_publish"]
    assert [(c["package"], c["old"], c["new"]) for c in changes] == [("FreeBSD-utilities", "14.2p1", "14.2p2")]
    assert sorted(changes[0]["arches"]) == ["aarch64", "amd64"]
    assert [u["name"] for u in third["outdated"]] == ["FreeBSD-utilities"]
    actions = {i["image"]: i["action"] for i in third["images"]}
    assert actions == {f"freebsd{RELEASE}-small": "published", f"freebsd{RELEASE}-static": "unchanged",
                       f"freebsd{RELEASE}-base": "unchanged", f"freebsd{RELEASE}-minimal": "unchanged"}
    digests3 = {i["image"]: i["index"] for i in third["images"]}
    assert {k for k in digests1 if digests1[k] != digests3[k]} == {f"freebsd{RELEASE}-small"}
    assert "FreeBSD-utilities 14.2p1 \u2192 14.2p2" in md3


NEW_IN_UTILITIES = """
  <vuln vid="99a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a99">
    <topic>FreeBSD-utilities -- a flaw its next patch level brings</topic>
    <affects><package><name>FreeBSD-utilities</name><range><ge>14.2p2</ge></range></package></affects>
    <description><body xmlns="http://www.w3.org/1999/xhtml"><p>x</p></body></description>
    <references><cvename>CVE-2026-99999</cvename></references>
    <dates><discovery>2026-01-01</discovery><entry>2026-01-01</entry></dates>
  </vuln>
"""


def test_nightly_reports_advisories_fixed_and_open_and_holds_back_a_regression(tmp_path, registry):
    """With --vuxml, each image is audited before it is published: the report says what this build fixed
    and what is still open, and an image with advisories the published one has not is held back."""
    from builder.cli import main
    mirror = tmp_path / "mirror"
    rel = load_release(ROOT / "releases" / f"{RELEASE}.yaml", ROOT)
    generate(rel, mirror, ["amd64"], GenOptions())
    project = demo_project(tmp_path)
    vuln = tmp_path / "vuln.xml"
    text = (ROOT / "tests" / "fixtures" / "vuxml" / "vuln.xml").read_text()
    vuln.write_text(text.replace("</vuxml>", NEW_IN_UTILITIES + "</vuxml>"))
    argv = ["--project", str(project), "-q", "nightly", RELEASE, "--no-verify", "--arch", "amd64",
            "--to", f"{registry.host}/audited", "--insecure", "--vuxml", str(vuln), "--out", str(tmp_path / "n"),
            "--mirror", f"file://{mirror}", "--keys", str(mirror / "keys"), "--lock-dir", str(tmp_path / "locks")]

    def night() -> dict:
        assert main(argv) == 0
        doc = json.loads((tmp_path / "n" / "report" / "report.json").read_text())["releases"][0]
        return {i["image"]: (i["action"], i["advisories"]) for i in doc["images"]}

    first = night()
    ssh = "11a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a71"
    assert first["freebsd14.2-minimal"][0] == "published" and ssh in first["freebsd14.2-minimal"][1]["open"]
    # the base system to 14.2p3: the SA is fixed; FreeBSD-utilities' next patch level brings a new one
    generate(rel, mirror, ["amd64"], GenOptions(version="14.2p3", bumps=(("FreeBSD-utilities", "14.2p3"),)))
    second = night()
    action, adv = second["freebsd14.2-minimal"]
    assert ssh in adv["fixed"] and ssh not in adv["open"]
    held, small = second["freebsd14.2-small"]
    assert small["new"] == ["99a1b2c3-e4f5-11ef-9a1b-2c3d4e5f6a99"] and held.startswith("held: new advisories")
    md = (tmp_path / "n" / "report" / "report.md").read_text()
    assert "fixed by this build: " + ssh in md and "new, so not published: 99a1b2c3" in md
