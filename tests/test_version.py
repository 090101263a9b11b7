"""pkg's version ordering, as documented in libpkg/pkg_version.c and pkg-version(8)."""
import pytest

from builder.resolve.version import compare

LESS = [
    ("14.2", "14.2p1"), ("14.2p1", "14.2p2"), ("14.2p9", "14.2p10"), ("14.2p2", "14.3"),
    ("14.3", "15.0"), ("14.snap20261119", "14.snap20261120"), ("15.snap20260101", "15.snap20261231"),
    ("1.0", "1.0_1"), ("1.0_1", "1.0_2"), ("1.0_9", "1.0_10"), ("2.0_5", "1.0,1"), ("1.0,1", "1.0,2"),
    ("1.0,1", "1.0_1,1"), ("1.0", "1.0.1"), ("1.9", "1.10"), ("1.0a", "1.0b"), ("1.0", "1.0a"),
    ("1.0alpha1", "1.0"), ("1.0alpha1", "1.0beta1"), ("1.0beta1", "1.0pre1"), ("1.0pre1", "1.0rc1"),
    ("1.0rc1", "1.0"), ("1.0rc1", "1.0rc2"), ("1.0pl1", "1.0alpha1"), ("1.0.a", "1.0"), ("a", "0"),
    ("2.*", "2pl1"), ("2pl1", "2alpha3"), ("2alpha3", "2.9f7"), ("2.9f7", "3.*"), ("0.1beta2", "0.1"),
    ("1.0.1:2003.09.16", "1.0:2003.09.16"), ("2.0.6", "2.0.10"), ("1.1", "1.1+1"), ("1.2", "1.10"),
]
EQUAL = [("14.2p1", "14.2p1"), ("10", "10.0"), ("10", "10.0.0"), ("10..1", "10.1"), ("1.d2", "1.dev2"),
         ("1.dev2", "1.Development2"), ("0.1beta2", "0.1.b2"), ("1.0_0", "1.0"), ("1.0,0", "1.0")]


@pytest.mark.parametrize("a,b", LESS)
def test_less(a, b):
    assert compare(a, b) == -1
    assert compare(b, a) == 1


@pytest.mark.parametrize("a,b", EQUAL)
def test_equal(a, b):
    assert compare(a, b) == 0


# Orderings pkg itself states, verbatim: the comment above get_component() in libpkg/pkg_version.c,
# and pkg's own test of `pkg version -t` (tests/frontend/version.sh). Every pair along a chain holds.
PKG_DOCUMENTED = [
    "1.0:2003.09.16 = 1.0.2003.09.16",
    "1.0.1:2003.09.16 < 1.0:2003.09.16",
    "10..1 = 10.1",
    "10a1b2 = 10a1.b2",
    "10 = 10.0 = 10.0.0",
    "10 < 10a < 10b",
    "a < 0",
    "10.a < 10",
    "10alpha = 10.a < 10",
    "pl11 < alpha3 < 0.1beta2 = 0.1.b2 < 0.1",
    "1.d2 = 1.dev2 = 1.Development2",
    "2.* < 2pl1 < 2alpha3 < 2.9f7 < 3.*",
    "1 < 2", "2 = 2", "2 < 1,1",
]


@pytest.mark.parametrize("chain", PKG_DOCUMENTED)
def test_orderings_documented_by_pkg(chain):
    tokens = chain.split()
    versions, ops = tokens[::2], tokens[1::2]
    assert len(versions) == len(ops) + 1 and set(ops) <= {"<", "="}
    for i in range(len(versions)):
        for j in range(i + 1, len(versions)):
            want = 0 if all(op == "=" for op in ops[i:j]) else -1
            assert compare(versions[i], versions[j]) == want, (versions[i], versions[j])
            assert compare(versions[j], versions[i]) == -want, (versions[j], versions[i])


def _numeric_key(v: str) -> tuple:
    """An independent rule for plain numeric versions: epoch, then the dotted numbers (missing
    ones are 0), then the revision -- ${PORTEPOCH} supersedes ${PORTVERSION} supersedes ${PORTREVISION}."""
    body, _, epoch = v.partition(",")
    body, _, rev = body.partition("_")
    nums = [int(x) for x in body.split(".")]
    return int(epoch or 0), tuple(nums + [0] * (4 - len(nums))), int(rev or 0)


def _pkgbase_key(v: str) -> tuple:
    """pkgbase versions MAJOR.MINOR[pN]: the release, then the patch level (none before p1)."""
    major, _, rest = v.partition(".")
    minor, _, patch = rest.partition("p")
    return int(major), int(minor), int(patch or 0)


NUMERIC = [b + r + e for b in ("1", "1.0", "1.0.1", "1.2", "1.10", "2", "2.0.0", "10", "14.2", "14.10", "0.9.9.9")
           for r in ("", "_1", "_2", "_10") for e in ("", ",1", ",2")]
PKGBASE = [f"{major}.{minor}{p}" for major in (13, 14, 15) for minor in (0, 1, 2, 9, 10)
           for p in ("", "p1", "p2", "p9", "p10")]


@pytest.mark.parametrize("versions,key", [(NUMERIC, _numeric_key), (PKGBASE, _pkgbase_key)], ids=["numeric", "pkgbase"])
def test_agrees_with_an_independent_rule_on_every_pair(versions, key):
    wrong = []
    for a in versions:
        for b in versions:
            ka, kb = key(a), key(b)
            want = (ka > kb) - (ka < kb)
            if compare(a, b) != want:
                wrong.append((a, b, compare(a, b), want))
    assert wrong == []
    assert len(versions) ** 2 > 4000
