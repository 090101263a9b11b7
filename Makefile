# freebsd-images: build the FreeBSD OCI base-image family.
#
#   make demo                         offline mirror + the whole family for one release, both arches
#   make test                         the test suite
#   make freebsd14.2-minimal ARCH=arm64   one image (ARCH defaults to all arches of the release)
#   make freebsd15.0-runtime FAMILY=official   one image of FreeBSD's own family (families/official.yaml)

# Everything runs in a virtual environment made on first use from the host's python3,
# with the exact versions of constraints.txt (make VENV=/other/path to put it elsewhere).
HOST_PYTHON ?= python3
VENV        ?= .venv
PYTHON      := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
FI          := $(PYTHON) -m builder
RELEASE     ?= 14.2
ARCH        ?=
OUT         ?= build/out
DEMO_MIRROR ?= build/mirror
# MIRROR empty: the offline demo mirror (generated on demand for the image's release);
# MIRROR=release: the URLs in releases/*.yaml; anything else: that mirror root (KEYS to trust it).
MIRROR      ?=
KEYS        ?=
# default: families.yaml; official: families/official.yaml (FreeBSD's own images)
FAMILY      ?= default

# Locks made against the generated demo mirror live under build/, not releases/.
DEMO_ARGS   = --mirror file://$(abspath $(DEMO_MIRROR)) --keys $(abspath $(DEMO_MIRROR))/keys --lock-dir build/locks
MIRROR_ARGS = $(if $(MIRROR),$(if $(filter release,$(MIRROR)),,--mirror $(MIRROR) $(if $(KEYS),--keys $(KEYS),)),$(DEMO_ARGS))
ARCH_ARGS   = $(foreach a,$(ARCH),--arch $(a))
FAMILY_ARGS = --family $(FAMILY)

.PHONY: help demo test check plan bench verify clean mirror venv golden ci-check

# A venv made without ensurepip (Debian's python3 without python3-venv) gets pip from the host's pip.
$(STAMP): pyproject.toml constraints.txt
	@$(HOST_PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 9))' || { echo "python3 >= 3.9 needed"; exit 1; }
	@test -x $(PYTHON) || $(HOST_PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); $(HOST_PYTHON) -m venv --without-pip $(VENV); }
	@if $(PYTHON) -m pip --version >/dev/null 2>&1; then \
	  $(PYTHON) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'; \
	else \
	  $(HOST_PYTHON) -m pip --python $(PYTHON) install -q --disable-pip-version-check -c constraints.txt -e '.[test]' \
	  || { echo "cannot install into $(VENV): install python3-venv (Debian) or pip"; exit 1; }; \
	fi
	@touch $@

venv: $(STAMP)  ## make the virtual environment (done by every target that needs it)

help:  ## this list
	@grep -E '^[a-zA-Z0-9%_.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sed 's/^freebsd%/freebsdR-FLAVOUR/' | expand -t 24

$(DEMO_MIRROR)/.release-%: $(STAMP)
	$(FI) generate $* --out $(DEMO_MIRROR)
	@touch $@

$(DEMO_MIRROR)/keys/repo.pub: $(DEMO_MIRROR)/.release-$(RELEASE)

mirror: $(DEMO_MIRROR)/keys/repo.pub  ## generate the offline demo mirror (if absent)

demo: mirror  ## build the whole family for $(RELEASE), both arches, from the offline mirror
	$(FI) build --release $(RELEASE) --all $(FAMILY_ARGS) --out $(OUT) $(DEMO_ARGS)

test: $(STAMP)  ## run the test suite
	$(PYTHON) -m pytest -n auto -q

check: $(STAMP)  ## validate families.yaml and releases/
	$(FI) check

ci-check: $(STAMP)  ## the GitHub workflow: current, valid for GitHub's schema, clean for zizmor
	$(FI) ci render --check
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows ci/github-nightly.yml
	$(VENV)/bin/zizmor --offline --persona auditor ci/github-nightly.yml

plan: $(STAMP)  ## show every target and its packages (FAMILY=official for FreeBSD's own)
	$(FI) plan $(FAMILY_ARGS)

bench: $(STAMP)  ## benchmarks: family (~150 MB small), no-op, one bump, ~1.2 GB image; vs zlib-6 and official-style
	$(PYTHON) -m builder.runs.bench

golden: $(STAMP)  ## rewrite tests/fixtures/golden/ (expected digests of the demo family): a format change
	$(PYTHON) -m tests.golden

verify: mirror  ## build the demo family twice under perturbation and diff
	$(FI) verify --release $(RELEASE) --all $(FAMILY_ARGS) $(DEMO_ARGS)

# freebsdRELEASE-FLAVOUR names a release and a flavour in every family (the official family's
# own image names, freebsd-FLAVOUR, do not say which release).
freebsd%: $(STAMP)  ## build one image, e.g. make freebsd14-minimal ARCH=arm64, make freebsd15.0-toolchain FAMILY=official
	@rel=$$(echo $@ | sed -E 's/^freebsd([0-9.]+)-.*/\1/'); \
	if [ -z "$(MIRROR)" ] && [ ! -f $(DEMO_MIRROR)/.release-$$rel ]; then $(MAKE) --no-print-directory $(DEMO_MIRROR)/.release-$$rel; fi
	$(FI) build --release $(shell echo $@ | sed -E 's/^freebsd([0-9.]+)-.*/\1/') \
	  --flavour $(shell echo $@ | sed -E 's/^freebsd[0-9.]+-//') $(FAMILY_ARGS) $(ARCH_ARGS) --out $(OUT) $(MIRROR_ARGS)

clean:  ## remove build outputs (not the download cache, not .venv)
	rm -rf build
