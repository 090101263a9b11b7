#!/bin/sh
# The nightly release-engineering job: for each release line (default: all of
# releases/), check freshness, lock, build every flavour and arch, verify
# reproducibility, publish only what changed, and write report.md/report.json.
#
# Environment: FREEBSD_IMAGES_REGISTRY (HOST/NAMESPACE to publish to),
# FREEBSD_IMAGES_REGISTRY_INSECURE=1 (plain HTTP), FREEBSD_IMAGES_REGISTRY_USER
# and FREEBSD_IMAGES_REGISTRY_PASSWORD, FREEBSD_IMAGES_MIRROR (file:// or
# https:// mirror root), FREEBSD_IMAGES_KEYS (trust directory for the mirror),
# FREEBSD_IMAGES_OUT (default build/nightly), SOURCE_DATE_EPOCH (optional).
set -eu
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m builder nightly "$@"
