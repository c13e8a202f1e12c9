#!/usr/bin/env bash
# Prints the Debian mirror this machine's apt uses for SUITE (default bookworm): the URI of the
# first `deb` entry that lists that suite, read from $APT_DIR (default /etc/apt): sources.list
# and sources.list.d/*.list (one-line format), then sources.list.d/*.sources (deb822). Exit 1
# when there is none, so that no mirror host is ever written into the code.
set -euo pipefail
suite=${1:-bookworm}
apt_dir=${APT_DIR:-/etc/apt}

# One-line format: `deb [options] URI SUITE COMPONENT...`
one_line() {
  local file=$1 line uri
  while read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    [[ $line =~ ^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+) ]] || continue
    uri=${BASH_REMATCH[2]}
    [ "${BASH_REMATCH[3]%/}" = "$suite" ] || continue
    echo "${uri%/}"
    return 0
  done <"$file"
  return 1
}

# deb822: stanzas separated by blank lines, with `Types:`, `URIs:`, `Suites:` (and `Enabled:`).
deb822() {
  local file=$1
  awk -v suite="$suite" '
    function flush() {
      if (types ~ /(^| )deb( |$)/ && uris != "" && (" " suites " ") ~ (" " suite " ") && enabled != "no") {
        split(uris, u, " "); sub(/\/$/, "", u[1]); print u[1]; found = 1; exit
      }
      types = ""; uris = ""; suites = ""; enabled = ""
    }
    /^[[:space:]]*#/ { next }
    /^[[:space:]]*$/ { flush(); next }
    tolower($1) == "types:"   { $1 = ""; types = $0 " " }
    tolower($1) == "uris:"    { $1 = ""; sub(/^ +/, ""); uris = $0 }
    tolower($1) == "suites:"  { $1 = ""; sub(/^ +/, ""); suites = $0 }
    tolower($1) == "enabled:" { enabled = tolower($2) }
    END { if (!found) flush(); exit !found }
  ' "$file"
}

candidates=()
[ -f "$apt_dir/sources.list" ] && candidates+=("$apt_dir/sources.list")
for file in "$apt_dir"/sources.list.d/*.list; do [ -f "$file" ] && candidates+=("$file"); done
for file in "${candidates[@]}"; do
  one_line "$file" && exit 0
done
for file in "$apt_dir"/sources.list.d/*.sources; do
  [ -f "$file" ] && deb822 "$file" && exit 0
done
echo "debian-mirror: no apt source for $suite in $apt_dir/sources.list or $apt_dir/sources.list.d/ (set DEBIAN_MIRROR)" >&2
exit 1
