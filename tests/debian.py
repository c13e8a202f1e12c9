"""A Debian bookworm minbase root filesystem for slow tests, from this machine's own mirror."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SOURCES = (Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*")))


def debian_mirror() -> str:
    """The first enabled Debian archive URI of the apt sources (one-line or deb822 form)."""
    for source in SOURCES:
        if not source.is_file() or source.suffix not in ("", ".list", ".sources"):
            continue
        text = source.read_text(errors="replace")
        uris = re.findall(r"(?m)^URIs:\s*(\S+)", text)
        uris += re.findall(r"(?m)^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\b", text)
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                return uri
    raise AssertionError("no Debian mirror in /etc/apt/sources.list(.d)")


def debootstrap_bookworm(rootfs: Path) -> Path:
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    return rootfs
