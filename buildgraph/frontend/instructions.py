"""Frozen values for each Dockerfile instruction, as parsed (before any ${VAR} expansion)."""

from __future__ import annotations

from dataclasses import dataclass, field

from buildgraph.errors import Location

KeyValues = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Heredoc:
    name: str  # the delimiter word, quotes removed
    content: str  # every line up to the delimiter, newlines kept; `<<-` tabs already stripped
    expand: bool  # False when the delimiter was quoted (`<<"EOF"`): no ${VAR} in the content
    chomp: bool  # `<<-EOF`
    fd: int | None = None  # `3<<EOF`


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount:
    """One `RUN --mount=...`; defaults are Docker's for the mount type."""

    type: str  # bind | cache | tmpfs | secret | ssh
    target: str = ""
    source: str = ""
    from_: str = ""  # stage name/index or image for bind and cache
    id: str = ""
    sharing: str = "shared"  # cache only: shared | private | locked
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    required: bool = False
    readonly: bool = False
    size: int | None = None  # tmpfs bytes
    env: str = ""  # secret: also expose it as this environment variable
    spec: str = field(default="", compare=False)  # as written: read again once ${VAR}s expand


@dataclass(frozen=True, slots=True, kw_only=True)
class From:
    image: str
    name: str | None = None  # `AS name`, lower-cased like Docker
    platform: str | None = None
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    command: tuple[str, ...]  # JSON form: argv; shell form: one string for the SHELL
    shell: bool  # True for shell form (the SHELL is prepended when it runs)
    heredocs: tuple[Heredoc, ...] = ()
    mounts: tuple[Mount, ...] = ()
    network: str = "default"  # default | none | host
    security: str = "sandbox"  # sandbox | insecure
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Copy:
    sources: tuple[str, ...]  # paths (heredoc sources are in `heredocs`, not here)
    dest: str
    heredocs: tuple[Heredoc, ...] = ()  # `COPY <<EOF /dst`: inline files named after the delimiter
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
    exclude: tuple[str, ...] = ()
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Add:
    sources: tuple[str, ...]
    dest: str
    heredocs: tuple[Heredoc, ...] = ()
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    checksum: str | None = None
    keep_git_dir: bool = False
    exclude: tuple[str, ...] = ()
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Env:
    pairs: KeyValues  # quotes still in place until expansion
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Arg:
    pairs: tuple[tuple[str, str | None], ...]  # (name, default or None)
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Label:
    pairs: KeyValues
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Workdir:
    path: str
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    user: str
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Expose:
    ports: tuple[str, ...]
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Entrypoint:
    command: tuple[str, ...]
    shell: bool
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Cmd:
    command: tuple[str, ...]
    shell: bool
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume:
    paths: tuple[str, ...]
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Shell:
    command: tuple[str, ...]
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Healthcheck:
    test: tuple[str, ...]  # ("NONE",) | ("CMD", argv...) | ("CMD-SHELL", command), as in the config
    interval: int = 0  # nanoseconds; 0 = Docker's default
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StopSignal:
    signal: str
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Maintainer:
    name: str
    where: Location
    original: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Onbuild:
    trigger: Instruction  # parsed now so errors surface here, run in child builds
    expression: str  # the trigger text as written, stored in the image config
    where: Location
    original: str


Instruction = (
    From | Run | Copy | Add | Env | Arg | Label | Workdir | User | Expose | Entrypoint | Cmd
    | Volume | Shell | Healthcheck | StopSignal | Maintainer | Onbuild
)  # fmt: skip

KEYWORDS = (
    "FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "LABEL", "WORKDIR", "USER", "EXPOSE",
    "ENTRYPOINT", "CMD", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "MAINTAINER", "ONBUILD",
)  # fmt: skip
