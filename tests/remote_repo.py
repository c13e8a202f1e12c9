"""A two-target repository (base, and app FROM base) whose Buildfile names a remote cache."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cli_runs import write_repo

BUILDFILE = """version: 1
cache: {{dir: cache, remote: "{remote}"}}
targets:
  base:
    context: base
    tags: ["base:1"]
  app:
    context: app
    contexts: {{base: "target:base"}}
    tags: ["app:1"]
"""
FILES = {
    "base/Dockerfile": "FROM busybox\nRUN echo base > /base.txt\n",
    "app/Dockerfile": "FROM base\nCOPY main.txt /app/\nRUN cat /base.txt /app/main.txt > /out\n",
    "app/main.txt": "v1\n",
}


def make_repo(
    root: Path, busybox_cache: Path, remote: str, files: Mapping[str, str] = FILES
) -> Path:
    """Write the repository under ROOT with a cache dir holding only busybox (a copy)."""
    return write_repo(
        root, {**files, "Buildfile.yaml": BUILDFILE.format(remote=remote)}, busybox_cache
    )
