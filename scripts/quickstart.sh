#!/usr/bin/env bash
# The two Quick start commands: `scripts/quickstart.sh run` (the main job) and
# `scripts/quickstart.sh test` (the whole test suite). Each sets everything up first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

case "${1:-run}" in
  run)
    # Main job: a busybox base image made from Debian's busybox-static, imported into the
    # local store (./cache, an OCI layout), then the store listed.
    if ! buildgraph images -q | grep -qx 'busybox:latest'; then
      rootfs=$(mktemp -d)
      trap 'rm -rf "$rootfs"' EXIT
      scripts/make-busybox-rootfs.sh "$rootfs/rootfs"
      buildgraph image import "$rootfs/rootfs" -t busybox:latest
    fi
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
