"""`reproduce REF`: a published image rebuilt from the recipe attached to it, by anyone holding only the image."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from builder import FORMAT_VERSION
from builder.cli import main
from builder.oci import attest
from builder.oci.layout import Descriptor, Layout, canonical
from builder.oci.recipe import RECIPE_MT
from tests.conftest import demo_project

RELEASE = "14.2"
IMAGE = f"freebsd{RELEASE}-minimal"


@pytest.fixture(scope="module")
def published(demo_mirror, tmp_path_factory):
    """A layout built in one place and copied alone (no project, no lock, no cache) to another."""
    tmp = tmp_path_factory.mktemp("published")
    project = demo_project(tmp)
    assert main(["--project", str(project), "-q", "build", "--release", RELEASE, "--flavour", "minimal",
                 "--out", str(tmp / "out"), "--mirror", f"file://{demo_mirror}", "--keys", str(demo_mirror / "keys"),
                 "--lock-dir", str(tmp / "locks"), "--cache-dir", str(tmp / "cache")]) == 0
    copy = tmp / "elsewhere" / "layout"
    shutil.copytree(tmp / "out" / RELEASE, copy)
    for gone in (project, tmp / "out", tmp / "locks", tmp / "cache"):
        shutil.rmtree(gone)
    return copy


def _copy(layout: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "layout"
    shutil.copytree(layout, dst)
    return dst


def test_a_copied_layout_is_reproduced_from_its_recipe(published, demo_mirror, tmp_path, capsys):
    rc = main(["reproduce", f"{published}:{IMAGE}:{RELEASE}", "--mirror", f"file://{demo_mirror}", "--json",
               "--keep", str(tmp_path / "keep")])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads(out[out.index("{"):])
    assert doc["reproduced"] and [p["platform"] for p in doc["platforms"]] == ["freebsd/amd64", "freebsd/arm64/v8"]
    # rebuilt from the recipe's files in a scratch project, not from this checkout
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["0-freebsd-amd64", "1-freebsd-arm64-v8"]
    assert (tmp_path / "keep" / "0-freebsd-amd64" / "project" / "families.yaml").is_file()


def _tamper(layout_dir: Path, edit) -> None:
    """Replace every platform manifest's recipe with an edited one (as someone holding the layout could)."""
    layout = Layout(layout_dir)
    referrers = layout.referrers()
    for subject, descs in referrers.items():
        kept = [d for d in descs if d.artifact_type != RECIPE_MT]
        recipe = next(d for d in descs if d.artifact_type == RECIPE_MT)
        doc = json.loads(layout.read_blob(layout.read_json(recipe.digest)["layers"][0]["digest"]))
        edit(doc)
        desc = attest.attach(layout, _descriptor(layout, subject), RECIPE_MT, RECIPE_MT, canonical(doc), 0)
        referrers[subject] = kept + [desc]
    layout.set_refs({}, referrers=referrers)


def _descriptor(layout: Layout, digest: str) -> Descriptor:
    return Descriptor(layout.read_json(digest)["mediaType"], digest, len(layout.read_blob(digest)))


def test_a_recipe_with_another_epoch_gives_exit_1_naming_the_difference(published, demo_mirror, tmp_path, capsys):
    layout = _copy(published, tmp_path)
    _tamper(layout, lambda doc: doc.update(epoch=doc["epoch"] + 3600))
    assert main(["reproduce", f"{layout}:{IMAGE}:{RELEASE}", "--mirror", f"file://{demo_mirror}"]) == 1
    out = capsys.readouterr().out
    assert "NOT reproduced" in out and "created" in out


def test_a_recipe_with_another_package_sum_is_a_refusal_naming_the_package(published, demo_mirror, tmp_path, capsys):
    layout = _copy(published, tmp_path)

    def edit(doc):
        pkgs = next(iter(doc["lock"]["arches"].values()))["packages"]
        pkgs["FreeBSD-runtime"]["sum"] = "0" * 64
    _tamper(layout, edit)
    assert main(["reproduce", f"{layout}:{IMAGE}:{RELEASE}", "--mirror", f"file://{demo_mirror}"]) == 2
    assert "FreeBSD-runtime" in capsys.readouterr().err


def test_a_recipe_of_another_format_names_the_builder_to_use(published, demo_mirror, tmp_path, capsys):
    layout = _copy(published, tmp_path)
    _tamper(layout, lambda doc: doc.update(format=FORMAT_VERSION + 1, builder="9.9.9"))
    assert main(["reproduce", f"{layout}:{IMAGE}:{RELEASE}", "--mirror", f"file://{demo_mirror}"]) == 2
    err = capsys.readouterr().err
    assert f"made by freebsd-images 9.9.9 (format {FORMAT_VERSION + 1})" in err and "freebsd-images 9.9.9" in err


@pytest.mark.parametrize("name", ["../../escape.yaml", "/etc/passwd", "templates/../../x", "src/evil.py"])
def test_a_recipe_naming_a_file_outside_the_project_files_is_refused(published, demo_mirror, tmp_path, capsys, name):
    layout = _copy(published, tmp_path)
    _tamper(layout, lambda doc: doc["files"].update({name: {"text": "x"}}))
    assert main(["reproduce", f"{layout}:{IMAGE}:{RELEASE}", "--mirror", f"file://{demo_mirror}",
                 "--keep", str(tmp_path / "keep")]) == 2
    assert "is not a project file a build reads" in capsys.readouterr().err
    assert not (tmp_path / "escape.yaml").exists() and not (tmp_path / "keep").exists()


def test_an_image_without_a_recipe_is_a_refusal(published, tmp_path, capsys):
    layout_dir = _copy(published, tmp_path)
    layout = Layout(layout_dir)
    layout.set_refs({}, referrers={s: [d for d in ds if d.artifact_type != RECIPE_MT]
                                   for s, ds in layout.referrers().items()})
    assert main(["reproduce", f"{layout_dir}:{IMAGE}:{RELEASE}"]) == 2
    assert "no build recipe" in capsys.readouterr().err


def test_mirror_from_an_image_serves_its_rebuild_after_the_original_mirror_is_gone(published, demo_mirror, tmp_path,
                                                                                   capsys):
    original = tmp_path / "original"
    shutil.copytree(demo_mirror, original)
    ref = f"{published}:{IMAGE}:{RELEASE}"
    assert main(["mirror", "--from", ref, str(tmp_path / "kept"), "--mirror", f"file://{original}"]) == 0
    shutil.rmtree(original)
    assert main(["reproduce", ref, "--mirror", f"file://{tmp_path / 'kept'}"]) == 0, capsys.readouterr().out
    # exactly the packages locked, no catalogue
    assert not list((tmp_path / "kept").rglob("data.pkg"))


@pytest.mark.tools
def test_an_image_published_to_a_registry_is_reproduced_from_there(published, demo_mirror, registry, capsys):
    assert main(["publish", str(published), "--to", f"{registry.host}/repro", "--insecure"]) == 0
    capsys.readouterr()
    rc = main(["reproduce", f"docker://{registry.host}/repro/{IMAGE}:{RELEASE}", "--insecure",
               "--mirror", f"file://{demo_mirror}"])
    assert rc == 0, capsys.readouterr()


def test_changing_one_flavour_changes_only_its_chain_s_provenance_and_recipe(demo_mirror, tmp_path):
    """An image's provenance and recipe carry the flavours it is made of, not the whole family file."""
    project = demo_project(tmp_path)

    def build(out: str) -> dict:
        assert main(["--project", str(project), "-q", "build", "--release", RELEASE, "--all", "--arch", "amd64",
                     "--out", str(tmp_path / out), "--mirror", f"file://{demo_mirror}", "--keys",
                     str(demo_mirror / "keys"), "--lock-dir", str(tmp_path / "locks")]) == 0
        layout = Layout(tmp_path / out / RELEASE)
        refs = {n: d.digest for n, d in layout.refs().items() if n.endswith("-amd64")}
        return {n.split(":")[0]: sorted(r.digest for r in layout.referrers()[d]) for n, d in refs.items()}

    before = build("a")
    families = project / "families.yaml"
    text = families.read_text()
    families.write_text(text.replace("      - FreeBSD-utilities\n",
                                     "      - FreeBSD-utilities\n    files: [{path: /etc/motd.template, content: x}]\n"))
    after = build("b")
    assert [n for n in before if before[n] != after[n]] == [f"freebsd{RELEASE}-small"]
