"""Lower a Dockerfile to steps: one frozen step per instruction, keys computed as we go.

`lower_stages` reads nothing but its arguments: what it needs from outside (base images, ADD
URL downloads, context digests) it asks of `facts`, which is a `FactTable` of gathered facts
for a pure lowering (graph/compile.py) or `LiveFacts` for the one-Dockerfile `build`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from buildgraph.errors import InputError, Location
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.dockerfile import Dockerfile, Stage, parse_dockerfile
from buildgraph.frontend.expand import ExpansionBudget
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.frontend.scope import GlobalScope, resolve_from, resolve_stage, resolve_stages
from buildgraph.graph.context import StatCache
from buildgraph.graph.facts import FactSource, LiveFacts
from buildgraph.graph.keys import step_key
from buildgraph.graph.plans import BaseImage, BaseResolver, BuildPlan, NamedContext, StagePlan
from buildgraph.graph.steps import SourceStep, Step
from buildgraph.graph.urls import UrlFetcher
from buildgraph.graph.walker import DEFAULT_PATH, StageWalker
from buildgraph.image.config import RuntimeConfig
from buildgraph.image.oci import Platform, parse_platform
from buildgraph.registry.reference import parse_reference

# Re-exported: the plan value types were defined here before graph/plans.py.
__all__ = [
    "BaseImage",
    "BaseResolver",
    "BuildPlan",
    "NamedContext",
    "StagePlan",
    "lower_dockerfile",
    "lower_stages",
]


@dataclass
class Lowering:
    """Mutable scratch state of one lowering; the result is frozen."""

    dockerfile: Dockerfile
    scope: GlobalScope
    build_args: Mapping[str, str]
    context: Path
    ignore: IgnoreMatcher
    facts: FactSource
    platform: Platform
    named: Mapping[str, NamedContext] = field(default_factory=dict)
    steps: dict[str, Step] = field(default_factory=dict)
    stages: dict[int, StagePlan] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # image ref -> source step key
    budget: ExpansionBudget = field(default_factory=ExpansionBudget)  # for all its stages

    def add(self, step: Step) -> str:
        key = step_key(step)
        self.steps.setdefault(key, step)
        return key

    def lower_stage(self, index: int, visiting: tuple[int, ...]) -> StagePlan:
        return _lower_stage(self, index, visiting)

    def named_context(self, name: str) -> NamedContext | None:
        return _named(self, name)

    def source(self, reference: str, where: Location | None) -> tuple[str, BaseImage]:
        return _source(self, reference, where)


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
    """`lower_stages` with facts got as they are needed (the one-Dockerfile `build`)."""
    facts = LiveFacts(
        resolver_for=lambda _: resolve_base, fetch_url=fetch_url, stat_cache=stat_cache
    )
    return lower_stages(
        dockerfile,
        target=target,
        build_args=build_args,
        context=context,
        ignore=ignore,
        facts=facts,
        platform=platform,
        named=named,
    )


def lower_stages(
    dockerfile: Dockerfile,
    *,
    target: str | None,
    build_args: Mapping[str, str],
    context: Path,
    ignore: IgnoreMatcher,
    facts: FactSource,
    platform: Platform,
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
    state = Lowering(
        dockerfile,
        resolved.scope,
        build_args,
        context,
        ignore,
        facts,
        platform,
        named if named is not None else {},
    )
    plan = _lower_stage(state, wanted.index, ())
    warnings = tuple(f"build arg {name} is not used" for name in resolved.unused_build_args)
    return BuildPlan(dict(state.steps), plan, dict(state.stages), warnings + dockerfile.warnings)


def _lower_stage(state: Lowering, index: int, visiting: tuple[int, ...]) -> StagePlan:
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
    elif (named := state.named_context(base.image)) is not None and named.stage is not None:
        key, config, author = named.stage.key, named.stage.config, named.stage.author
    else:
        if named is not None and named.directory:
            raise InputError(
                f"FROM {base.image}: that context is a directory, not an image", stage.base.where
            )
        reference = named.image if named is not None and named.image else base.image
        key, image = state.source(reference, stage.base.where)
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
    walker = StageWalker(state, (*visiting, index), stage, key, config, author)
    for item in resolved.instructions:
        walker.lower(item)
    plan = StagePlan(index, stage.name, walker.key, walker.config, walker.author, state.platform)
    state.stages[index] = plan
    return plan


def _named(state: Lowering, name: str) -> NamedContext | None:
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


def _source(state: Lowering, reference: str, where: Location | None) -> tuple[str, BaseImage]:
    image = state.facts.base(reference, state.platform, where)
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
