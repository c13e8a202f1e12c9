"""What a build of one Dockerfile is asked to do: the `BuildRequest` that `buildgraph build`
carries out and `buildgraph executor` (Kaniko's flags) makes. Pure data."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph.image.oci import Platform


@dataclass(frozen=True, slots=True)
class BuildRequest:
    context: Path
    dockerfile: Path
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    platform: Platform = field(default_factory=Platform)
    no_cache: bool = False
    pull: bool = False  # always ask the registry for FROM images
    push: bool = False
    jobs: int = os.cpu_count() or 2
    network: str = "host"  # what RUN uses unless it says --network
    cache_from: str | None = None  # remote cache repositories (--cache-repo sets both)
    cache_to: str | None = None
    secrets: Mapping[str, Path] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)  # --label: added to the image config
    allow: frozenset[str] = frozenset()  # entitlements (--allow), e.g. security.insecure
    isolation: str = "auto"  # auto | namespaces | chroot (worker/isolation.py)
    compression: str = "gzip"  # of layers pushed (--push, type=registry): gzip or zstd
