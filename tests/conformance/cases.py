"""The case directories under cases/ and what their case.json says."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CASES_DIR = Path(__file__).resolve().parent / "cases"
CASE_KEYS = {"build_args", "target", "xfail_reason", "peer_differs", "expect", "about"}


@dataclass(frozen=True)
class Case:
    name: str
    path: Path  # the build context; holds the Dockerfile
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    xfail_reason: str = ""  # set when buildah 1.28 cannot build the case at all
    peer_differs: dict[str, str] = field(default_factory=dict)  # field or path -> why
    expect: dict[str, Any] = field(default_factory=dict)  # pinned facts, see README.md


def load_case(path: Path) -> Case:
    options = {}
    if (path / "case.json").exists():
        options = json.loads((path / "case.json").read_text())
        unknown = options.keys() - CASE_KEYS
        if unknown:
            raise ValueError(f"{path}/case.json: unknown keys {sorted(unknown)}")
        options.pop("about", None)  # a sentence for humans
    return Case(name=path.name, path=path, **options)


def load_cases(root: Path = CASES_DIR) -> list[Case]:
    return [load_case(path) for path in sorted(root.iterdir()) if (path / "Dockerfile").exists()]
