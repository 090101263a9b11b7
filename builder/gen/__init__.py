"""A deterministic generator of pkgbase-format repositories (tests, benchmarks, demo)."""
