"""Progress of `buildgraph warm`: a rich progress bar, timestamped lines or JSON events."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from buildgraph.commands.warm import EntryFetched, WarmEvent, WarmPlan, WarmResult


def total_line(result: WarmResult) -> str:
    """The line `warm` always ends with."""
    entries = "entry" if result.fetched == 1 else "entries"
    line = (
        f"warm: {result.fetched} {entries} fetched ({result.bytes:,} bytes), "
        f"{result.local} already local, {result.missing} missing"
    )
    return line + " (a run would build them)" if result.missing else line


class TtyWarmRenderer:
    """One bar measured in layer bytes, with the entries done, the speed and the time."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self.progress = Progress(
            TextColumn("[bold]warm"),
            BarColumn(),
            TextColumn("{task.fields[done]}/{task.fields[entries]} entries"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task: TaskID | None = None
        self.done = 0

    def emit(self, event: WarmEvent) -> None:
        if isinstance(event, WarmPlan) and event.entries:  # nothing to fetch: no bar
            self.task = self.progress.add_task(
                "warm", total=event.bytes, entries=event.entries, done=0
            )
            self.progress.start()
        elif isinstance(event, EntryFetched) and self.task is not None:
            self.done += 1
            self.progress.update(self.task, advance=event.bytes, done=self.done)
        elif isinstance(event, WarmResult) and self.task is not None:
            self.progress.update(self.task, completed=event.bytes, total=event.bytes)

    def close(self) -> None:
        self.progress.stop()  # the finished bar stays on the screen


class PlainWarmRenderer:
    """The plan, then a timestamped progress line at most every `interval` seconds."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.start = time.monotonic()
        self.last = self.start
        self.plan: WarmPlan | None = None
        self.done = 0
        self.bytes = 0

    def emit(self, event: WarmEvent) -> None:
        if isinstance(event, WarmPlan):
            self.plan = event
            self._write(
                f"warm: {event.steps} steps: {event.local} already local, {event.entries} entries "
                f"to fetch ({event.bytes:,} bytes), {event.missing} missing"
            )
        elif isinstance(event, EntryFetched):
            self.done += 1
            self.bytes += event.bytes
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                entries, size = (self.plan.entries, self.plan.bytes) if self.plan else (0, 0)
                speed = self.bytes / max(now - self.start, 1e-6)
                self._write(
                    f"warm: {self.done}/{entries} entries, {self.bytes:,}/{size:,} bytes "
                    f"({speed / 1e6:.1f} MB/s)"
                )

    def close(self) -> None:
        pass

    def _write(self, text: str) -> None:
        print(f"{time.monotonic() - self.start:7.2f}s {text}", file=self.stream, flush=True)


class JsonWarmRenderer:
    """One object per line: `warm_planned`, a `fetched` per entry, then `warm_done`."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.done = 0
        self.bytes = 0

    def emit(self, event: WarmEvent) -> None:
        if isinstance(event, WarmPlan):
            doc: dict[str, object] = {
                "state": "warm_planned",
                "steps": event.steps,
                "local": event.local,
                "entries": event.entries,
                "bytes": event.bytes,
                "missing": event.missing,
            }
        elif isinstance(event, EntryFetched):
            self.done += 1
            self.bytes += event.bytes
            doc = {
                "state": "fetched",
                "key": event.key,
                "bytes": event.bytes,
                "entries_done": self.done,
                "bytes_done": self.bytes,
            }
        else:
            doc = {
                "state": "warm_done",
                "steps": event.steps,
                "local": event.local,
                "fetched": event.fetched,
                "bytes": event.bytes,
                "missing": event.missing,
            }
        doc["time"] = time.time()
        print(json.dumps(doc), file=self.stream, flush=True)

    def close(self) -> None:
        pass
