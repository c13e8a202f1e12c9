"""`buildgraph affected` for tasks: the tasks whose inputs, image or definition changed."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from buildgraph.commands.affected import changed_paths, without
from buildgraph.commands.tasks import wanted_tasks
from buildgraph.frontend.buildfile import Project
from buildgraph.frontend.tasks import TaskSpec


def affected_tasks(
    project: Project, since: str, targets: Iterable[str], names: Sequence[str] = ()
) -> tuple[str, ...]:
    """The tasks whose inputs changed since the git ref `since`, whose image target is in
    `targets` (what `affected` found), or whose definition changed, plus every task that
    depends on one of them; sorted. `names` restricts the answer as `run NAMES` would."""
    if not project.tasks:
        return ()
    changes = without(changed_paths(project.path.parent, since), project.cache.dir)
    images = set(targets)
    direct = set()
    for name, task in project.tasks:
        base = _inside(task.base, changes.top)
        inside = [] if base is None else [p for p in changes.paths if p.startswith(base)]
        changed = [path[len(base or "") :] for path in inside]
        patterns = [_glob_pattern(item.pattern) for item in task.inputs]
        if (
            task.image in images
            or any(p.match(path) for p in patterns for path in changed)
            or _definition_changed(task, changes.top, changes.commit)
        ):
            direct.add(name)
    users: dict[str, set[str]] = {name: set() for name, _ in project.tasks}
    for name, task in project.tasks:
        for dependency in task.depends_on:
            users[dependency].add(name)
    found = set(direct)
    pending = list(found)
    while pending:
        for user in users[pending.pop()]:
            if user not in found:
                found.add(user)
                pending.append(user)
    if names:
        found &= set(wanted_tasks(project, names))
    return tuple(sorted(found))


def _inside(directory: Path, top: Path) -> str | None:
    """`directory` relative to `top` as a prefix of changed paths ("" for top itself)."""
    try:
        relative = Path(os.path.realpath(directory)).relative_to(top)
    except ValueError:
        return None
    return "" if str(relative) == "." else f"{relative.as_posix()}/"


def _glob_pattern(pattern: str) -> re.Pattern[str]:
    """An input glob as a regex over paths: `**` any depth, `*` and `?` within one name; a
    pattern naming a directory matches what is below it, as the task's inputs do."""
    parts = []
    for piece in re.split(r"(\*\*/?|\*|\?)", pattern.rstrip("/")):
        if piece in ("**", "**/"):
            parts.append(".*")
        elif piece == "*":
            parts.append("[^/]*")
        elif piece == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts) + "(/.*)?\\Z")


def _definition_changed(task: TaskSpec, top: Path, commit: str) -> bool:
    """Whether the task's entry in its Buildfile differs from the one at `commit`."""
    import yaml

    path = Path(str(task.where.path))
    relative = _inside(path.parent, top)
    if relative is None:
        return False
    done = subprocess.run(
        ["git", "-C", str(top), "show", f"{commit}:{relative}{path.name}"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return True  # a Buildfile that was not there: every task in it is new
    try:
        old = (yaml.safe_load(done.stdout) or {}).get("tasks") or {}
        new = (yaml.safe_load(path.read_bytes()) or {}).get("tasks") or {}
    except (yaml.YAMLError, AttributeError):
        return True
    return old.get(task.name) != new.get(task.name)
