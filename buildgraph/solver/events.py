"""Step states and progress events; renderers in ui/ turn them into output."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class StepState(Enum):
    CACHED = "cached"
    REMOTE = "remote"
    TO_BUILD = "to build"
    NOT_NEEDED = "not needed"  # a miss below cached steps only: never built
    RUNNING = "started"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class StepEvent:
    key: str
    state: StepState
    title: str  # e.g. "[api] RUN pip install -r requirements.txt"
    reason: str = ""  # why it must be built, or why it failed
    duration_s: float = 0.0
    bytes: int = 0  # bytes of the layer written, where one was


@dataclass(frozen=True)
class LogEvent:
    title: str
    data: bytes  # output of a running step


class EventSink(Protocol):
    def emit(self, event: StepEvent | LogEvent) -> None: ...


class CollectingSink:
    """Keeps every event: for tests and for summaries."""

    def __init__(self) -> None:
        self.events: list[StepEvent | LogEvent] = []

    def emit(self, event: StepEvent | LogEvent) -> None:
        self.events.append(event)

    def states(self) -> dict[str, StepState]:
        return {e.key: e.state for e in self.events if isinstance(e, StepEvent)}
