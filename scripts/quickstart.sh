#!/usr/bin/env bash
# The two Quick start commands: `scripts/quickstart.sh run` (the main job) and
# `scripts/quickstart.sh test` (the whole test suite). Each sets everything up first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

case "${1:-run}" in
  run)
    # Main job (the seed scenario): a Debian bookworm minbase root filesystem made with
    # debootstrap and imported into the local store (./cache, an OCI layout) as
    # debian:bookworm, once; then `buildgraph run` on Buildfile.yaml (workspace/Dockerfile),
    # whose default group also runs the task tool-versions in that image (`curl --version` and
    # `wget --version` into out/tool-versions/versions.txt; replayed from the cache next time).
    scripts/import-debian-bookworm.sh
    buildgraph run
    buildgraph images
    cat out/tool-versions/versions.txt
    ;;
  test)
    shift || true
    exec python -m pytest "$@"
    ;;
  *)
    echo "usage: scripts/quickstart.sh run|test [pytest args]" >&2
    exit 2
    ;;
esac
