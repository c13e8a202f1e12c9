#!/usr/bin/env bash
# Builds the executor image with buildgraph itself: wheels of this repository and its
# dependencies (pip wheel, on the host) into executor/wheels, debian:bookworm imported once as
# the Quick start does, then `buildgraph run executor` (the Buildfile's `executor` target,
# tagged buildgraph/executor:latest in ./cache). With --push REF, also pushes it to REF
# (credentials from $DOCKER_CONFIG/config.json, else ~/.docker/config.json).
#
#   scripts/build-executor-image.sh
#   scripts/build-executor-image.sh --push registry.example.com/tools/buildgraph-executor:0.1.0
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: scripts/build-executor-image.sh [--push REF]" >&2; exit 2; }
push=""
case "$#:${1:-}" in
  0:) ;;
  2:--push) push=$2; [ -n "$push" ] || usage ;;
  *) usage ;;
esac
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# Reproducible wheels (zip timestamps from the last commit that changed what the wheel holds), so
# an unchanged package hits the step cache.
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct -- buildgraph pyproject.toml README.md 2>/dev/null || true)
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
export SOURCE_DATE_EPOCH
rm -rf executor/wheels build/
python -m pip wheel -q --disable-pip-version-check '.[dask]' -w executor/wheels
scripts/import-debian-bookworm.sh
buildgraph run executor --progress plain
if [ -n "$push" ]; then
  buildgraph push buildgraph/executor:latest "$push"
fi
