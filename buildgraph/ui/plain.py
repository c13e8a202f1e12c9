"""Plain progress: one timestamped line per event, for CI logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from buildgraph.solver.events import Event, LogEvent, StepState


class PlainRenderer:
    def __init__(
        self, stream: TextIO | None = None, *, show_output: bool = True, show_steps: bool = True
    ) -> None:
        """show_steps=False (and show_output=False) prints nothing: `-q`."""
        self.stream = stream or sys.stderr
        self.show_output = show_output
        self.show_steps = show_steps
        self.start = time.monotonic()

    def emit(self, event: Event) -> None:
        stamp = f"{time.monotonic() - self.start:7.2f}s"
        if isinstance(event, LogEvent):
            if self.show_output:
                for line in event.data.decode(errors="replace").splitlines():
                    self._write(f"{stamp} {event.title} | {line}")
            return
        if not self.show_steps:
            return
        detail = ""
        if event.state is StepState.DONE:
            size = getattr(event, "bytes", 0)  # an export writes no layer
            detail = f" {event.duration_s:.2f}s" + (f" {size}B" if size else "")
        elif event.reason:
            detail = f": {event.reason}"
        self._write(f"{stamp} {event.state.value.upper():8} {event.title}{detail}")

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
