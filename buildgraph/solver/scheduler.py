"""Execute a plan: ready steps run in parallel, those on the longest path first, a started
chain before another as long; decides nothing."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from buildgraph.cache.steps import StepRecord
from buildgraph.errors import BuildgraphError, storage_error
from buildgraph.graph.model import BuildGraph, Target
from buildgraph.solver.events import EventSink, ExportEvent, StepEvent, StepState
from buildgraph.solver.executor import Executor, Unusable
from buildgraph.solver.outcome import Outcome
from buildgraph.solver.plan import Action, Plan, replan

FETCH_JOBS = 8  # remote hits whose layers are downloaded at once


@dataclass(frozen=True, slots=True)
class _Job:
    """What a running future is: a step (built or fetched) or a target's export."""

    key: str = ""
    target: Target | None = None
    slot: bool = False  # holds one of the `jobs` slots (a build or an export)


def execute(
    plan: Plan, *, executor: Executor, sink: EventSink, jobs: int, keep_going: bool = False
) -> Outcome:
    """Carry out `plan` with `executor`: every step the plan needs, then each target's export
    as soon as its last step is done. A cache entry that turns out unusable costs a `replan`:
    the step is built, after whatever it now needs."""
    return _Execution(plan, executor, sink, keep_going).run(jobs)


class _Execution:
    """The state of one `execute`: what is done, what waits for what, what is running."""

    def __init__(self, plan: Plan, executor: Executor, sink: EventSink, keep_going: bool):
        self.plan = plan
        self.graph: BuildGraph = plan.graph
        self.executor = executor
        self.sink = sink
        self.keep_going = keep_going
        self.priority = path_lengths(plan.graph)
        self.records: dict[str, StepRecord] = {}
        self.failures: dict[str, BuildgraphError] = {}
        self.skipped: set[str] = set()
        self.from_cache: set[str] = set()
        self.exported: dict[str, object] = {}
        self.scheduled: set[str] = set()  # steps given a place in the loop
        self.waiting: dict[str, set[str]] = {}  # step to build -> inputs it waits for
        # (-priority, -order, key): the longest path first; among equals, the step made ready
        # last, the next step of a chain that just finished: a chain goes on before another
        # as long starts (its trees are at hand: the chroot isolation reuses a finished
        # service's root for the next), and its image is done sooner.
        self.ready: list[tuple[int, int, str]] = []
        self.order = itertools.count()
        self.slots = 1  # builds and exports running at once (`jobs`)
        self.running: dict[Future, _Job] = {}
        self.built_any = False
        self.exports: dict[str, list[Target]] = {}  # last step -> the targets it makes
        for target in plan.graph.targets:
            self.exports.setdefault(target.key, []).append(target)

    def run(self, jobs: int) -> Outcome:
        self.slots = max(1, jobs)
        self.executor.start(self.plan)
        for key in self.plan.keys(Action.NOT_NEEDED):
            if key in self.plan.facts.remote:  # a hit that nothing needs is not even read
                self._emit(key, StepState.REMOTE)
        self._schedule_needed()
        # Downloads wait on the network, not on a core: they do not take a build slot.
        with (
            ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
            ThreadPoolExecutor(max_workers=FETCH_JOBS) as fetch_pool,
        ):
            self.pool, self.fetch_pool = pool, fetch_pool
            while self.ready or self.running:
                self._start_ready()
                if not self.running:
                    break
                self._collect()
        return self._outcome()

    # -- what is ready ----------------------------------------------------------------------

    def _schedule_needed(self) -> None:
        """Give every needed step not yet scheduled its place: ready, or waiting for inputs."""
        for key, step in self.plan.steps.items():
            if step.action is Action.NOT_NEEDED or key in self.scheduled:
                continue
            self.scheduled.add(key)
            self._wait_or_push(key)

    def _wait_or_push(self, key: str) -> None:
        inputs = self.graph.inputs[key] if self.plan.action(key) is Action.BUILD else ()
        self.waiting[key] = {parent for parent in inputs if parent not in self.records}
        if not self.waiting[key]:
            self._push(key)

    def _push(self, key: str) -> None:
        heapq.heappush(self.ready, (-self.priority[key], -next(self.order), key))

    def _finished(self, key: str, record: StepRecord) -> None:
        self.records[key] = record
        for child in self.graph.consumers[key]:
            waits = self.waiting.get(child)
            if waits and key in waits:
                waits.discard(key)
                if not waits and child not in self.skipped:
                    self._push(child)
        if self.failures and not self.keep_going:
            return
        for target in self.exports.get(key, ()):  # tag, output or push it, in parallel
            self.sink.emit(ExportEvent(target.name, StepState.RUNNING))
            export = self.executor.export
            self._submit(self.pool, _Job(target=target, slot=True), _timed, export, target, record)

    def _start_ready(self) -> None:
        """Start ready steps by priority: cached ones at once, builds while a slot is free
        (the rest stay in `ready`, so a step made ready later can still go first)."""
        deferred = []
        while self.ready and not (self.failures and not self.keep_going):
            item = heapq.heappop(self.ready)
            key = item[-1]
            if key in self.records or key in self.skipped:
                continue
            if self.plan.action(key) is Action.BUILD and self._busy() >= self.slots:
                deferred.append(item)
                continue
            self._start(key)
        for item in deferred:
            heapq.heappush(self.ready, item)

    def _busy(self) -> int:
        return sum(1 for job in self.running.values() if job.slot)

    def _start(self, key: str) -> None:
        action = self.plan.action(key)
        if action is Action.USE_LOCAL:
            self._take(key, self.executor.use_local, StepState.CACHED)
        elif action is Action.USE_REMOTE:
            self._take(key, self.executor.use_remote, StepState.REMOTE)
        elif action is Action.FETCH:
            self._emit(key, StepState.REMOTE)
            self._submit(self.fetch_pool, _Job(key), _unusable_as_value, self.executor.fetch, key)
        else:
            self._build(key)

    def _take(self, key: str, use: Callable[[str], StepRecord], state: StepState) -> None:
        """A cached step: quick, so read in the scheduler's thread."""
        try:
            record = use(key)
        except Unusable as err:
            self._replan(key, err.reason)
            return
        self.from_cache.add(key)
        self._emit(key, state)
        self._finished(key, record)

    def _build(self, key: str) -> None:
        if not self.built_any:  # e.g. a push refused shows before the first step runs
            self.built_any = True
            self.executor.before_build()
        inputs = {parent: self.records[parent] for parent in self.graph.inputs[key]}
        planned = self.plan.steps[key]
        if planned.unusable:  # say why a step the cache seemed to hold is built
            self._emit(key, StepState.TO_BUILD, reason=planned.reason)
        self._emit(key, StepState.RUNNING)
        step = self.graph.steps[key]
        self._submit(
            self.pool, _Job(key, slot=True), _timed, self.executor.build, key, step, inputs
        )

    def _replan(self, key: str, reason: str) -> None:
        """The entry of `key` is unusable: build it, after what it now needs."""
        self.plan = replan(self.plan, key, reason)
        self._schedule_needed()
        self._wait_or_push(key)

    # -- what finished ----------------------------------------------------------------------

    def _submit(self, pool: ThreadPoolExecutor, job: _Job, fn, *args) -> None:
        self.running[pool.submit(fn, *args)] = job

    def _collect(self) -> None:
        try:
            done, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            # Ctrl-C: kill the running commands, let their steps clean up (no mount, no
            # half-written entry: a failed step records nothing), then stop.
            self.executor.cancel()
            wait(list(self.running))
            raise
        for future in done:
            job = self.running.pop(future)
            try:
                result = future.result()
            except (BuildgraphError, OSError) as caught:
                # OSError: the disk refused a layer, snapshot or record (full, read-only)
                err = caught if isinstance(caught, BuildgraphError) else storage_error(caught)
                if err is None:
                    raise
                self._failed(job, err)
                continue
            if job.target is not None:
                self._exported(job.target, result)
            elif isinstance(result, Unusable):
                self._replan(job.key, result.reason)
            elif isinstance(result, StepRecord):  # fetched
                self.from_cache.add(job.key)
                self._finished(job.key, result)
            else:
                self._built(job.key, *result)

    def _built(self, key: str, record: StepRecord, seconds: float) -> None:
        parent = self.records.get(getattr(self.graph.steps[key], "parent", ""))
        added = parent is not None and len(record.layers) > len(parent.layers)
        size = record.layers[-1].descriptor.size if added else 0
        self._emit(key, StepState.DONE, duration_s=seconds, bytes=size)
        self._finished(key, record)

    def _exported(self, target: Target, result: tuple[object, float]) -> None:
        value, seconds = result
        self.exported[target.name] = value
        self.sink.emit(ExportEvent(target.name, StepState.DONE, duration_s=seconds))

    def _failed(self, job: _Job, err: BuildgraphError) -> None:
        if job.target is not None:
            self.failures[job.target.name] = err
            self.sink.emit(ExportEvent(job.target.name, StepState.FAILED, reason=str(err)))
            return
        step = self.graph.steps[job.key]
        if err.where is None:  # e.g. a tar ADD refuses
            err.where = getattr(step, "where", None)
        self.failures[job.key] = err
        self._emit(job.key, StepState.FAILED, reason=str(err))
        self._skip_below(job.key)

    def _skip_below(self, key: str) -> None:
        stack = list(self.graph.consumers[key])
        while stack:
            child = stack.pop()
            if child in self.skipped or child in self.records:
                continue
            self.skipped.add(child)
            self._emit(child, StepState.SKIPPED, reason="an input step failed")
            stack.extend(self.graph.consumers[child])
        for target in self.graph.targets:
            if target.key in self.skipped:
                self.sink.emit(
                    ExportEvent(target.name, StepState.SKIPPED, reason="an input step failed")
                )

    def _emit(self, key: str, state: StepState, **details) -> None:
        self.sink.emit(StepEvent(key, state, self.graph.title(key), **details))

    def _outcome(self) -> Outcome:
        unneeded = frozenset(self.plan.keys(Action.NOT_NEEDED))
        not_run = [
            key
            for key in self.graph.steps
            if key not in self.records and key not in self.failures and key not in unneeded
        ]
        return Outcome(
            self.records,
            self.failures,
            tuple(sorted(set(not_run) | self.skipped)),
            frozenset(self.from_cache),
            self.exported,
            unneeded,
        )


def _timed(work: Callable[..., object], *args: object) -> tuple[object, float]:
    start = time.monotonic()
    result = work(*args)
    return result, time.monotonic() - start


def _unusable_as_value(fetch: Callable[[str], StepRecord], key: str) -> StepRecord | Unusable:
    try:
        return fetch(key)
    except Unusable as err:
        return err


def path_lengths(graph: BuildGraph) -> dict[str, int]:
    """For each step, the length of the longest chain of steps through it: the steps of the
    critical path start first, so it never waits."""
    remaining: dict[str, int] = {}
    for key in reversed(list(graph.steps)):
        remaining[key] = 1 + max((remaining[child] for child in graph.consumers[key]), default=0)
    done: dict[str, int] = {}
    for key in graph.steps:  # inputs first
        done[key] = 1 + max((done[parent] for parent in graph.inputs[key]), default=0)
    return {key: done[key] + remaining[key] - 1 for key in graph.steps}
