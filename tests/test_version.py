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


def test_at_least_30_pairs():
    assert len(LESS) + len(EQUAL) >= 30
