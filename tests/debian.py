"""A Debian bookworm minbase root filesystem for slow tests, from this machine's own mirror."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def debian_mirror() -> str:
    """The bookworm mirror of this machine's apt sources (scripts/debian-mirror.sh reads
    one-line and deb822 sources alike), or $DEBIAN_MIRROR."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    done = subprocess.run(
        [str(REPO / "scripts/debian-mirror.sh"), "bookworm"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def debootstrap_bookworm(rootfs: Path) -> Path:
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    return rootfs
