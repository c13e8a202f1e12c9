"""Lower a Dockerfile to steps: one frozen step per instruction, keys computed as we go."""

from __future__ import annotations

import posixpath
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from buildgraph.errors import InputError, Location, shorten
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.dockerfile import Dockerfile, Stage, parse_dockerfile
from buildgraph.frontend.expand import ExpansionBudget
from buildgraph.frontend.flags import parse_chmod
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.frontend.scope import (
    GlobalScope,
    ResolvedInstruction,
    resolve_from,
    resolve_stage,
    resolve_stages,
)
from buildgraph.graph.context import StatCache, context_digest, select_sources
from buildgraph.graph.keys import step_key
from buildgraph.graph.steps import (
    ConfigStep,
    CopySource,
    CopyStep,
    RunMount,
    RunStep,
    SourceStep,
    Step,
)
from buildgraph.graph.urls import UrlFetcher
from buildgraph.image.config import Healthcheck, ImageConfig, RuntimeConfig
from buildgraph.image.oci import Platform, parse_platform
from buildgraph.registry.reference import parse_reference

DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
URL_PREFIXES = ("http://", "https://", "git@", "git://")
MAX_TITLE = 200  # characters of an instruction shown in progress and messages


@dataclass(frozen=True, slots=True)
class BaseImage:
    """A `FROM image` pinned: where it came from, its manifest digest and its config."""

    reference: str
    digest: str
    config: ImageConfig


BaseResolver = Callable[[str, Location | None], BaseImage]


@dataclass(frozen=True, slots=True)
class StagePlan:
    index: int
    name: str | None
    key: str  # the key of the stage's last step: the stage's result
    config: RuntimeConfig  # the runtime config of the stage's image
    author: str
    platform: Platform


@dataclass(frozen=True, slots=True)
class NamedContext:
    """What `FROM name` / `COPY --from=name` means when a Buildfile says so (`contexts:`):
    another target's result, an image, or a directory."""

    stage: StagePlan | None = None  # `target:NAME`, or an image ref equal to a target's tag
    image: str = ""  # `docker-image://REF`
    directory: str = ""  # a local directory (COPY --from only)


@dataclass(frozen=True, slots=True)
class BuildPlan:
    steps: Mapping[str, Step]  # key -> step, in an order where inputs come first
    target: StagePlan
    stages: Mapping[int, StagePlan]  # every stage the target needs
    warnings: tuple[str, ...] = ()


@dataclass
class _Lowering:
    """Mutable scratch state of one lowering; the result is frozen."""

    dockerfile: Dockerfile
    scope: GlobalScope
    build_args: Mapping[str, str]
    context: Path
    ignore: IgnoreMatcher
    resolve_base: BaseResolver
    stat_cache: StatCache
    platform: Platform
    fetch_url: UrlFetcher | None = None
    named: Mapping[str, NamedContext] = field(default_factory=dict)
    steps: dict[str, Step] = field(default_factory=dict)
    stages: dict[int, StagePlan] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # image ref -> source step key
    budget: ExpansionBudget = field(default_factory=ExpansionBudget)  # for all its stages

    def add(self, step: Step) -> str:
        key = step_key(step)
        self.steps.setdefault(key, step)
        return key


def lower_dockerfile(
    dockerfile: Dockerfile,
    *,
    target: str | None,
    build_args: Mapping[str, str],
    context: Path,
    ignore: IgnoreMatcher,
    resolve_base: BaseResolver,
    stat_cache: StatCache,
    platform: Platform,
    fetch_url: UrlFetcher | None = None,
    named: Mapping[str, NamedContext] | None = None,
) -> BuildPlan:
    """Steps for the `target` stage (default: the last) and every stage it needs."""
    resolved = resolve_stages(
        dockerfile, build_args, target_platform=str(platform), build_platform=str(platform)
    )
    if target:
        wanted = dockerfile.stage(target)
        if wanted is None:
            names = ", ".join(s.name or str(s.index) for s in dockerfile.stages)
            raise InputError(
                f"target stage {target!r} not found (stages: {names})", Location(dockerfile.path)
            )
    else:
        wanted = dockerfile.stages[-1]
    state = _Lowering(
        dockerfile,
        resolved.scope,
        build_args,
        context,
        ignore,
        resolve_base,
        stat_cache,
        platform,
        fetch_url,
        named if named is not None else {},
    )
    plan = _lower_stage(state, wanted.index, ())
    warnings = tuple(f"build arg {name} is not used" for name in resolved.unused_build_args)
    return BuildPlan(dict(state.steps), plan, dict(state.stages), warnings + dockerfile.warnings)


def _lower_stage(state: _Lowering, index: int, visiting: tuple[int, ...]) -> StagePlan:
    if index in state.stages:
        return state.stages[index]
    if index in visiting:
        raise InputError(
            "stages depend on each other in a cycle", state.dockerfile.stages[index].base.where
        )
    stage = state.dockerfile.stages[index]
    base = resolve_from(state.dockerfile, stage, state.scope)
    _check_stage_platform(base.base, state.platform)
    if base.base_stage is not None:
        parent_plan = _lower_stage(state, base.base_stage, (*visiting, index))
        key, config, author = parent_plan.key, parent_plan.config, parent_plan.author
    elif base.image is None:
        key = state.add(
            SourceStep("scratch", "", str(state.platform), "FROM scratch", stage.base.where)
        )
        config, author = RuntimeConfig(), ""
    elif (named := _named(state, base.image)) is not None and named.stage is not None:
        key, config, author = named.stage.key, named.stage.config, named.stage.author
    else:
        if named is not None and named.directory:
            raise InputError(
                f"FROM {base.image}: that context is a directory, not an image", stage.base.where
            )
        reference = named.image if named is not None and named.image else base.image
        key, image = _source(state, reference, stage.base.where)
        config, author = image.config.config, image.config.author
    stage = _with_triggers(stage, config.on_build)
    config = replace(config, on_build=())
    if "PATH" not in config.env_dict():  # BuildKit gives every stage a PATH when it has none
        config = config.with_env("PATH", DEFAULT_PATH)
    resolved = resolve_stage(
        stage,
        config.env,
        state.scope,
        state.build_args,
        escape=state.dockerfile.escape,
        budget=state.budget,
    )
    walker = _StageWalker(state, (*visiting, index), stage, key, config, author)
    for item in resolved.instructions:
        walker.lower(item)
    plan = StagePlan(index, stage.name, walker.key, walker.config, walker.author, state.platform)
    state.stages[index] = plan
    return plan


def _named(state: _Lowering, name: str) -> NamedContext | None:
    """A Buildfile context for `name`, as written or as the image reference it spells."""
    found = state.named.get(name)
    if found is None:
        try:
            found = state.named.get(str(parse_reference(name)))
        except InputError:
            return None
    return found


def _check_stage_platform(base: ins.From, platform: Platform) -> None:
    """`FROM --platform=P`: P must be a platform, and the one this build is for (a stage for
    another platform would need emulation, which buildgraph does not set up; BuildKit's
    cross-platform stages are not supported)."""
    if base.platform is None:
        return
    try:
        wanted = parse_platform(base.platform)
    except InputError as err:
        raise InputError(f"FROM --platform: {err.args[0]}", base.where) from err
    if not platform.matches(wanted):
        raise InputError(
            f"FROM --platform={wanted}: this build is for {platform}, and a stage for another "
            f"platform is not supported (build for {wanted} with --platform {wanted})",
            base.where,
        )


def _source(state: _Lowering, reference: str, where: Location | None) -> tuple[str, BaseImage]:
    image = state.resolve_base(reference, where)
    found = image.config.platform
    if found.architecture and not state.platform.matches(found):
        raise InputError(  # never an arm64 label on amd64 binaries
            f"FROM {image.reference}: the image is for {found}, not {state.platform}, and "
            "buildgraph runs no emulation (pull that platform's image: buildgraph pull REF "
            f"--platform {state.platform})",
            where,
        )
    key = state.add(
        SourceStep(
            image.reference, image.digest, str(state.platform), f"FROM {image.reference}", where
        )
    )
    state.images[reference] = key
    return key, image


def _with_triggers(stage: Stage, triggers: tuple[str, ...]) -> Stage:
    """ONBUILD triggers of the base image run first, as if written after FROM."""
    if not triggers:
        return stage
    text = "FROM scratch\n" + "\n".join(triggers) + "\n"
    where = stage.base.where
    parsed = parse_dockerfile(Path(f"{where.path}:ONBUILD" if where else "ONBUILD"), text)
    located = tuple(replace(each, where=where) for each in parsed.stages[0].instructions)
    return replace(stage, instructions=located + stage.instructions)


class _StageWalker:
    """Turns each resolved instruction of one stage into steps."""

    def __init__(
        self,
        state: _Lowering,
        visiting: tuple[int, ...],
        stage: Stage,
        key: str,
        config: RuntimeConfig,
        author: str,
    ) -> None:
        self.state = state
        self.visiting = visiting
        self.stage = stage
        self.key = key
        self.config = config
        self.author = author
        self.cmd_set = False  # a new ENTRYPOINT clears only an inherited CMD

    def title(self, instruction: ins.Instruction) -> str:
        name = self.stage.name or f"stage-{self.stage.index}"
        text = instruction.original
        if len(text) > MAX_TITLE:  # a 1 MiB ENV line is not printed with every event
            text = text[: MAX_TITLE - 3] + "..."
        return f"[{name}] {text}"

    def lower(self, item: ResolvedInstruction) -> None:
        instruction = item.instruction
        match instruction:
            case ins.Run():
                self._run(instruction, item)
            case ins.Copy() | ins.Add():
                self._copy(instruction)
            case ins.Arg():
                pass  # ARG changes what later steps see (their keys), not the image
            case ins.Workdir():
                path = _workdir(self.config.working_dir, instruction.path)
                self._config(instruction, replace(self.config, working_dir=path))
                self._mkdir(instruction, path)
            case _:
                self._config(instruction, self._configured(instruction))

    # -- filesystem steps -----------------------------------------------------------------------
    def _run(self, run: ins.Run, item: ResolvedInstruction) -> None:
        env = {**dict(self.state.scope.proxy), **item.visible()}
        env.setdefault("PATH", DEFAULT_PATH)
        step = RunStep(
            parent=self.key,
            argv=self._argv(run),
            env=tuple(sorted(env.items())),
            user=self.config.user,
            workdir=self.config.working_dir or "/",
            network=run.network,
            security=run.security,
            mounts=tuple(self._mount(mount, run.where) for mount in run.mounts),
            context=str(self.state.context),
            title=self.title(run),
            where=run.where,
        )
        self.key = self.state.add(step)

    def _mount(self, mount: ins.Mount, where: Location | None) -> RunMount:
        target = mount.target
        if target and not target.startswith("/"):
            target = posixpath.join(self.config.working_dir or "/", target)
        match mount.type:
            case "cache":
                if not target:
                    raise InputError("RUN --mount=type=cache needs a target", where)
                # from=: a new cache starts as a copy of that tree's `source` (BuildKit keys
                # the cache by id and source tree, so a changed stage gives a fresh copy).
                stage_key = self._mount_tree(mount.from_, where) if mount.from_ else ""
                return RunMount(
                    "cache",
                    target,
                    id=mount.id or target,
                    source=_inside(mount.source) if stage_key else "",
                    stage_key=stage_key,
                    mode=mount.mode,
                    uid=mount.uid,
                    gid=mount.gid,
                )
            case "tmpfs":
                if not target:
                    raise InputError("RUN --mount=type=tmpfs needs a target", where)
                return RunMount("tmpfs", target, size=mount.size)
            case "secret":
                secret_id = mount.id or posixpath.basename(target)
                if not secret_id:
                    raise InputError("RUN --mount=type=secret needs an id or a target", where)
                # BuildKit: env= puts the secret in that variable; without a target, there only.
                file_target = target or ("" if mount.env else f"/run/secrets/{secret_id}")
                return RunMount(
                    "secret",
                    file_target,
                    id=secret_id,
                    required=mount.required,
                    mode=mount.mode,
                    uid=mount.uid,
                    gid=mount.gid,
                    env=mount.env,
                )
            case "bind":
                if not target:
                    raise InputError("RUN --mount=type=bind needs a target", where)
                if mount.from_:  # a path in another stage's (or an image's) tree
                    return RunMount(
                        "bind",
                        target,
                        source=_inside(mount.source),
                        stage_key=self._mount_tree(mount.from_, where),
                        readonly=mount.readonly,
                    )
                selected = select_sources(
                    self.state.context, [mount.source or "."], self.state.ignore, where
                )
                if len(selected) != 1:
                    raise InputError(
                        f"RUN --mount=type=bind: source {mount.source!r} must name one path", where
                    )
                digest = context_digest(
                    self.state.context, selected, self.state.ignore, self.state.stat_cache
                )
                return RunMount(
                    "bind", target, source=selected[0], digest=digest, readonly=mount.readonly
                )
        raise InputError(f"RUN --mount=type={mount.type} is not supported", where)

    def _argv(self, run: ins.Run) -> tuple[str, ...]:
        if not run.shell:
            return run.command
        shell = self.config.shell or DEFAULT_SHELL
        command = run.command[0]
        if run.heredocs:
            if (
                len(run.heredocs) == 1
                and command.strip().lstrip("<-").strip("'\"") == run.heredocs[0].name
            ):
                return (*shell, run.heredocs[0].content)  # the heredoc is the script
            # Otherwise the shell reads the heredocs itself, as BuildKit arranges it.
            bodies = "".join(f"{doc.content}{doc.name}\n" for doc in run.heredocs)
            return (*shell, f"{command}\n{bodies}")
        return (*shell, command)

    def _copy(self, copy: ins.Copy | ins.Add) -> None:
        add = isinstance(copy, ins.Add)
        if isinstance(copy, ins.Add) and copy.checksum:
            _check_checksum(copy, copy.checksum)
        if copy.chmod:  # checked here, once expanded, so that the error names the line
            try:
                parse_chmod(copy.chmod)
            except InputError as err:
                raise InputError(err.args[0], copy.where) from err
        for part in (copy.chown or "").split(":"):
            if part.isdigit() and (len(part) > 10 or int(part) >= 2**32 - 1):
                shown = shorten(part)
                raise InputError(f"invalid --chown id {shown!r}: at most 4294967294", copy.where)
        urls = [source for source in copy.sources if source.startswith(URL_PREFIXES)]
        if urls:
            if not add:
                raise InputError("COPY cannot take a URL; use ADD", copy.where)
            self._add_url(copy, urls)
            return
        dest = self._dest(copy.dest)
        from_ = copy.from_ if isinstance(copy, ins.Copy) else None
        if from_:
            source = self._stage_source(from_, copy.sources, copy.where)
        elif copy.sources:
            selected = select_sources(
                self.state.context, copy.sources, self.state.ignore, copy.where
            )
            digest = context_digest(
                self.state.context,
                selected,
                self.state.ignore,
                self.state.stat_cache,
                include_modes=not copy.chmod,
            )
            source = CopySource("", str(self.state.context), selected, digest)
        else:
            source = CopySource("", "", (), "")
        step = CopyStep(
            parent=self.key,
            source=source,
            patterns=copy.sources,
            dest=dest,
            inline=tuple((doc.name, doc.content) for doc in copy.heredocs),
            chown=copy.chown or "",
            chmod=copy.chmod or "",
            add=add,
            title=self.title(copy),
            where=copy.where,
        )
        self.key = self.state.add(step)

    def _add_url(self, add: ins.Add, urls: list[str]) -> None:
        if len(add.sources) != 1 or not urls[0].startswith(("http://", "https://")):
            raise InputError(
                "ADD takes one http(s) URL at a time (git sources are not supported yet)", add.where
            )
        try:
            urlsplit(urls[0]).port  # noqa: B018 (it raises for `http://[::1 /x` or a bad port)
        except ValueError as err:
            raise InputError(f"ADD: invalid URL {urls[0]!r}: {err}", add.where) from err
        if self.state.fetch_url is None:
            raise InputError("ADD of a URL is not available here", add.where)
        download = self.state.fetch_url(urls[0], add.checksum, add.where)
        dest = self._dest(add.dest)
        source = CopySource("", str(download.directory), (download.name,), download.digest)
        step = CopyStep(
            self.key,
            source,
            add.sources,
            dest,
            chown=add.chown or "",
            chmod=add.chmod or "",
            add=False,
            title=self.title(add),
            where=add.where,
        )
        self.key = self.state.add(step)

    def _dest(self, written: str) -> str:
        """BuildKit's pathRelativeToWorkingDir: a relative destination is under WORKDIR, and
        one that names a directory ("", ".", "x/", "x/.", "..") keeps saying so with a "/"."""
        names_dir = written in ("", ".", "..") or written.endswith(("/", "/.", "/.."))
        joined = posixpath.normpath(posixpath.join(self.config.working_dir or "/", written))
        if joined.startswith("//"):
            joined = "/" + joined.lstrip("/")
        return joined + "/" if names_dir and joined != "/" else joined

    def _stage_source(
        self, reference: str, patterns: tuple[str, ...], where: Location | None
    ) -> CopySource:
        tree = self._tree(reference, "COPY --from", where)
        if isinstance(tree, Path):
            return self._directory_source(tree, patterns, where)
        return CopySource(tree, "", (), "")

    def _mount_tree(self, reference: str, where: Location | None) -> str:
        tree = self._tree(reference, "RUN --mount from", where)
        if isinstance(tree, Path):
            raise InputError(
                f"RUN --mount from={reference}: a directory context cannot be mounted yet", where
            )
        return tree

    def _tree(self, reference: str, flag: str, where: Location | None) -> str | Path:
        """What `from` names (COPY --from, RUN --mount from=): an earlier stage, a Buildfile
        context or an image, as the key of the step that holds its tree; or the directory of
        a context that is one."""
        stage = self.state.dockerfile.stage(reference, before=self.stage.index)
        if stage is None and self.state.dockerfile.stage(reference) is not None:
            raise InputError(f"{flag}={reference}: a stage can only use an earlier stage", where)
        if stage is not None:
            return _lower_stage(self.state, stage.index, self.visiting).key
        named = _named(self.state, reference)
        if named is not None and named.stage is not None:
            return named.stage.key
        if named is not None and named.directory:
            return Path(named.directory)
        image = named.image if named is not None and named.image else reference
        return self.state.images.get(image) or _source(self.state, image, where)[0]

    def _directory_source(
        self, directory: Path, patterns: tuple[str, ...], where: Location | None
    ) -> CopySource:
        """A named context that is a directory: like the build context, without .dockerignore."""
        nothing = IgnoreMatcher(())
        selected = select_sources(directory, patterns, nothing, where)
        digest = context_digest(directory, selected, nothing, self.state.stat_cache)
        return CopySource("", str(directory), selected, digest)

    def _mkdir(self, instruction: ins.Instruction, path: str) -> None:
        """WORKDIR makes its dirs owned by the current USER (BuildKit's Mkdir WithUser)."""
        step = CopyStep(
            self.key,
            CopySource("", "", (), ""),
            (),
            posixpath.normpath(path).rstrip("/") + "/",
            chown=self.config.user,
            unknown_owner_is_root=True,
            title=self.title(instruction),
            where=instruction.where,
        )
        self.key = self.state.add(step)

    # -- metadata steps ---------------------------------------------------------------------
    def _config(self, instruction: ins.Instruction, config: RuntimeConfig) -> None:
        self.config = config
        step = ConfigStep(
            self.key,
            _created_by(instruction),
            config,
            self.author,
            self.title(instruction),
            instruction.where,
        )
        self.key = self.state.add(step)

    def _configured(self, instruction: ins.Instruction) -> RuntimeConfig:
        config = self.config
        match instruction:
            case ins.Env():
                for key, value in instruction.pairs:
                    config = config.with_env(key, value)
                return config
            case ins.Label():
                labels = dict(config.labels) | dict(instruction.pairs)
                return replace(config, labels=tuple(sorted(labels.items())))
            case ins.User():
                return replace(config, user=instruction.user)
            case ins.Expose():
                ports = {port for text in instruction.ports for port in _ports(text, instruction)}
                return replace(
                    config, exposed_ports=tuple(sorted(set(config.exposed_ports) | ports))
                )
            case ins.Volume():
                volumes = set(config.volumes) | set(instruction.paths)
                return replace(config, volumes=tuple(sorted(volumes)))
            case ins.Cmd():
                self.cmd_set = True
                return replace(config, cmd=self._command(instruction))
            case ins.Entrypoint():
                cmd = config.cmd if self.cmd_set else None
                return replace(config, entrypoint=self._command(instruction), cmd=cmd)
            case ins.Shell():
                return replace(config, shell=instruction.command)
            case ins.StopSignal():
                check_signal(instruction.signal, instruction.where)
                return replace(config, stop_signal=instruction.signal)
            case ins.Healthcheck():
                check = Healthcheck(
                    instruction.test,
                    instruction.interval,
                    instruction.timeout,
                    instruction.start_period,
                    instruction.start_interval,
                    instruction.retries,
                )
                return replace(config, healthcheck=check)
            case ins.Onbuild():
                return replace(config, on_build=(*config.on_build, instruction.expression))
            case ins.Maintainer():
                self.author = instruction.name
                return config
        raise InputError(
            f"{type(instruction).__name__.upper()} cannot be used here", instruction.where
        )

    def _command(self, instruction: ins.Cmd | ins.Entrypoint) -> tuple[str, ...]:
        if instruction.shell:
            return (*(self.config.shell or DEFAULT_SHELL), instruction.command[0])
        return instruction.command


def _workdir(current: str, written: str) -> str:
    """The config's WorkingDir after `WORKDIR written`, as BuildKit's NormalizeWorkdir: an
    absolute path is kept as written (a trailing "/" too), a relative one is joined and cleaned."""
    if written.startswith("/"):
        return written
    return posixpath.normpath(posixpath.join(current or "/", written))


def _ports(text: str, instruction: ins.Instruction) -> list[str]:
    """EXPOSE 80, 53/udp, 8000-8002/tcp -> one "port/proto" each, as Docker records them."""
    number, _, protocol = text.partition("/")
    protocol = (protocol or "tcp").lower()
    first, _, last = number.partition("-")
    shown = shorten(text)
    if (
        not first.isdigit()
        or (last and not last.isdigit())
        or protocol not in ("tcp", "udp", "sctp")
    ):
        raise InputError(f"invalid port {shown!r} in EXPOSE", instruction.where)
    if max(len(first), len(last)) > 10:  # no port; and int() refuses 4300 digits
        raise InputError(f"invalid port range {shown!r} in EXPOSE", instruction.where)
    high = int(last) if last else int(first)
    if high < int(first) or high > 65535:
        raise InputError(f"invalid port range {shown!r} in EXPOSE", instruction.where)
    return [f"{port}/{protocol}" for port in range(int(first), high + 1)]


def _inside(source: str) -> str:
    """A `--mount source=` inside a stage's tree, absolute and clean ("" is its root)."""
    return posixpath.normpath(posixpath.join("/", source)).replace("//", "/")


# moby's signal.SignalMap on Linux: what STOPSIGNAL takes by name (with or without SIG)
SIGNAL_NAMES = frozenset(
    {name.removeprefix("SIG") for name in signal.Signals.__members__}
    | {"CLD", "IOT", "POLL", "STKFLT", "UNUSED"}
    | {f"RTMIN+{n}" for n in range(1, 16)}
    | {f"RTMAX-{n}" for n in range(1, 15)}
)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # what graph/remote.py checks a download against


def check_signal(text: str, where: Location | None) -> None:
    """STOPSIGNAL takes a signal number or name, as moby's signal.ParseSignal does."""
    if text.isdecimal() and len(text) <= 10:
        if int(text) > 0:
            return
    elif text.upper().removeprefix("SIG") in SIGNAL_NAMES:
        return
    raise InputError(f"invalid signal: {shorten(text)!r}", where)


def _check_checksum(add: ins.Add, checksum: str) -> None:
    """BuildKit: --checksum only for an http(s) source, and it must be a digest."""
    if not all(source.startswith(("http://", "https://")) for source in add.sources):
        raise InputError("ADD --checksum can only be used with an http(s) source", add.where)
    if not _DIGEST.fullmatch(checksum):
        raise InputError(f"ADD --checksum: invalid digest {shorten(checksum)!r}", add.where)


def _created_by(instruction: ins.Instruction) -> str:
    return instruction.original.strip()
