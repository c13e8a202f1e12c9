"""RUN --mount: turn each mount of a step into a bind or tmpfs for the sandbox."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import xxhash

from buildgraph.errors import InputError, StepFailed
from buildgraph.fs import file_lock
from buildgraph.graph.steps import RunMount, RunStep
from buildgraph.worker.sandbox import Bind, Secret, SecretEnv, StageBind, Tmpfs


def run_mounts(
    step: RunStep,
    scratch: Path,
    cache_root: Path,
    secrets: Mapping[str, Path],
    trees: Mapping[str, Sequence[Path]] | None = None,
    *,
    materialized: bool = False,
) -> tuple[Bind | StageBind | Tmpfs | Secret | SecretEnv, ...]:
    """Binds for the sandbox; nothing here ever lands in the step's layer, and a secret is
    read into memory only: the sandbox puts it on a tmpfs of its own mount namespace. `trees`
    holds the snapshot dirs (topmost first) of each stage or image a mount names with `from=`,
    or (`materialized`, the chroot isolation) its one materialized root."""
    trees = trees or {}
    binds: list[Bind | StageBind | Tmpfs | Secret | SecretEnv] = []
    for mount in step.mounts:
        match mount.type:
            case "tmpfs":
                binds.append(Tmpfs(mount.target, mount.size))
            case "cache":
                path = _cache_dir(step, mount, cache_root, scratch, trees, materialized)
                binds.append(Bind(path, mount.target))
            case "bind" if mount.stage_key:
                # BuildKit: read-only unless rw, and then what the command writes is dropped.
                upper = None if mount.readonly else scratch / f"tree-{len(binds)}"
                if upper is not None:
                    upper.mkdir()
                tree = tuple(trees[mount.stage_key])
                binds.append(StageBind(tree, mount.source, mount.target, mount.readonly, upper))
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
                if mount.target:
                    binds.append(
                        Secret(mount.target, content, mode, mount.uid or 0, mount.gid or 0)
                    )
                if mount.env:
                    value = content.decode(errors="surrogateescape")
                    binds.append(SecretEnv(mount.env, value))
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


def _cache_dir(
    step: RunStep,
    mount: RunMount,
    cache_root: Path,
    scratch: Path,
    trees: Mapping[str, Sequence[Path]],
    materialized: bool,
) -> Path:
    """The cache's dir, persisting across builds outside any image: empty at first or, with
    `from=`, a copy of that tree's `source`. BuildKit keys such a cache by its id and the tree
    it came from, so a changed stage starts a fresh copy; here the source path counts too
    (BuildKit copies the whole tree and mounts the path inside it)."""
    name = mount.id if not mount.stage_key else f"{mount.id}\0{mount.stage_key}\0{mount.source}"
    path = cache_root / xxhash.xxh3_64_hexdigest(name.encode())
    if path.exists():
        return path
    with file_lock(cache_root / ".locks" / path.name):  # one maker, even across builds
        if not path.exists():
            # Made in the scratch dir, then renamed into place: a killed build leaves none
            # half-made.
            made = scratch / f"cache-{path.name}"
            made.mkdir()
            _fill(step, mount, made, scratch, trees, materialized)
            os.rename(made, path)
    return path


def _fill(
    step: RunStep,
    mount: RunMount,
    made: Path,
    scratch: Path,
    trees: Mapping[str, Sequence[Path]],
    materialized: bool,
) -> None:
    owned = mount.uid is not None or mount.gid is not None or mount.mode is not None
    if not mount.stage_key or (mount.source == "/" and owned):
        # BuildKit (convert_runmount.go): uid/gid/mode on the tree's root make the cache a new
        # dir with that owner and mode instead of a copy of the tree.
        made.chmod(mount.mode if mount.mode is not None else 0o755)
        if mount.uid is not None or mount.gid is not None:
            os.chown(made, mount.uid or 0, mount.gid or 0)
        return
    from buildgraph.worker.copy import CopyJob, copy_in_overlay, copy_in_root

    job = CopyJob(sources=(mount.source,), dest="/")
    if materialized:  # the chroot isolation: the tree is one whole root, no overlay needed
        try:
            copy_in_root(job, made, source_tree=trees[mount.stage_key][0])
        except InputError as err:
            raise StepFailed(f"{step.title}: cache mount from=: {err}", step.where) from err
        return
    lowers = list(trees[mount.stage_key])
    if not lowers:  # FROM scratch: an empty tree
        lowers = [scratch / "empty-tree"]
        lowers[0].mkdir(exist_ok=True)
    try:
        copy_in_overlay(job, (), made, source_lowers=lowers)
    except InputError as err:  # the source is missing: a failed step, as for a bind
        raise StepFailed(f"{step.title}: cache mount from=: {err}", step.where) from err
