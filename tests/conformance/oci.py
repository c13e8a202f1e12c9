"""Outside tools that turn an OCI layout into data: umoci for the base image and for unpacking."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def unpack(layout: Path, tag: str, rootfs: Path) -> Path:
    """Unpack layout:tag into rootfs with umoci, applying whiteouts, opaque dirs and hardlinks.

    `raw unpack`, because plain `unpack` also writes a runtime config.json, which fails on
    images whose /etc/group is not a file (the fs-file-to-dir case).
    """
    _run(["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(rootfs)])
    return rootfs


def image_config(layout: Path, tag: str) -> dict[str, Any]:
    """The config document of layout:tag, read straight from the blobs."""
    index = json.loads((layout / "index.json").read_text())
    for descriptor in index["manifests"]:
        if descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            manifest = json.loads(_blob(layout, descriptor["digest"]))
            return json.loads(_blob(layout, manifest["config"]["digest"]))
    raise KeyError(f"{layout}: no image tagged {tag!r}")


def make_busybox_oci(rootfs: Path, layout: Path, tag: str = "busybox") -> Path:
    """An OCI layout holding rootfs as a one-layer image with an empty config.

    The config is empty (no Env, no Cmd) because that is what `buildgraph image import` gives
    the engine from the same rootfs, like `docker import`; both tools then start equal.
    """
    _run(["umoci", "init", "--layout", str(layout)])
    _run(["umoci", "new", "--image", f"{layout}:{tag}"])
    _run(["umoci", "insert", "--image", f"{layout}:{tag}", str(rootfs), "/"])
    _run(["umoci", "gc", "--layout", str(layout)])
    return layout


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    return (layout / "blobs" / algorithm / hexdigest).read_bytes()


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-4000:]}")
