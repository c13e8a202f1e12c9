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
    # debian:bookworm, once; then `buildgraph run` on Buildfile.yaml (workspace/Dockerfile).
    if ! buildgraph images -q | grep -qx 'debian:bookworm'; then
      rootfs=$(mktemp -d)
      trap 'rm -rf "$rootfs"' EXIT
      mirror=${DEBIAN_MIRROR:-$(scripts/debian-mirror.sh bookworm)}  # this machine's apt sources
      echo "quickstart: debootstrap --variant=minbase bookworm (once)" >&2
      debootstrap --variant=minbase bookworm "$rootfs/rootfs" "$mirror" >"$rootfs/debootstrap.log" 2>&1 \
        || { tail -20 "$rootfs/debootstrap.log" >&2; exit 1; }
      buildgraph image import "$rootfs/rootfs" -t debian:bookworm
    fi
    buildgraph run
    buildgraph images
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
