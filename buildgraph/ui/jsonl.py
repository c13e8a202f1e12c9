"""JSON progress: one object per line, for machines."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO

from buildgraph.solver.events import Event, ExportEvent, LogEvent


class JsonRenderer:
    def __init__(self, stream: TextIO | None = None, targets: dict[str, list[str]] | None = None):
        self.stream = stream or sys.stdout
        self.targets = targets or {}  # step key -> every target it serves
        self._lock = threading.Lock()  # events come from several threads; a line stays whole

    def emit(self, event: Event) -> None:
        if isinstance(event, LogEvent):
            doc = {
                "state": "log",
                "instruction": event.title,
                "output": event.data.decode(errors="replace"),
            }
        elif isinstance(event, ExportEvent):  # a target's tag, output or push: no step key
            doc = {
                "state": event.state.value.replace(" ", "_"),
                "export": event.target,
                "target": [event.target],
                "instruction": event.title,
                "duration_s": round(event.duration_s, 4),
                "time": time.time(),
            }
            if event.reason:
                doc["reason"] = event.reason
        else:
            doc = {
                "state": event.state.value.replace(" ", "_"),
                "key": event.key,
                "target": self.targets.get(event.key, []),
                "instruction": event.title,
                "duration_s": round(event.duration_s, 4),
                "bytes": event.bytes,
                "time": time.time(),
            }
            if event.reason:
                doc["reason"] = event.reason
        line = json.dumps(doc, ensure_ascii=False) + "\n"
        with self._lock:  # one write per line: print() writes the newline separately
            self.stream.write(line)
            self.stream.flush()
