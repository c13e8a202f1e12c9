"""RUN --mount: turn each mount of a step into a bind or tmpfs for the sandbox."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import xxhash

from buildgraph.errors import StepFailed
from buildgraph.graph.steps import RunStep
from buildgraph.worker.sandbox import Bind, Secret, Tmpfs


def run_mounts(
    step: RunStep, scratch: Path, cache_root: Path, secrets: Mapping[str, Path]
) -> tuple[Bind | Tmpfs | Secret, ...]:
    """Binds for the sandbox; nothing here ever lands in the step's layer, and a secret is
    read into memory only: the sandbox puts it on a tmpfs of its own mount namespace."""
    binds: list[Bind | Tmpfs | Secret] = []
    for mount in step.mounts:
        match mount.type:
            case "tmpfs":
                binds.append(Tmpfs(mount.target, mount.size))
            case "cache":
                # Persists across builds, outside any image, one dir per cache id.
                path = cache_root / xxhash.xxh3_64_hexdigest(mount.id.encode())
                if not path.exists():
                    path.mkdir(parents=True, exist_ok=True)
                    path.chmod(mount.mode if mount.mode is not None else 0o755)
                    if mount.uid is not None or mount.gid is not None:
                        os.chown(path, mount.uid or 0, mount.gid or 0)
                binds.append(Bind(path, mount.target))
            case "secret":
                source = secrets.get(mount.id)
                if source is None:
                    if mount.required:
                        raise StepFailed(
                            f"{step.title}: secret {mount.id!r} is required "
                            "but was not given (--secret id=...,src=...)",
                            step.where,
                        )
                    continue
                try:
                    content = Path(source).read_bytes()
                except OSError as err:
                    raise StepFailed(
                        f"{step.title}: secret {mount.id!r}: cannot read {source}: {err.strerror}",
                        step.where,
                    ) from err
                mode = mount.mode if mount.mode is not None else 0o400
                binds.append(Secret(mount.target, content, mode, mount.uid or 0, mount.gid or 0))
            case "bind":
                source = Path(step.context) / mount.source
                if not mount.readonly:  # writes are allowed but thrown away, as in BuildKit
                    copy = scratch / f"bind-{len(binds)}"
                    if source.is_dir():
                        shutil.copytree(source, copy, symlinks=True)
                    else:
                        shutil.copy2(source, copy)
                    source = copy
                binds.append(Bind(source, mount.target, readonly=mount.readonly))
            case other:
                raise StepFailed(f"RUN --mount=type={other} is not supported", step.where)
    return tuple(binds)
