#!/usr/bin/env bash
# Installs what buildgraph and its tests need on Debian 12 (as root): apt packages and the
# Python package in ./.venv. Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc git ca-certificates
  busybox-static debootstrap      # base images: busybox (fast suite), Debian minbase (slow suite)
  docker-registry                 # the CNCF distribution registry the tests run on 127.0.0.1
  skopeo umoci buildah            # outside checks of what buildgraph writes; the peer we match
  zstd time                       # `zstd -t` of zstd layers; bench/bench_pack.py's tar peer and GNU time
  apache2-utils openssl           # htpasswd for the registry auth tests
  docker.io                       # a private dockerd: `docker load` + `docker run` of our images
  libseccomp2                     # RUN's seccomp filter (apt depends on it; listed to be explicit)
  procps                          # pgrep: the kill tests look for leftover RUN processes
)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package starts nothing here (no systemd), but make sure no stray registry holds :5000.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
stamp=.venv/.buildgraph-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
