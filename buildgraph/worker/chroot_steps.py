"""RUN and COPY steps under the chroot isolation: take the parent's materialized root, change
it in place, turn what changed into a layer, and leave the root as the step's own for the next
step of the stage. A root whose step failed, or that could not be put back clean, is dropped."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from buildgraph.cache.steps import StepRecord
from buildgraph.errors import StepFailed
from buildgraph.graph.steps import CopyStep, RunStep
from buildgraph.worker.copy_plan import CopyJob
from buildgraph.worker.execute import HISTORY_SUFFIX, run_failed
from buildgraph.worker.phases import DIFF, RUN, SNAPSHOT_PREPARE
from buildgraph.worker.rootfs import Root, RootPool
from buildgraph.worker.treediff import changes, scan, write_upper

if TYPE_CHECKING:
    from buildgraph.worker.execute import Worker


def run_step(
    worker: Worker, roots: RootPool, step: RunStep, inputs: Mapping[str, StepRecord]
) -> StepRecord:
    from buildgraph.worker.chroot import run_in_root
    from buildgraph.worker.mounts import run_mounts
    from buildgraph.worker.sandbox import RunSpec

    parent = inputs[step.parent]
    with worker.phase(SNAPSHOT_PREPARE):
        _ensure_blobs(worker, parent)
        root = roots.take(parent)
    try:
        with worker.snapshots.scratch() as scratch, contextlib.ExitStack() as borrowed:
            trees = {}
            for key in dict.fromkeys(m.stage_key for m in step.mounts if m.stage_key):
                with worker.phase(SNAPSHOT_PREPARE):  # RUN --mount from=: that tree's own root
                    _ensure_blobs(worker, inputs[key])
                    trees[key] = [borrowed.enter_context(roots.borrowed(inputs[key])).tree]
            worker.trees_taken()
            cache_root = worker.store.root / "mounts"
            binds = run_mounts(step, scratch, cache_root, worker.secrets, trees, materialized=True)
            spec = RunSpec(
                step.argv,
                step.env,
                step.user,
                step.workdir,
                worker.network_of(step),
                extra_binds=binds,
                security=step.security,
            )
            try:
                with worker.phase(RUN):
                    result, clean = run_in_root(
                        spec,
                        root.tree,
                        root.aside,
                        cache_root=cache_root,
                        output=lambda data: worker.output(step.title, data),
                        cancel=worker.cancel,
                    )
            except StepFailed as err:
                raise StepFailed(f"{step.title}: {err}", err.where or step.where) from err
            if result.exit_code != 0:
                raise run_failed(step, result.exit_code, result.output_tail)
            if not clean:
                raise StepFailed(f"{step.title}: the root could not be put back", step.where)
            created_by = "RUN " + " ".join(step.argv) + HISTORY_SUFFIX
            return _commit(worker, roots, root, parent, scratch, created_by)
    except BaseException:
        root.discard()
        raise


def copy_step(
    worker: Worker,
    roots: RootPool,
    step: CopyStep,
    inputs: Mapping[str, StepRecord],
    job: CopyJob,
) -> StepRecord:
    from buildgraph.worker.copy import copy_in_root

    parent = inputs[step.parent]
    source = step.source
    with worker.phase(SNAPSHOT_PREPARE):
        _ensure_blobs(worker, parent)
        root = roots.take(parent)
    try:
        if source.stage_key:
            record = inputs[source.stage_key]
            with contextlib.ExitStack() as borrowed:
                with worker.phase(SNAPSHOT_PREPARE):
                    _ensure_blobs(worker, record)
                    tree = borrowed.enter_context(roots.borrowed(record))
                    worker.trees_taken()
                with worker.phase(RUN):
                    copy_in_root(job, root.tree, source_tree=tree.tree)
        else:
            worker.trees_taken()
            context = Path(source.context) if source.context else None
            ignore = worker.ignores.get(source.context) if source.context else None
            with worker.phase(RUN):
                copy_in_root(job, root.tree, context=context, ignore=ignore)
        created_by = (step.title.split("] ", 1)[-1]) + HISTORY_SUFFIX
        with worker.snapshots.scratch() as scratch:
            return _commit(worker, roots, root, parent, scratch, created_by)
    except BaseException:
        root.discard()
        raise


def _commit(
    worker: Worker,
    roots: RootPool,
    root: Root,
    parent: StepRecord,
    scratch: Path,
    created_by: str,
) -> StepRecord:
    """The layer of what changed in `root`; the root then belongs to the new record."""
    with worker.phase(DIFF):  # the metadata walk; the layer tar is timed in commit's own
        after = scan(root.tree, root.manifest)
        written, deleted = changes(root.manifest, after)
        upper = scratch / "upper"
        upper.mkdir()
        whiteouts = write_upper(root.tree, upper, after, written, deleted)
    # The upper dir shares inodes with the live root: never keep it as a snapshot.
    record = worker.commit(upper, parent, created_by, snapshot=False, whiteouts=whiteouts)
    worker.result_known(record)  # before the root is given back: a step may still want it
    roots.give(root, record, after)
    return record


def _ensure_blobs(worker: Worker, record: StepRecord) -> None:
    """A root is made from layer blobs: fetch the ones a remote cache has not sent yet."""
    missing = any(not worker.store.has_blob(layer.descriptor.digest) for layer in record.layers)
    if missing and worker.fetch_layers is not None:
        worker.fetch_layers(record)
