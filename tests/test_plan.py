"""The layer plan (builder/layers/plan.py): keys and what to build, decided with no package at hand."""
from __future__ import annotations

from dataclasses import replace

import pytest

from builder.config.project import load_project
from builder.errors import BuildError
from builder.layers.plan import KeyInputs, LayerOptions, layer_keys, schedule, wanted_flavours
from builder.resolve.lock import ArchLock, FlavourLock, LockedPackage
from tests.conftest import ROOT

CHAIN = ["static", "base", "minimal", "small"]
PARENTS = {"static": None, "base": "static", "minimal": "base", "small": "minimal"}
KEYS = {f: f"key-{f}" for f in CHAIN}
BASES = frozenset({"static", "base", "minimal"})


def steps(cached=(), fs_cached=(), wanted=CHAIN):
    return {s.flavour: s for s in schedule(list(wanted), PARENTS, KEYS, frozenset(cached), frozenset(fs_cached), BASES)}


def test_nothing_cached_builds_every_layer_from_the_bottom():
    got = steps()
    assert [f for f, s in got.items() if s.write and s.assemble and not s.load_fs] == CHAIN
    assert [f for f, s in got.items() if s.keep_fs] == ["static", "base", "minimal"]


def test_everything_cached_assembles_and_loads_nothing():
    got = steps(cached=CHAIN, fs_cached=CHAIN)
    assert not any(s.write or s.assemble or s.load_fs for s in got.values())


def test_a_child_to_build_starts_from_its_parents_cached_filesystem():
    got = steps(cached=["static", "base", "minimal"], fs_cached=["static", "base", "minimal"])
    assert got["small"].write and got["small"].assemble
    assert got["minimal"].load_fs and not got["minimal"].assemble and not got["minimal"].write
    assert not got["base"].load_fs and not got["static"].load_fs    # nothing below the nearest copy


def test_without_a_cached_filesystem_the_chain_is_assembled_down_to_the_nearest_one():
    got = steps(cached=["static", "base", "minimal"], fs_cached=["static"])
    assert [f for f, s in got.items() if s.assemble] == ["base", "minimal", "small"]
    assert [f for f, s in got.items() if s.write] == ["small"]           # base and minimal: reused layers
    assert [f for f, s in got.items() if s.load_fs] == ["static"]


def test_a_cached_filesystem_of_a_layer_not_cached_is_not_used():
    got = steps(cached=["base"], fs_cached=["static", "base"])
    assert got["static"].assemble and got["static"].write and not got["static"].load_fs
    assert got["minimal"].assemble and not got["base"].assemble and got["base"].load_fs


def test_wanted_flavours_bring_their_ancestors_in_family_order():
    family = load_project(ROOT).family
    assert wanted_flavours(family, ["minimal"]) == ["static", "base", "minimal"]
    assert wanted_flavours(family, ["small", "static"]) == CHAIN
    assert wanted_flavours(family) == list(family.names)


@pytest.fixture(scope="module")
def facts():
    project = load_project(ROOT)
    release, family = project.view("14.2")
    names = sorted({n for f in family.names for ref in family.resolve(f).packages for n in [ref.name]})
    lock = ArchLock(abi=release.abi("amd64"), catalogues={"base": "sha256:00"},
                    packages={n: LockedPackage(n, "base/x", "14.2p1", "base", f"All/{n}.pkg", 1, "00" * 32)
                              for n in names + [release.version_package]},
                    flavours={f: FlavourLock(packages=tuple(r.name for r in family.resolve(f).packages))
                              for f in family.names})
    inputs = {f: KeyInputs(rendered=tuple(b"file" for _ in family.resolve(f).files), trust=()) for f in family.names}
    return family, release, lock, inputs


def keys_of(facts, **change):
    family, release, lock, inputs = facts
    opts = change.pop("opts", LayerOptions(epoch=1731456000))
    lock = change.pop("lock", lock)
    inputs = change.pop("inputs", inputs)
    return layer_keys(family, release, "amd64", lock, opts, list(family.names), inputs,
                      {r.key: r.name for r in release.repositories}, {"layers": "x", "pkgdb": "y"})


def test_keys_are_a_function_of_the_inputs(facts):
    assert keys_of(facts) == keys_of(facts)
    assert len(set(keys_of(facts).values())) == len(facts[0].names)


def test_a_change_below_reaches_every_key_above_and_none_below(facts):
    family, release, lock, inputs = facts
    before = keys_of(facts)
    bumped = dict(lock.packages)
    base_only = next(n for n in lock.flavours["base"].packages if n not in lock.flavours["static"].packages)
    bumped[base_only] = replace(bumped[base_only], version="14.2p2", sum="11" * 32)
    after = keys_of(facts, lock=replace(lock, packages=bumped))
    assert [f for f in CHAIN if after[f] != before[f]] == ["base", "minimal", "small"]
    files = dict(inputs, minimal=KeyInputs(rendered=tuple(b"other" for _ in inputs["minimal"].rendered),
                                           trust=(("/usr/share/keys/x", "00"),)))
    assert [f for f in CHAIN if keys_of(facts, inputs=files)[f] != before[f]] == ["minimal", "small"]


def test_options_that_shape_bytes_change_every_key(facts):
    before = keys_of(facts)
    for opts in (LayerOptions(epoch=1), LayerOptions(epoch=1731456000, compression="zstd"),
                 LayerOptions(epoch=1731456000, squash=True)):
        after = keys_of(facts, opts=opts)
        assert all(after[f] != before[f] for f in CHAIN), opts


def test_a_flavour_missing_from_the_lock_is_a_refusal_naming_it(facts):
    family, release, lock, inputs = facts
    partial = replace(lock, flavours={f: e for f, e in lock.flavours.items() if f != "minimal"})
    with pytest.raises(BuildError, match=r"14\.2/amd64: flavour minimal is not in the lock file"):
        keys_of(facts, lock=partial)
