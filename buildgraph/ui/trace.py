"""`--trace FILE`: progress and phase events as a Chrome trace (chrome://tracing, Perfetto).

Each built step is one complete ("X") span from the moment the scheduler starts it to its end,
on a lane (a trace "thread") of its own while it runs; the worker's phases (snapshot prepare,
run, diff, commit) are spans on the same lane, inside it, after a "queued" span while the
step waited for one of the scheduler's -j threads. Target exports are spans too. Steps
taken from a cache are instant events. Lane 0 holds one span for the whole command, from the
recorder's creation (before the project is read) to the last event, so the time before the
first step and after the last one shows as well.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from buildgraph.errors import InputError
from buildgraph.fs import atomic_write
from buildgraph.solver.events import ExportEvent, LogEvent, StepEvent, StepState
from buildgraph.worker.phases import EXECUTE, PhaseEvent

PID = 1
QUEUED = "queued"  # started by the scheduler, waiting for one of its -j threads
_ENDS = (StepState.DONE, StepState.FAILED)
_INSTANTS = (StepState.CACHED, StepState.REMOTE, StepState.SKIPPED, StepState.NOT_NEEDED)


class TraceRecorder:
    """An event sink that writes the trace to `path` on `close()`."""

    def __init__(self, path: Path, command: str = "buildgraph", start: float | None = None) -> None:
        self.path = path
        self.command = command
        self.start = time.monotonic() if start is None else start
        self._lock = threading.Lock()  # phases come from worker threads
        self._events: list[dict] = []
        self._running: dict[str, tuple[str, int, float]] = {}  # key -> (title, lane, start)
        self._lanes: set[int] = set()
        self._last = self.start

    def emit(self, event: StepEvent | ExportEvent | LogEvent) -> None:
        if isinstance(event, LogEvent):
            return
        now = time.monotonic()
        exporting = isinstance(event, ExportEvent)
        key = f"export:{event.target}" if exporting else event.key  # a lane per span
        with self._lock:
            self._last = now
            if event.state is StepState.RUNNING:
                lane = min(set(range(1, len(self._lanes) + 2)) - self._lanes)
                self._lanes.add(lane)
                self._running[key] = (event.title, lane, now)
            elif event.state in _ENDS and key in self._running:
                title, lane, start = self._running.pop(key)
                self._lanes.discard(lane)
                args: dict = {"state": event.state.value}
                if exporting:
                    args["target"] = event.target
                else:
                    args.update(key=event.key, bytes=event.bytes)
                self._span(title, "export" if exporting else "step", start, now, lane, args)
            elif event.state in _INSTANTS:
                self._events.append(
                    {
                        "ph": "i",
                        "s": "t",
                        "name": event.title,
                        "cat": event.state.value,
                        "ts": self._us(now),
                        "pid": PID,
                        "tid": 0,
                    }
                )

    def phase(self, event: PhaseEvent) -> None:
        """A worker phase; it lands on the lane of the running step with its title. The whole
        execution is not drawn (the step's span is), only the wait before it for a thread."""
        with self._lock:
            self._last = max(self._last, event.end)
            lane, started = next(
                (
                    (lane, start)
                    for title, lane, start in self._running.values()
                    if title == event.title
                ),
                (0, event.start),
            )
            args = {"step": event.title}
            if event.phase != EXECUTE:
                self._span(event.phase, "phase", event.start, event.end, lane, args)
            elif event.start > started:
                self._span(QUEUED, "phase", started, event.start, lane, args)

    def close(self) -> None:
        with self._lock:
            end = max(self._last, time.monotonic())
            events = [
                *self._thread_names(),
                self._complete(self.command, "command", self.start, end, 0, {}),
                *self._events,
            ]
        doc = {"traceEvents": events, "displayTimeUnit": "ms"}
        atomic_write(self.path, json.dumps(doc, separators=(",", ":")).encode())

    def _span(self, name: str, kind: str, start: float, end: float, lane: int, args: dict) -> None:
        self._events.append(self._complete(name, kind, start, end, lane, args))

    def _complete(
        self, name: str, kind: str, start: float, end: float, lane: int, args: dict
    ) -> dict:
        return {
            "ph": "X",
            "name": name,
            "cat": kind,
            "ts": self._us(start),
            "dur": max(0, round((end - start) * 1e6)),
            "pid": PID,
            "tid": lane,
            "args": args,
        }

    def _thread_names(self) -> list[dict]:
        lanes = {event["tid"] for event in self._events} | {0}
        names = [
            {"ph": "M", "name": "process_name", "pid": PID, "args": {"name": self.command}},
        ]
        for lane in sorted(lanes):
            label = "command" if lane == 0 else f"lane {lane}"
            names.append(
                {"ph": "M", "name": "thread_name", "pid": PID, "tid": lane, "args": {"name": label}}
            )
        return names

    def _us(self, moment: float) -> int:
        return round((moment - self.start) * 1e6)


class TeeSink:
    """Sends every event to the renderer and to the trace recorder; closes both. Anything else
    asked of it (e.g. the json renderer's `targets`) is the renderer's."""

    def __init__(self, renderer: object, recorder: TraceRecorder) -> None:
        self.renderer = renderer
        self.recorder = recorder

    def emit(self, event: StepEvent | LogEvent) -> None:
        self.renderer.emit(event)  # type: ignore[attr-defined]
        self.recorder.emit(event)

    def close(self) -> None:
        try:
            if hasattr(self.renderer, "close"):
                self.renderer.close()
        finally:
            self.recorder.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self.renderer, name)


def process_start() -> float:
    """When this process started, on the time.monotonic() clock (now, if unknown): the trace
    then shows the interpreter's start-up and the imports too."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: ticks since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    return time.monotonic() - max(0.0, age)


def open_trace(path: Path, command: str) -> TraceRecorder:
    """A recorder for `--trace PATH`; a missing directory is bad input, found before building."""
    if not path.parent.is_dir():
        raise InputError(f"--trace {path}: no directory {path.parent}")
    if path.is_dir():
        raise InputError(f"--trace {path}: is a directory")
    return TraceRecorder(path, command, process_start())
