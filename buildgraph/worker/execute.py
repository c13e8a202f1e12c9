"""Execute one step: the single place that sends each step kind to the module that runs it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import assert_never

from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import LayerRef, StepRecord
from buildgraph.errors import BuildgraphError, StepFailed
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.graph.steps import ConfigStep, CopyStep, RunStep, SourceStep, Step
from buildgraph.image.config import HistoryEntry, ImageConfig
from buildgraph.image.layer import write_layer
from buildgraph.image.oci import Descriptor
from buildgraph.worker.kept_templates import KeptTemplates, kept_dir
from buildgraph.worker.phases import COMMIT, DIFF, RUN, SNAPSHOT_PREPARE, PhaseClock, PhaseSink
from buildgraph.worker.root_demand import RootDemand
from buildgraph.worker.rootfs import RootPool
from buildgraph.worker.snapshot import WORK_DIR, SnapshotStore

# The sandbox and the copier (~15 ms of imports) are imported by the first RUN or COPY that
# runs: a run whose steps all come from a cache never needs them.

Output = Callable[[str, bytes], None]  # (step title, bytes the command printed)
HISTORY_SUFFIX = " # buildgraph"


def _no_output(_title: str, _data: bytes) -> None:
    pass


def run_failed(step: RunStep, code: int, output_tail: str) -> StepFailed:
    """A RUN whose command exited non-zero: the line, the command, the code, its last lines."""
    tail = output_tail.strip().splitlines()[-5:]
    detail = (": " + " | ".join(tail)) if tail else ""
    return StepFailed(
        f"{step.title}: command {' '.join(step.argv)!r} exited with code {code}{detail}",
        step.where,
    )


@contextlib.contextmanager
def _located(step: CopyStep) -> Iterator[None]:
    """A COPY/ADD/WORKDIR error that the copier could not place names the instruction's line."""
    try:
        yield
    except BuildgraphError as err:
        if err.where is None:
            err.where = step.where
        raise


@dataclass
class Worker:
    store: LocalStore
    snapshots: SnapshotStore
    ignores: Mapping[str, IgnoreMatcher] = field(default_factory=dict)  # context -> matcher
    epoch: int | None = None  # SOURCE_DATE_EPOCH: clamp mtimes, fix history times
    compression: str = "none"  # built layers stay uncompressed locally; pushes compress them
    output: Output = _no_output
    network: str = "host"  # what RUN --network=default means in this build
    secrets: Mapping[str, Path] = field(default_factory=dict)  # secret id -> host file
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop running steps
    fetch_layers: Callable[[StepRecord], None] | None = None  # remote cache: missing blobs
    isolation: str = "auto"  # auto | namespaces | chroot (see worker/isolation.py)
    phases: PhaseSink | None = None  # --trace: how long each step's phases take
    _chosen: str = field(default="", init=False, repr=False)
    _roots: RootPool | None = field(default=None, init=False, repr=False)
    _choosing: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _clock: PhaseClock = field(init=False, repr=False)
    _demand: RootDemand | None = field(default=None, init=False, repr=False)
    _current: threading.local = field(default_factory=threading.local, init=False, repr=False)

    def __post_init__(self) -> None:
        self._clock = PhaseClock(self.phases)

    def close(self) -> None:
        """Remove the materialized roots of the chroot isolation (none otherwise)."""
        if self._roots is not None:
            self._roots.close()

    def chosen_isolation(self) -> str:
        """The isolation in use, probed at the first RUN or COPY (a cached build needs none);
        when `auto` falls back to chroot, one line says so."""
        with self._choosing:
            if not self._chosen:
                from buildgraph.worker.isolation import choose

                self._chosen, why = choose(self.isolation)
                if self._chosen == "chroot":
                    self.output("isolation", f"isolation: chroot ({why})\n".encode())
                    self._roots = RootPool(
                        self.snapshots.root / WORK_DIR,
                        self.store,
                        demand=self._demanded,
                        kept=KeptTemplates(kept_dir(self.snapshots.root)),
                    )
        return self._chosen

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Time a phase of the step this thread executes (for --trace; free without it)."""
        return self._clock.phase(name)

    def network_of(self, step: RunStep) -> str:
        """What RUN --network=default (or none written) means in this build."""
        return self.network if step.network == "default" else step.network

    def expect(self, steps: Mapping[str, Step], build: Iterable[str]) -> None:
        """The steps of `steps` named in `build` are still to run (under chroot, what tells
        which materialized roots are needed again: see worker/root_demand.py)."""
        self._demand = RootDemand(steps, build)

    def execute(self, step: Step, inputs: Mapping[str, StepRecord], key: str = "") -> StepRecord:
        """Run `step` (whose cache key is `key`, if known) given the records of its inputs;
        the result is not cached here."""
        demand = self._demand
        if demand is not None:
            for known, record in inputs.items():
                demand.seen(known, record)
        self._current.key = key
        try:
            with self._clock.step(getattr(step, "title", "")):
                record = self._execute(step, inputs)
            self.result_known(record)  # a config step's: the layers of its parent
            return record
        finally:
            self._current.key = ""

    def trees_taken(self) -> None:
        """The running step holds the trees it needs: no other step will ask for them."""
        key = getattr(self._current, "key", "")
        if self._demand is not None and key:
            self._demand.started(key)

    def result_known(self, record: StepRecord) -> None:
        """`record` is the running step's result (said before its root is given back)."""
        key = getattr(self._current, "key", "")
        if self._demand is not None and key:
            self._demand.seen(key, record)

    def _demanded(self, chain: tuple[str, ...]) -> int:
        demand = self._demand
        return -1 if demand is None else demand.pending(chain)

    def _execute(self, step: Step, inputs: Mapping[str, StepRecord]) -> StepRecord:
        match step:
            case SourceStep():
                return self._source(step)
            case RunStep():
                return self._run(step, inputs)
            case CopyStep():
                return self._copy(step, inputs)
            case ConfigStep():
                parent = inputs[step.parent]
                entry = HistoryEntry(self._now(), step.instruction, empty_layer=True)
                return StepRecord(parent.layers, (*parent.history, entry))
            case _:
                assert_never(step)

    def _now(self) -> str:
        moment = self.epoch if self.epoch is not None else time.time()
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))

    def _source(self, step: SourceStep) -> StepRecord:
        if step.image == "scratch":
            return StepRecord((), ())
        manifest = self.store.read_manifest(Descriptor("", step.digest, 0))
        config: ImageConfig = self.store.read_config(manifest)
        if len(config.diff_ids) != len(manifest.layers):
            raise StepFailed(f"{step.image}: manifest and config disagree on the layer count")
        layers = tuple(
            LayerRef(layer, diff_id)
            for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
        )
        return StepRecord(layers, config.history)

    def lowers(self, record: StepRecord) -> list[Path]:
        """Snapshot dirs of an image, topmost first (overlay's lowerdir order), each once.

        A stack can hold one layer twice (two steps with the same net change give the same
        bytes, and base images repeat layers too); overlayfs refuses a lowerdir given twice
        (ELOOP). Dropping the lower copy changes nothing: every path the upper copy lacks,
        the lower copy lacks too, so lookups fall through to the same layers either way."""
        unpacked = all(self.snapshots.has(layer.diff_id) for layer in record.layers)
        if not unpacked and self.fetch_layers is not None:
            self.fetch_layers(record)  # only a snapshot not on disk needs its blob
        paths = [
            self.snapshots.ensure(self.store, layer.descriptor, layer.diff_id)
            for layer in record.layers
        ]
        return list(dict.fromkeys(reversed(paths)))

    def _run(self, step: RunStep, inputs: Mapping[str, StepRecord]) -> StepRecord:
        if self.chosen_isolation() == "chroot":
            from buildgraph.worker.chroot_steps import run_step

            assert self._roots is not None
            return run_step(self, self._roots, step, inputs)
        from buildgraph.worker.diff import relink_copied_up
        from buildgraph.worker.mounts import run_mounts
        from buildgraph.worker.sandbox import RunSpec, run_in_sandbox

        parent = inputs[step.parent]
        with self._clock.phase(SNAPSHOT_PREPARE):
            lowers = self.lowers(parent)
            trees = {
                m.stage_key: self.lowers(inputs[m.stage_key]) for m in step.mounts if m.stage_key
            }
        with self.snapshots.scratch() as scratch:
            mounts = self.store.root / "mounts"
            binds = run_mounts(step, scratch, mounts, self.secrets, trees)
            spec = RunSpec(
                step.argv,
                step.env,
                step.user,
                step.workdir,
                self.network_of(step),
                extra_binds=binds,
                security=step.security,
            )
            upper = scratch / "upper"
            upper.mkdir()
            try:
                with self._clock.phase(RUN):
                    result = run_in_sandbox(
                        spec,
                        lowers,
                        upper,
                        work=scratch,
                        output=lambda data: self.output(step.title, data),
                        cancel=self.cancel,
                    )
            except StepFailed as err:  # the sandbox could not start it: name the step and line
                if err.where is not None:
                    raise
                raise StepFailed(f"{step.title}: {err}", step.where) from err
            if result.exit_code != 0:
                raise run_failed(step, result.exit_code, result.output_tail)
            with self._clock.phase(DIFF):
                relink_copied_up(upper, lowers)
            created_by = "RUN " + " ".join(step.argv) + HISTORY_SUFFIX
            return self.commit(upper, parent, created_by)

    def _copy(self, step: CopyStep, inputs: Mapping[str, StepRecord]) -> StepRecord:
        from buildgraph.worker.copy import CopyJob, copy_in_overlay

        parent = inputs[step.parent]
        source = step.source
        job = CopyJob(
            sources=source.paths if not source.stage_key else step.patterns,
            dest=step.dest,
            inline=step.inline,
            chown=step.chown,
            chmod=step.chmod,
            add=step.add,
            patterns_from_stage=bool(source.stage_key),
            unknown_owner_is_root=step.unknown_owner_is_root,
        )
        if step.patterns and not job.sources and not job.inline:
            # Every source was a wildcard that matched nothing in the context: BuildKit copies
            # nothing and makes no destination dir (a stage's patterns are expanded later).
            return self._commit_nothing(parent, step)
        if self.chosen_isolation() == "chroot":
            from buildgraph.worker.chroot_steps import copy_step

            assert self._roots is not None
            with _located(step):
                return copy_step(self, self._roots, step, inputs, job)
        with self._clock.phase(SNAPSHOT_PREPARE):
            lowers = self.lowers(parent)
            source_lowers = self.lowers(inputs[source.stage_key]) if source.stage_key else []
        with self.snapshots.scratch() as scratch, _located(step):
            upper = scratch / "upper"
            upper.mkdir()
            if source.stage_key:
                with self._clock.phase(RUN):
                    copy_in_overlay(job, lowers, upper, source_lowers=source_lowers)
            else:
                context = Path(source.context) if source.context else None
                ignore = self.ignores.get(source.context) if source.context else None
                with self._clock.phase(RUN):
                    copy_in_overlay(job, lowers, upper, context=context, ignore=ignore)
            created_by = (step.title.split("] ", 1)[-1]) + HISTORY_SUFFIX
            return self.commit(upper, parent, created_by)

    def _commit_nothing(self, parent: StepRecord, step: CopyStep) -> StepRecord:
        created_by = (step.title.split("] ", 1)[-1]) + HISTORY_SUFFIX
        entry = HistoryEntry(self._now(), created_by, empty_layer=True)
        return StepRecord(parent.layers, (*parent.history, entry))

    def commit(
        self,
        upper: Path,
        parent: StepRecord,
        created_by: str,
        *,
        snapshot: bool = True,
        whiteouts: frozenset[str] = frozenset(),
    ) -> StepRecord:
        """Turn the upper dir into a layer (and, with `snapshot`, into the layer's snapshot);
        an unchanged tree adds no layer."""
        if not any(upper.iterdir()):
            entry = HistoryEntry(self._now(), created_by, empty_layer=True)
            return StepRecord(parent.layers, (*parent.history, entry))
        with self._clock.phase(COMMIT):  # the diff inside it, then the blob's fsync + adopt
            with self.store.ingest() as writer:
                with self._clock.phase(DIFF):
                    blob = write_layer(
                        upper,
                        writer.unhashed,  # write_layer hashes what it writes: no second pass
                        compression=self.compression,
                        epoch=self.epoch,
                        whiteouts="overlay",
                        whiteout_names=whiteouts,
                    )
                writer.declare(blob.digest, blob.size)
            if snapshot:
                self.snapshots.adopt(upper, blob.diff_id)
        layer = LayerRef(Descriptor(blob.media_type, blob.digest, blob.size), blob.diff_id)
        entry = HistoryEntry(self._now(), created_by)
        return StepRecord((*parent.layers, layer), (*parent.history, entry))
