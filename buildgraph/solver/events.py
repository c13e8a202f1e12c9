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
class ExportEvent:
    """A target's image being tagged, written out or pushed, once its last step is done."""

    target: str
    state: StepState  # RUNNING, DONE, FAILED or SKIPPED
    reason: str = ""
    duration_s: float = 0.0

    @property
    def title(self) -> str:
        return f"[{self.target}] export"


@dataclass(frozen=True)
class LogEvent:
    title: str
    data: bytes  # output of a running step
    replayed: bool = False  # a cached task's whole log, replayed: not a running step's output


Event = StepEvent | ExportEvent | LogEvent


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


class CollectingSink:
    """Keeps every event: for tests and for summaries."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def states(self) -> dict[str, StepState]:
        return {e.key: e.state for e in self.events if isinstance(e, StepEvent)}

    def keys(self, state: StepState) -> list[str]:
        """The steps that reached `state`, in the order they did."""
        return [e.key for e in self.events if isinstance(e, StepEvent) and e.state is state]

    def exports(self, state: StepState) -> list[str]:
        """The targets whose export reached `state`, in the order they did."""
        return [e.target for e in self.events if isinstance(e, ExportEvent) and e.state is state]
