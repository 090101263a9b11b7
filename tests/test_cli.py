"""The command line's option table: one row per option, only the options a command uses, the environment read
once when arguments are resolved; and the nightly report that `nightly` prints from, typed."""
import json

import pytest

from builder import cli
from builder.cli import COMMANDS, OPTIONS, build_parser, resolve
from builder.runs.nightly import NightlyReport, markdown


def test_every_option_is_declared_once():
    assert len(OPTIONS) == len(cli._ROWS)     # two rows with one key: one would be lost


def test_every_argument_has_help():
    arguments = list(OPTIONS.values()) + [a for c in COMMANDS.values() for a in c.arguments]
    assert [a.flags for a in arguments if not a.help] == []


@pytest.mark.parametrize("extra", [["--out", "x"], ["--archives"], ["--sign-key", "k"], ["--jobs", "3"]])
def test_verify_takes_only_the_options_it_uses(extra, capsys):
    build_parser().parse_args(["verify", "--release", "14.2", "--all"])
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["verify", "--release", "14.2", "--all"] + extra)
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_parsing_reads_no_environment(monkeypatch):
    monkeypatch.setenv("FREEBSD_IMAGES_MIRROR", "file:///m")
    monkeypatch.setenv("FREEBSD_IMAGES_REGISTRY_INSECURE", "1")
    args = build_parser().parse_args(["publish", "layout"])
    assert args.insecure is None and args.to is None


def test_the_environment_fills_what_the_command_line_does_not_give():
    env = {"FREEBSD_IMAGES_REGISTRY": "reg.example/ns", "FREEBSD_IMAGES_REGISTRY_INSECURE": "1",
           "FREEBSD_IMAGES_OUT": "/night", "FREEBSD_IMAGES_SIGN_KEY": ""}
    args = resolve(build_parser().parse_args(["nightly", "14.2"]), env)
    assert (args.to, args.insecure, str(args.out), args.sign_key) == ("reg.example/ns", True, "/night", None)
    args = resolve(build_parser().parse_args(["nightly", "--to", "other/x", "--out", "o"]), env)
    assert (args.to, str(args.out), args.releases) == ("other/x", "o", [])
    args = resolve(build_parser().parse_args(["-q", "build", "--release", "14.2", "--all"]), {})
    assert (args.jobs, str(args.out), args.log.verbosity) == (2, "build/out", -1)
    assert "insecure" not in args     # build takes no registry option


def test_help_names_the_variable():
    assert "(default $FREEBSD_IMAGES_OUT, else build/nightly)" in OPTIONS["nightly-out"].help_text()
    assert OPTIONS["sign-key"].help_text().endswith("(default $FREEBSD_IMAGES_SIGN_KEY)")


def _report() -> dict:
    """A report as run() writes it: every key, with the values' JSON types."""
    closure = {"elf_files": 116, "dynamic": 115, "libraries": 46, "needed": 245, "unresolved": 1,
               "accepted": [{"elf": "/usr/bin/x", "package": "p", "soname": "libx.so.1", "kind": "library",
                             "reason": "not needed here"}]}
    platform = {"arch": "amd64", "platform": "amd64", "digest": "sha256:m", "layers": 4, "size": 1000,
                "closure": closure, "referrers": [{"artifactType": "application/spdx+json", "digest": "sha256:s"}],
                "signatures": "/look/ns/img@sha256=m"}
    image = {"image": "freebsd14.2-small", "tags": ["14.2", "14"], "index": "sha256:i", "action": "published",
             "previous": None, "signatures": "/look/ns/img@sha256=i",
             "platforms": [platform, dict(platform, arch="aarch64", platform="arm64", closure=None, referrers=[],
                                          signatures=None)],
             "advisories": {"open": ["v2"], "fixed": ["v1"], "new": []}}
    push = {"uploaded": 3, "uploaded_bytes": 10, "mounted": 1, "skipped": 0, "manifests": 2, "manifests_skipped": 0,
            "requests": 9, "referrers": 2, "referrers_unchanged": 0, "referrer_blobs": 3, "referrer_tags": 0,
            "signatures": 4}
    release = {"release": "14.2", "family": "official", "source_date_epoch": 1731456000, "epoch_source": "the lock",
               "layout": "build/nightly/14.2", "outdated": [{"name": "p", "old": "1", "new": None, "arches": ["amd64"]}],
               "downgrades_accepted": ["d"], "stale_catalogues": [],
               "changed_since_last_publish": [{"package": "p", "old": None, "new": "2", "arches": ["amd64", "aarch64"]}],
               "reproducible": False, "differences": ["x differs"], "images": [image], "published": True,
               "signed": True, "push": push, "writer_drift": ["libzstd: zstandard 0.23.0 running libzstd 1.5.7 is "
                                                               "another version"],
               "unlike_independent": ["freebsd14.2-small:14.2 layer 4/4: /bin/x: mode"]}
    return {"releases": [release, dict(release, family="default", reproducible=None, push=None, images=[])]}


def test_nightly_report_round_trips_its_json():
    doc = _report()
    report = NightlyReport.from_json(json.loads(json.dumps(doc)))
    assert report.to_json() == doc
    assert json.dumps(report.to_json(), sort_keys=True) == json.dumps(doc, sort_keys=True)
    md = markdown(report)
    assert "## 14.2 (official family)" in md and "**NOT reproducible**" in md and "not verified" in md
    assert "| 116 | 115 | 46 | 1 |" in md and "| - | - | - | - |" in md
    assert "- freebsd14.2-small (amd64): /usr/bin/x needs libx.so.1: not needed here" in md
    assert "- p (new) \u2192 2 (amd64, aarch64)" in md
    assert "- libzstd: zstandard 0.23.0 running libzstd 1.5.7 is another version" in md
    assert "Not published: the layout differs from an independent build without caches" in md
    assert "- freebsd14.2-small: fixed by this build: v1; still open: v2" in md
    assert "application/spdx+json `sha256:s`; signatures in `/look/ns/img@sha256=m`" in md
