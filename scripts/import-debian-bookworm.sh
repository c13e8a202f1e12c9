#!/usr/bin/env bash
# debian:bookworm in the local store (./cache), once: `debootstrap --variant=minbase bookworm`
# imported with `buildgraph image import`. The base of the seed target and of the executor image.
# Expects buildgraph on the PATH (scripts/quickstart.sh and scripts/build-executor-image.sh set it).
set -euo pipefail
cd "$(dirname "$0")/.."
if buildgraph images -q | grep -qx 'debian:bookworm'; then
  exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mirror=${DEBIAN_MIRROR:-$(scripts/debian-mirror.sh bookworm)}  # this machine's apt sources
echo "import-debian-bookworm: debootstrap --variant=minbase bookworm (once)" >&2
debootstrap --variant=minbase bookworm "$rootfs/rootfs" "$mirror" >"$rootfs/debootstrap.log" 2>&1 \
  || { tail -20 "$rootfs/debootstrap.log" >&2; exit 1; }
buildgraph image import "$rootfs/rootfs" -t debian:bookworm
