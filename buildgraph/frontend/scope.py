"""ARG/ENV scoping as Docker does it: what each instruction of each stage can see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from buildgraph.errors import InputError
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.dockerfile import Dockerfile, Stage
from buildgraph.frontend.expand import (
    PLATFORM_ARGS,
    PROXY_ARGS,
    expand,
    expand_words,
    platform_args,
)
from buildgraph.frontend.flags import parse_mount

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class GlobalScope:
    """ARGs before the first FROM, after build args, plus the automatic platform args."""

    args: Pairs  # global ARGs that have a value
    platform: Pairs  # TARGETPLATFORM ... BUILDVARIANT
    proxy: Pairs  # HTTP_PROXY & co. given as build args: RUN sees them without an ARG line

    def mapping(self) -> dict[str, str]:
        """What FROM lines expand with (and what `ARG NAME` in a stage picks up)."""
        return {**dict(self.platform), **dict(self.args)}


@dataclass(frozen=True, slots=True)
class ResolvedFrom:
    stage: int
    base: ins.From  # image and platform expanded
    base_stage: int | None  # `FROM <earlier stage name or index>`
    image: str | None  # the image reference; None for `scratch` and for stages

    @property
    def scratch(self) -> bool:
        return self.base_stage is None and self.image is None


@dataclass(frozen=True, slots=True)
class ResolvedDockerfile:
    dockerfile: Dockerfile
    scope: GlobalScope
    bases: tuple[ResolvedFrom, ...]  # one per stage, same order
    unused_build_args: tuple[str, ...]  # passed but declared by no ARG: warn about them


@dataclass(frozen=True, slots=True)
class ResolvedInstruction:
    """One instruction, expanded, with the scope in effect just before it runs."""

    instruction: ins.Instruction  # expanded fields; an Arg carries its resolved values
    args: Pairs  # ARGs declared in this stage so far that have a value
    env: Pairs  # base image ENV + ENV lines so far

    def visible(self) -> dict[str, str]:
        """What ${VAR} sees and a RUN gets: ENV wins over an ARG of the same name."""
        return {**dict(self.args), **dict(self.env)}


@dataclass(frozen=True, slots=True)
class ResolvedStage:
    index: int
    name: str | None
    instructions: tuple[ResolvedInstruction, ...]
    args: Pairs  # at the end of the stage
    env: Pairs
    proxy: Pairs


def resolve_globals(
    dockerfile: Dockerfile,
    build_args: Mapping[str, str],
    *,
    target_platform: str = "linux/amd64",
    build_platform: str = "linux/amd64",
) -> GlobalScope:
    platform = platform_args(target_platform, build_platform)
    env: dict[str, str] = dict(platform)
    values: dict[str, str] = {}
    for arg in dockerfile.global_args:
        # Each default sees the platform args and the global ARGs above it.
        for key, value in _arg_values(arg, env, {}, build_args, dockerfile.escape):
            if value is None:
                env.pop(key, None)
                values.pop(key, None)
            else:
                env[key] = values[key] = value
    proxy = tuple((name, build_args[name]) for name in PROXY_ARGS if name in build_args)
    return GlobalScope(args=tuple(values.items()), platform=tuple(platform.items()), proxy=proxy)


def resolve_from(dockerfile: Dockerfile, stage: Stage, scope: GlobalScope) -> ResolvedFrom:
    """Expand a stage's FROM with only the global scope; find the stage it builds on."""
    base = stage.base
    env = scope.mapping()
    image = expand(base.image, env, escape=dockerfile.escape, where=base.where)
    if not image:
        raise InputError(f"base name ({base.image}) should not be blank", base.where)
    platform = base.platform
    if platform is not None:
        platform = expand(platform, env, escape=dockerfile.escape, where=base.where) or None
    expanded = replace(base, image=image, platform=platform)
    parent = dockerfile.stage(image, before=stage.index)
    if parent is not None:
        return ResolvedFrom(stage.index, expanded, parent.index, None)
    return ResolvedFrom(stage.index, expanded, None, None if image == "scratch" else image)


def resolve_stages(
    dockerfile: Dockerfile,
    build_args: Mapping[str, str],
    *,
    target_platform: str = "linux/amd64",
    build_platform: str = "linux/amd64",
) -> ResolvedDockerfile:
    """Global scope, every FROM resolved and the unused build args; stages come later."""
    scope = resolve_globals(
        dockerfile, build_args, target_platform=target_platform, build_platform=build_platform
    )
    bases = tuple(resolve_from(dockerfile, stage, scope) for stage in dockerfile.stages)
    return ResolvedDockerfile(dockerfile, scope, bases, unused_build_args(dockerfile, build_args))


def unused_build_args(dockerfile: Dockerfile, build_args: Mapping[str, str]) -> tuple[str, ...]:
    declared = set(PROXY_ARGS) | set(PLATFORM_ARGS)
    arg_lines = list(dockerfile.global_args)
    for stage in dockerfile.stages:
        arg_lines += [each for each in stage.instructions if isinstance(each, ins.Arg)]
    declared |= {key for arg in arg_lines for key, _ in arg.pairs}
    return tuple(sorted(name for name in build_args if name not in declared))


def resolve_stage(
    stage: Stage,
    base_env: Sequence[str],
    scope: GlobalScope,
    build_args: Mapping[str, str],
    *,
    escape: str = "\\",
) -> ResolvedStage:
    """Walk one stage once its base image's ENV ("K=V" strings) is known."""
    env: dict[str, str] = {}
    for item in base_env:
        key, _, value = item.partition("=")
        env[key] = value
    args: dict[str, str] = {}
    resolved: list[ResolvedInstruction] = []
    globals_ = scope.mapping()
    for instruction in stage.instructions:
        visible = {**args, **env}
        expanded = expand_instruction(instruction, visible, escape)
        if isinstance(instruction, ins.Arg):
            pairs = _arg_values(instruction, visible, globals_, build_args, escape)
            expanded = replace(instruction, pairs=pairs)
        resolved.append(ResolvedInstruction(expanded, tuple(args.items()), tuple(env.items())))
        if isinstance(expanded, ins.Env):
            env.update(expanded.pairs)
        elif isinstance(expanded, ins.Arg):
            for key, value in expanded.pairs:
                if value is None:
                    args.pop(key, None)
                else:
                    args[key] = value
    return ResolvedStage(
        stage.index, stage.name, tuple(resolved), tuple(args.items()), tuple(env.items()),
        scope.proxy,
    )  # fmt: skip


def _arg_values(
    arg: ins.Arg,
    visible: Mapping[str, str],
    inherited: Mapping[str, str],
    build_args: Mapping[str, str],
    escape: str,
) -> tuple[tuple[str, str | None], ...]:
    """Each ARG's value: build arg, else its expanded default, else the global value."""
    result: list[tuple[str, str | None]] = []
    for raw_key, default in arg.pairs:
        key = expand(raw_key, visible, escape=escape, where=arg.where)
        value = (
            None if default is None else expand(default, visible, escape=escape, where=arg.where)
        )
        if key in build_args:
            value = build_args[key]
        elif value is None:
            value = inherited.get(key)
        result.append((key, value))
    return tuple(result)


def expand_instruction(
    instruction: ins.Instruction, env: Mapping[str, str], escape: str = "\\"
) -> ins.Instruction:
    """The instruction with ${VAR} expanded where Docker expands (ARG values: resolve_stage)."""
    where = instruction.where

    def word(text: str) -> str:
        return expand(text, env, escape=escape, where=where)

    def optional(text: str | None) -> str | None:
        return None if text is None else word(text)

    def pairs(items: Pairs) -> Pairs:
        return tuple((word(key), word(value)) for key, value in items)

    def heredocs(docs: tuple[ins.Heredoc, ...]) -> tuple[ins.Heredoc, ...]:
        # Inline files expand unless the delimiter was quoted; quotes in them are text.
        return tuple(
            replace(doc, content=expand(doc.content, env, where=where, quotes=False))
            if doc.expand
            else doc
            for doc in docs
        )

    match instruction:
        case ins.Copy():
            return replace(
                instruction,
                sources=tuple(map(word, instruction.sources)),
                dest=word(instruction.dest),
                heredocs=heredocs(instruction.heredocs),
                from_=optional(instruction.from_),
                chown=optional(instruction.chown),
                chmod=optional(instruction.chmod),
                exclude=tuple(map(word, instruction.exclude)),
            )
        case ins.Add():
            return replace(
                instruction,
                sources=tuple(map(word, instruction.sources)),
                dest=word(instruction.dest),
                heredocs=heredocs(instruction.heredocs),
                chown=optional(instruction.chown),
                chmod=optional(instruction.chmod),
                checksum=optional(instruction.checksum),
                exclude=tuple(map(word, instruction.exclude)),
            )
        case ins.Run() if instruction.mounts:
            # Every value expands before it is read (`type=$T` too), as BuildKit does; a Mount
            # made by hand (no spec) has nothing left to expand.
            mounts = tuple(
                parse_mount(m.spec, where, word) if m.spec else m for m in instruction.mounts
            )
            return replace(instruction, mounts=mounts)
        case ins.Env() | ins.Label():
            return replace(instruction, pairs=pairs(instruction.pairs))
        case ins.Expose():
            ports = [
                p
                for port in instruction.ports
                for p in expand_words(port, env, escape=escape, where=where)
            ]
            return replace(instruction, ports=tuple(ports))
        case ins.Volume():
            return replace(instruction, paths=tuple(map(word, instruction.paths)))
        case ins.Workdir():
            return replace(instruction, path=word(instruction.path))
        case ins.User():
            return replace(instruction, user=word(instruction.user))
        case ins.StopSignal():
            return replace(instruction, signal=word(instruction.signal))
        case ins.From():
            return replace(
                instruction, image=word(instruction.image), platform=optional(instruction.platform)
            )
        case _:
            return instruction  # RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK, ONBUILD, ...
