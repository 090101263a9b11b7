"""families.yaml and release files: the shipped ones load; broken ones are
reported at the right file, line and column with a useful message."""
import json

import pytest

from builder.cli import main
from builder.errors import ConfigError
from builder.config.project import load_project


def pos(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    idx = -1
    for _ in range(nth + 1):
        idx = text.index(needle, idx + 1)
    line = text.count("\n", 0, idx) + 1
    col = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return line, col


def test_shipped_files_pass_check(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "2 families (default: static, base, minimal, small; official: " in out


def test_family_inheritance_resolves():
    project = load_project()
    small = project.family.resolve("small")
    assert small.chain == ("static", "base", "minimal", "small")
    names = [p.name for p in small.packages]
    assert names[:2] == ["FreeBSD-caroot", "FreeBSD-zoneinfo"]
    assert "FreeBSD-utilities" in names and "pkg" in names
    assert dict(small.config.env)["PATH"].startswith("/sbin:/bin")
    assert small.config.cmd == ("/bin/sh",)
    assert project.family.resolve("base").config.cmd is None
    pkg = next(p for p in small.packages if p.name == "pkg")
    assert pkg.repository == "ports"


FAMILY_CASES = [
    # (description, old, new, needle-in-new-text, nth, expected message fragment)
    ("unknown key with suggestion", "    packages:\n      - FreeBSD-clibs", "    packges:\n      - FreeBSD-clibs",
     "packges", 0, "unknown key 'packges'; did you mean 'packages'?"),
    ("unknown parent", "parent: static", "parent: statik", "statik", 0,
     "unknown parent flavour 'statik' (did you mean 'static'?)"),
    ("cycle in parents", "  static:\n    description:", "  static:\n    parent: small\n    description:",
     "small\n    description:", 0, "cycle in flavour parents"),
    ("duplicate flavour", "  small:\n", "  base:\n    description: again\n  small:\n", "base:", 1,
     "duplicate key 'base'"),
    ("missing description", "    description: >-\n      minimal plus", "    config: {}\n    x-desc: >-\n      minimal plus",
     "parent: minimal", 0, "missing required key 'description'"),
    ("YAML syntax error", "  base:\n    parent: static", "  base:\n    parent: [static", "", -1, "YAML syntax error"),
    ("packages not a list", "    packages:\n      - FreeBSD-utilities", "    packages: FreeBSD-utilities",
     "FreeBSD-utilities", 0, "expected a list"),
    ("bad mode", 'mode: "0644"', 'mode: "0999"', '"0999"', 0, "expected an octal mode string"),
    ("template and content", "        template: templates/FreeBSD-base.conf.j2",
     "        template: templates/FreeBSD-base.conf.j2\n        content: x", "path: /usr/local", 0,
     "exactly one of 'template' or 'content'"),
    ("package listed twice", "      - FreeBSD-fetch\n", "      - FreeBSD-fetch\n      - FreeBSD-fetch\n",
     "FreeBSD-fetch\n", 1, "package 'FreeBSD-fetch' listed twice"),
    ("bad flavour name", "  small:\n", "  Small:\n", "Small", 0, "expected a lower-case flavour name"),
    ("cmd not a list of strings", 'cmd: ["/bin/sh"]', "cmd: [1]", "1]", 0, "expected a string, got integer"),
]


@pytest.mark.parametrize("case", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_broken_family_reports_position(project_copy, case, capsys):
    _, old, new, needle, nth, message = case
    path = project_copy / "families.yaml"
    text = path.read_text()
    assert old in text, old
    text = text.replace(old, new, 1)
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_project(project_copy)
    diags = [d for d in info.value.diagnostics if message in d.message]
    assert diags, [str(d) for d in info.value.diagnostics]
    d = diags[0]
    assert d.file == str(path)
    if nth >= 0:
        assert (d.line, d.column) == pos(text, needle, nth), str(d)
    else:
        assert d.line == pos(text, "[static")[0] + 1
    # The CLI prints the same as file:line:col and exits 2.
    assert main(["--project", str(project_copy), "check"]) == 2
    assert f"{path}:{d.line}:{d.column}: " in capsys.readouterr().err


RELEASE_CASES = [
    ("missing major", "major: 14\n", "", "release:", 0, "missing required key 'major'"),
    ("bad signature type", "signature-type: fingerprints\n    fingerprints: keys/pkg\n",
     "signature-type: fingerprint\n    fingerprints: keys/pkg\n", "fingerprint\n", 0,
     "(did you mean 'fingerprints'?)"),
    ("unknown arch", "  aarch64: {platform", "  arm64: {platform", "arm64: {", 0, "expected a FreeBSD architecture"),
    ("major mismatch", "major: 14", "major: 15", "15", 0, "major 15 does not match release '14.2'"),
    ("bad url scheme", '"pkg+https://pkg.FreeBSD.org/${ABI}/quarterly"', '"ftp://pkg.FreeBSD.org/${ABI}/quarterly"',
     '"ftp://', 0, "expected a URL with scheme"),
    # a missing key is reported at the start of the mapping that should hold it
    ("fingerprints dir missing", "    fingerprints: keys/pkg\n    priority: 0\n", "    priority: 0\n", "name: FreeBSD\n", 0,
     "signature-type fingerprints needs 'fingerprints'"),
    ("unknown top-level key", "kind: release", "kind: release\nkinds: release", "kinds", 0,
     "unknown key 'kinds'; did you mean 'kind'?"),
    ("bad template", 'name: "freebsd{{ release }}-{{ flavour }}"', 'name: "freebsd{{ release }-{{ flavour }}"',
     '"freebsd{{', 0, "bad template"),
]


@pytest.mark.parametrize("case", RELEASE_CASES, ids=[c[0] for c in RELEASE_CASES])
def test_broken_release_reports_position(project_copy, case):
    _, old, new, needle, nth, message = case
    path = project_copy / "releases" / "14.2.yaml"
    text = path.read_text()
    assert old in text, old
    text = text.replace(old, new, 1)
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_project(project_copy)
    diags = [d for d in info.value.diagnostics if message in d.message]
    assert diags, [str(d) for d in info.value.diagnostics]
    d = diags[0]
    assert d.file == str(path)
    assert (d.line, d.column) == pos(text, needle, nth), str(d)


def test_release_file_name_must_match(project_copy):
    (project_copy / "releases" / "14.2.yaml").rename(project_copy / "releases" / "14.9.yaml")
    with pytest.raises(ConfigError) as info:
        load_project(project_copy)
    assert "must live in 14.2.yaml" in str(info.value)


def test_package_map_renames_per_release(project_copy, capsys):
    # FreeBSD's own lines rename nothing the families install: give 15.0 a (made-up) rename and split
    path = project_copy / "releases" / "15.0.yaml"
    text = path.read_text()
    assert "\npackage-map:" not in text
    path.write_text(text + "package-map:\n  FreeBSD-kerberos-lib: [FreeBSD-krb5-lib, FreeBSD-gssapi-lib]\n")
    assert main(["--project", str(project_copy), "plan", "--json", "--release", "15.0", "--flavour", "minimal",
                 "--arch", "amd64"]) == 0
    (target,) = json.loads(capsys.readouterr().out)["targets"]
    assert "FreeBSD-kerberos-lib" not in target["packages"]
    assert target["packages"].index("FreeBSD-krb5-lib") + 1 == target["packages"].index("FreeBSD-gssapi-lib")


def test_plan_json_lists_every_target(capsys):
    assert main(["plan", "--json"]) == 0
    targets = json.loads(capsys.readouterr().out)["targets"]
    project = load_project()
    expected = {(r.name, f, a.name) for r in project.releases.values() for f in project.family.flavours for a in r.arches}
    assert {(t["release"], t["flavour"], t["arch"]) for t in targets} == expected
    assert len(targets) == 4 * 5 * 2
    by = {(t["release"], t["flavour"], t["arch"]): t for t in targets}
    small = by[("14.2", "small", "aarch64")]
    minimal = by[("14.2", "minimal", "aarch64")]
    assert small["image"] == "freebsd14.2-small" and small["platform"] == "arm64"
    assert small["parent"] == "minimal" and small["own_packages"] == ["FreeBSD-utilities"]
    assert small["packages"] == minimal["packages"] + ["FreeBSD-utilities"]
    assert by[("14", "minimal", "amd64")]["image"] == "freebsd14-minimal"
    assert by[("15", "static", "amd64")]["abi"] == "FreeBSD:15:amd64"
