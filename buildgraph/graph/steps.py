"""The four step kinds a Dockerfile lowers to: frozen plan data, one graph node each."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from buildgraph.errors import InputError, Location
from buildgraph.image.config import RuntimeConfig

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SourceStep:
    """`FROM image` or `FROM scratch`: the base image, pinned by manifest digest."""

    image: str  # canonical reference, or "scratch"
    digest: str  # manifest digest; "" for scratch
    platform: str
    title: str = field(default="", compare=False)
    where: Location | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RunMount:
    """A `RUN --mount`: what the command sees at `target`, never part of the layer."""

    type: str  # cache | tmpfs | secret | bind
    target: str
    id: str = ""  # cache and secret id (a secret's content is never in the key)
    source: str = ""  # bind: a path in the build context, or with `stage_key` one in that tree
    digest: str = ""  # bind from the context: content digest of that source
    stage_key: str = ""  # bind or cache `from=`: the key of that stage's (or image's) result
    readonly: bool = False
    required: bool = False  # secret: fail when it is not provided
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None  # tmpfs bytes
    env: str = ""  # secret: also (or, with no target, only) this environment variable


@dataclass(frozen=True, slots=True)
class RunStep:
    parent: str  # cache key of the previous step
    argv: tuple[str, ...]  # after SHELL wrapping; heredoc bodies are in `files`
    env: Pairs  # sorted; everything the command can see
    user: str
    workdir: str
    network: str  # default | none | host, as written; "default" is the build's choice
    files: Pairs = ()  # (path inside the sandbox, content): heredoc scripts fed to the command
    mounts: tuple[RunMount, ...] = ()
    security: str = "sandbox"  # "insecure": every privilege (needs --allow security.insecure)
    context: str = field(default="", compare=False)  # where bind mounts read from; not keyed
    title: str = field(default="", compare=False)
    where: Location | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CopySource:
    """Where COPY/ADD reads from: the build context or another stage's filesystem."""

    stage_key: str  # "" for the build context, else the last key of the source stage
    context: str  # the context directory (not in the key; `digest` stands for its content)
    paths: tuple[str, ...]  # relative paths selected in the context, or patterns for a stage
    digest: str  # content digest of the selected context files; "" for a stage


@dataclass(frozen=True, slots=True)
class CopyStep:
    parent: str
    source: CopySource
    patterns: tuple[str, ...]  # the sources as written (after expansion)
    dest: str  # absolute, resolved against WORKDIR
    inline: Pairs = ()  # heredoc files: (name, content)
    chown: str = ""  # user[:group] as written; resolved in the image's /etc/passwd
    chmod: str = ""  # octal as written
    add: bool = False  # ADD: auto-extract local archives
    # WORKDIR: a USER that /etc/passwd lacks owns the dirs as root, as BuildKit's mkdir does
    # (COPY --chown refuses an unknown name instead).
    unknown_owner_is_root: bool = False
    title: str = field(default="", compare=False)
    where: Location | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ConfigStep:
    """A metadata-only instruction (ENV, LABEL, CMD, ...): changes the config, not the files."""

    parent: str
    instruction: str  # the instruction as written after expansion: it is the change
    config: RuntimeConfig  # the runtime config after this step
    author: str = ""  # MAINTAINER
    title: str = field(default="", compare=False)
    where: Location | None = field(default=None, compare=False)


Step = SourceStep | RunStep | CopyStep | ConfigStep


def parent_of(step: Step) -> str | None:
    return None if isinstance(step, SourceStep) else step.parent


def inputs_of(step: Step) -> tuple[str, ...]:
    """Keys this step needs finished first: its parent, a COPY --from stage and the stages a
    RUN mounts (`--mount=from=`)."""
    parents = () if isinstance(step, SourceStep) else (step.parent,)
    if isinstance(step, CopyStep) and step.source.stage_key:
        return (*parents, step.source.stage_key)
    if isinstance(step, RunStep):
        mounted = (mount.stage_key for mount in step.mounts if mount.stage_key)
        return tuple(dict.fromkeys((*parents, *mounted)))
    return parents


def changes_files(step: Step) -> bool:
    return isinstance(step, RunStep | CopyStep)


INSECURE_ENTITLEMENT = "security.insecure"  # BuildKit's name


def check_entitlements(steps: Iterable[Step], allowed: Collection[str]) -> None:
    """Refuse, before anything runs, a step that needs a privilege the command line did not
    grant (as BuildKit refuses it, cached or not)."""
    if INSECURE_ENTITLEMENT in allowed:
        return
    for step in steps:
        if isinstance(step, RunStep) and step.security == "insecure":
            raise InputError(
                f"RUN --security=insecure needs `--allow {INSECURE_ENTITLEMENT}` on the "
                "command line (it runs with every privilege of the machine)",
                step.where,
            )
