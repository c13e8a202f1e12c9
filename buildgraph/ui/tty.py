"""Live terminal view: one line per running step with its elapsed time, like BuildKit's."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from buildgraph.solver.events import Event, ExportEvent, LogEvent, StepState

OUTPUT_LINES = 6  # the newest output lines shown under a running step


class TtyRenderer:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream or sys.stderr)
        self.start = time.monotonic()
        self.running: dict[str, tuple[str, float]] = {}  # key -> (title, start)
        self.output: dict[str, list[str]] = {}  # title -> last lines
        self.cached = 0
        self.lock = threading.Lock()
        self.live = Live(
            self._view(),
            console=self.console,
            refresh_per_second=8,
            transient=True,
            get_renderable=self._view,
        )
        self.live.start()

    def emit(self, event: Event) -> None:
        with self.lock:
            if isinstance(event, LogEvent) and event.replayed:  # whole, at once: print it all
                for line in event.data.decode(errors="replace").splitlines():
                    self.live.console.print(Text(f"{event.title} | {line}", style="dim"))
                return
            if isinstance(event, LogEvent):  # live: the newest lines under the running step
                lines = self.output.setdefault(event.title, [])
                lines.extend(event.data.decode(errors="replace").splitlines())
                del lines[:-OUTPUT_LINES]
                return
            running = event.title if isinstance(event, ExportEvent) else event.key
            if event.state is StepState.RUNNING:
                self.running[running] = (event.title, time.monotonic())
                return
            self.running.pop(running, None)
            if event.state is StepState.CACHED:
                self.cached += 1  # collapsed: only counted
                return
            style = {"failed": "red", "done": "green", "skipped": "yellow"}.get(
                event.state.value, ""
            )
            detail = f" {event.duration_s:.1f}s" if event.state is StepState.DONE else ""
            if event.reason and event.state is not StepState.DONE:
                detail = f": {event.reason}"
            self.live.console.print(
                Text(f"{event.state.value.upper():8} {event.title}{detail}", style=style)
            )

    def _view(self) -> Table:
        table = Table.grid(padding=(0, 1))
        elapsed = time.monotonic() - self.start
        table.add_row(
            Text(
                f"[+] {elapsed:5.1f}s  {self.cached} cached, {len(self.running)} running",
                style="bold",
            )
        )
        now = time.monotonic()
        for title, started in list(self.running.values()):
            table.add_row(Text(f" => {title}  {now - started:5.1f}s", style="cyan"))
            for line in self.output.get(title, [])[-3:]:
                table.add_row(Text(f"    {line[:160]}", style="dim"))
        return table

    def close(self) -> None:
        self.live.stop()
        if self.cached:
            self.console.print(f"{self.cached} steps cached")
