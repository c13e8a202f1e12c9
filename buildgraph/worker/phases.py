"""Phase timing of a step (snapshot prepare, run, diff, commit), for `--trace`."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SNAPSHOT_PREPARE = "snapshot prepare"  # lower dirs unpacked, scratch and mounts set up
RUN = "run"  # the RUN command, or the COPY's file copying
DIFF = "diff"  # the upper dir written as a layer tar (and hashed)
COMMIT = "commit"  # the layer blob made durable and the upper dir adopted as its snapshot
# The whole of Worker.execute. The scheduler starts more steps than it has threads (-j): the
# time from a step's start to its execution is its wait for a thread ("queued" in a trace).
EXECUTE = "execute"


@dataclass(frozen=True, slots=True)
class PhaseEvent:
    title: str  # the step's title, as in its StepEvents
    phase: str
    start: float  # time.monotonic()
    end: float


PhaseSink = Callable[[PhaseEvent], None]


class PhaseClock:
    """Times phases of the step the calling thread executes; silent without a sink."""

    def __init__(self, sink: PhaseSink | None) -> None:
        self._sink = sink
        self._local = threading.local()  # the step title of each worker thread

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self._local.title = title
        try:
            with self.phase(EXECUTE):
                yield
        finally:
            self._local.title = ""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._sink is None:
            yield
            return
        start = time.monotonic()
        try:
            yield
        finally:
            title = getattr(self._local, "title", "")
            self._sink(PhaseEvent(title, name, start, time.monotonic()))
