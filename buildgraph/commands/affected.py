"""`buildgraph affected`: the targets whose inputs changed since a git ref, and their users."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildgraph.errors import InputError
from buildgraph.frontend.buildfile import Project, TargetSpec, select_targets
from buildgraph.frontend.dockerfile import parse_dockerfile
from buildgraph.frontend.ignore import load_dockerignore
from buildgraph.frontend.scope import resolve_from, resolve_globals
from buildgraph.frontend.yamlmarks import Map, Node, Scalar, Seq, read_yaml
from buildgraph.registry.reference import parse_reference

_VAR_USE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\})")  # `$$` is a literal `$`
_TOKEN_SPLIT = re.compile(r"[\s=,\"']+")  # `--from=REF`, `--mount=type=bind,from=REF`

Plain = str | None | list["Plain"] | dict[str, "Plain"]  # a YAML node as written, no lines


@dataclass(frozen=True, slots=True)
class Changes:
    top: Path  # the repository's top directory, symlinks resolved
    commit: str  # what the ref named
    paths: frozenset[str]  # relative to top, "/"-separated: modified, added, deleted, untracked


def affected_targets(project: Project, since: str, names: Sequence[str] = ()) -> tuple[str, ...]:
    """The targets whose inputs differ between `since` and the working tree, plus every target
    that depends on one of them; sorted. `names` (targets or groups, with what they depend on)
    restricts the answer; none: every target of the project."""
    changes = without(changed_paths(project.path.parent, since), project.cache.dir)
    changed_files = [
        path for path in project.files if _relative(path, changes.top) in changes.paths
    ]
    old_docs = {path: _old_document(changes, path) for path in changed_files}
    direct = {name for name, spec in project.targets if touches(spec, changes)}
    direct |= buildfile_changes(project, old_docs)
    users = users_of(project)
    affected = with_dependents(direct, users)
    if names:  # what `run NAMES` builds: also the targets their Dockerfiles name by tag
        affected &= with_dependents(select_targets(project, names), _invert(users))
    return tuple(sorted(affected))


def render_affected(names: Sequence[str], output_format: str) -> str:
    """Text: one name a line (nothing at all when none); json: a list."""
    if output_format == "json":
        return json.dumps(list(names)) + "\n"
    return "".join(f"{name}\n" for name in names)


def changed_paths(directory: Path, since: str) -> Changes:
    """Files of the git repository holding `directory` that differ between `since` and the
    working tree (committed, staged or not, deleted), plus untracked files git does not ignore."""
    found = _git(directory, "rev-parse", "--show-toplevel", check=False)
    if found.returncode != 0:
        raise InputError(f"not a git repository: {directory} ({_reason(found)})")
    top = Path(os.path.realpath(found.stdout.decode().strip()))
    commit = None
    if since and not since.startswith("-"):  # never let a ref pass for an option
        commit = _git(top, "rev-parse", "--verify", "--quiet", f"{since}^{{commit}}", check=False)
    if commit is None or commit.returncode != 0:
        raise InputError(
            f"unknown git ref {since!r} in {top} (a shallow CI clone may need "
            f"`git fetch origin <branch>` first)"
        )
    sha = commit.stdout.decode().strip()
    diff = _git(top, "diff", "--name-only", "--no-renames", "-z", sha, "--")
    untracked = _git(top, "ls-files", "--others", "--exclude-standard", "-z")
    paths = {
        item.decode("utf-8", "surrogateescape")
        for item in (*diff.stdout.split(b"\0"), *untracked.stdout.split(b"\0"))
        if item
    }
    return Changes(top, sha, frozenset(paths))


def without(changes: Changes, directory: Path) -> Changes:
    """`changes` minus the paths under `directory` (the cache dir, when it sits in the
    repository without a .gitignore entry: its files are no target's input)."""
    relative = _relative(directory, changes.top)
    if relative is None:
        return changes
    dropped = set(_under(relative, changes.paths, keep_prefix=True))
    return Changes(changes.top, changes.commit, changes.paths - dropped)


def touches(spec: TargetSpec, changes: Changes) -> bool:
    """A changed path is the target's Dockerfile or ignore file, a file of its context that
    its .dockerignore keeps, or a file under one of its directory contexts."""
    always = {spec.dockerfile, spec.context / ".dockerignore"}
    always.add(spec.dockerfile.with_name(spec.dockerfile.name + ".dockerignore"))
    if any(_relative(path, changes.top) in changes.paths for path in always):
        return True
    context = _relative(spec.context, changes.top)
    if context is not None:
        inside = _under(context, changes.paths)
        if inside:
            ignore = load_dockerignore(spec.context, spec.dockerfile)
            if any(not ignore.matches(path) for path in inside):
                return True
    for _, ref in spec.contexts:
        directory = _relative(Path(ref.value), changes.top) if ref.kind == "dir" else None
        if directory is not None and _under(directory, changes.paths):
            return True
    return False


def buildfile_changes(project: Project, old_docs: Mapping[Path, Node | None]) -> set[str]:
    """Targets whose own Buildfile entry differs from the old one (`old_docs`: each changed
    Buildfile at the ref, None when it was missing or unreadable there), compared as written,
    ignoring comments and layout. A changed var affects the targets that use it, also through
    other vars; a changed `include` list affects every target (the files read may differ)."""
    current = {path: read_yaml(path) for path in project.files}
    defined_in = {name: Path(spec.where.path) for name, spec in project.targets}
    affected: set[str] = set()
    changed_vars: set[str] = set()
    for path, old in old_docs.items():
        new = _plain(current[path])
        before = _plain(old) if old is not None else None
        if not isinstance(before, dict) or not isinstance(new, dict):
            affected |= {name for name, where in defined_in.items() if where == path}
            continue
        if before.get("include") != new.get("include"):
            return {name for name, _ in project.targets}
        old_vars, new_vars = _section(before, "vars"), _section(new, "vars")
        changed_vars |= {
            name for name in {*old_vars, *new_vars} if old_vars.get(name) != new_vars.get(name)
        }
        old_targets = _section(before, "targets")
        for name, entry in _section(new, "targets").items():
            if name not in old_targets or old_targets[name] != entry:
                affected.add(name)
    if not changed_vars:
        return affected
    docs = [doc for doc in map(_plain, current.values()) if isinstance(doc, dict)]
    declared = {
        name: _vars_used(value) for doc in docs for name, value in _section(doc, "vars").items()
    }
    changed_vars = with_dependents(changed_vars, _invert(declared))
    if any(_vars_used(doc.get("include")) & changed_vars for doc in docs):
        return {name for name, _ in project.targets}
    for doc in docs:
        for name, entry in _section(doc, "targets").items():
            if _vars_used(entry) & changed_vars:
                affected.add(name)
    return affected


def users_of(project: Project) -> dict[str, set[str]]:
    """For each target, the targets that build on it: `depends_on` (with `target:` contexts),
    and Dockerfiles naming one of its tags (FROM, COPY --from, RUN --mount from=)."""
    users: dict[str, set[str]] = {name: set() for name, _ in project.targets}
    forms = {name: _tag_forms(spec.tags) for name, spec in project.targets}
    for name, spec in project.targets:
        for dependency in spec.depends_on:
            users[dependency].add(name)
        mentioned = _dockerfile_mentions(spec)
        for other, tags in forms.items():
            if other != name and tags & mentioned:
                users[other].add(name)
    return users


def with_dependents(names: Iterable[str], users: Mapping[str, Iterable[str]]) -> set[str]:
    """`names` and, transitively, everything in `users` of them."""
    found = set(names)
    pending = list(found)
    while pending:
        for user in users.get(pending.pop(), ()):
            if user not in found:
                found.add(user)
                pending.append(user)
    return found


def _git(directory: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True)
    except FileNotFoundError as err:
        raise InputError("`affected` needs git, and git is not installed") from err
    if check and done.returncode != 0:
        raise InputError(f"git {args[0]} failed in {directory}: {_reason(done)}")
    return done


def _reason(done: subprocess.CompletedProcess[bytes]) -> str:
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1].removeprefix("fatal: ") if lines else f"exit status {done.returncode}"


def _old_document(changes: Changes, path: Path) -> Node | None:
    """The Buildfile at `path` as it was at the ref; None when it did not exist or is broken
    there (then every target it defines counts as changed)."""
    relative = _relative(path, changes.top)
    shown = _git(changes.top, "show", f"{changes.commit}:{relative}", check=False)
    if shown.returncode != 0:
        return None
    with tempfile.TemporaryDirectory(prefix="buildgraph-affected-") as scratch:
        copy = Path(scratch) / path.name
        copy.write_bytes(shown.stdout)
        try:
            return read_yaml(copy)
        except InputError:
            return None


def _plain(node: Node | None) -> Plain:
    match node:
        case None:
            return None
        case Scalar():
            return None if node.value is None else node.text
        case Seq():
            return [_plain(item) for item in node.items]
        case Map():
            return {key.text: _plain(value) for key, value in node.entries}


def _section(doc: dict[str, Plain], key: str) -> dict[str, Plain]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _vars_used(value: Plain) -> set[str]:
    if isinstance(value, str):
        return {match[1] for match in _VAR_USE.finditer(value) if match[1]}
    items = value.values() if isinstance(value, dict) else value or ()
    return {name for item in items for name in _vars_used(item)}


def _invert(uses: Mapping[str, set[str]]) -> dict[str, set[str]]:
    users: dict[str, set[str]] = {}
    for name, used in uses.items():
        for each in used:
            users.setdefault(each, set()).add(name)
    return users


def _tag_forms(tags: Iterable[str]) -> set[str]:
    forms: set[str] = set()
    for tag in tags:
        forms.add(tag)
        try:
            reference = parse_reference(tag)
        except InputError:
            continue
        forms |= {str(reference), reference.familiar}
    return forms


def _dockerfile_mentions(spec: TargetSpec) -> set[str]:
    """Every word of the Dockerfile, plus each stage's FROM with its global ARGs expanded."""
    try:
        text = spec.dockerfile.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    words = set(_TOKEN_SPLIT.split(text))
    try:
        dockerfile = parse_dockerfile(spec.dockerfile, text)
        scope = resolve_globals(
            dockerfile, dict(spec.args), target_platform=spec.platform or "linux/amd64"
        )
        for stage in dockerfile.stages:
            image = resolve_from(dockerfile, stage, scope).image
            if image:
                words.add(image)
    except InputError:
        pass  # `run` reports a broken Dockerfile; the words are enough to find users here
    return words


def _relative(path: Path, top: Path) -> str | None:
    """`path` relative to the repository top, "/"-separated; None when outside it."""
    real = Path(os.path.realpath(path))
    if real == top:
        return ""
    return real.relative_to(top).as_posix() if real.is_relative_to(top) else None


def _under(directory: str, paths: Iterable[str], *, keep_prefix: bool = False) -> list[str]:
    """The paths under `directory` (relative to top; "" is the top), relative to it."""
    if not directory:
        return list(paths)
    prefix = directory + "/"
    inside = [path for path in paths if path.startswith(prefix)]
    return inside if keep_prefix else [path.removeprefix(prefix) for path in inside]
