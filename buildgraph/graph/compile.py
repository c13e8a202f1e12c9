"""Compile the requested targets of a Buildfile into plans that share one key space.

`gather_facts` is the one step with side effects: it runs the compilation with live sources
(disk, registry, network) and keeps every answer, because what is needed is only known while
lowering (a base image's ENV decides what a later COPY expands to). `compile_project` is then
a function of the Buildfile, the Dockerfiles and those facts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from buildgraph.errors import InputError
from buildgraph.frontend.buildfile import Project, TargetSpec, select_targets
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.graph.context import StatCache
from buildgraph.graph.facts import Facts, FactSource, FactTable, MissingDockerfile, RecordingFacts
from buildgraph.graph.lower import lower_stages
from buildgraph.graph.plans import BuildPlan, NamedContext
from buildgraph.image.oci import default_platform, parse_platform
from buildgraph.registry.reference import parse_reference


@dataclass(frozen=True)
class Compiled:
    plans: Mapping[str, BuildPlan]  # target name -> its plan; a target after what it needs
    ignores: Mapping[str, IgnoreMatcher]  # context directory -> its .dockerignore
    warnings: tuple[str, ...]
    stat_cache: StatCache  # the file hashes behind the context digests, for summaries


def gather_facts(project: Project, names: Sequence[str], live: FactSource) -> Facts:
    """Everything compiling `names` reads from outside the Buildfile, asked of `live` once."""
    return gather_and_compile(project, names, live)[0]


def gather_and_compile(
    project: Project, names: Sequence[str], live: FactSource
) -> tuple[Facts, Compiled]:
    """`gather_facts` and `compile_project` in one pass, as a run uses them: the compilation
    that asked the questions is the one their answers give (tests/graph/test_compile.py
    checks they are equal), so each target is lowered once per run, not twice."""
    recorder = RecordingFacts(live)
    compiled = _compile(project, names, recorder)
    return recorder.facts(), compiled


def compile_project(project: Project, names: Sequence[str], facts: Facts) -> Compiled:
    """Lower every requested target (and what it needs) from gathered facts. Pure."""
    return _compile(project, names, FactTable(facts))


class _NeedTarget(Exception):
    """Lowering met another target (by a tag or a `target:` context) not compiled yet."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _compile(project: Project, names: Sequence[str], facts: FactSource) -> Compiled:
    plans: dict[str, BuildPlan] = {}
    ignores: dict[str, IgnoreMatcher] = {}
    warnings: list[str] = []
    tag_owners = {
        form: name for name, spec in project.targets for tag in spec.tags for form in _forms(tag)
    }

    def compile_target(name: str, in_progress: tuple[str, ...]) -> None:
        if name in plans:
            return
        spec = project.target(name)
        if name in in_progress:
            cycle = " -> ".join([*in_progress[in_progress.index(name) :], name])
            raise InputError(f"targets depend on each other in a cycle: {cycle}", spec.where)
        for dependency in spec.depends_on:
            compile_target(dependency, (*in_progress, name))
        contexts = _TargetContexts(plans, spec, tag_owners)
        while True:  # a target met while lowering is compiled first, then lowering restarts
            try:
                plan = _lower_target(spec, facts, ignores, contexts)
                break
            except _NeedTarget as needed:
                compile_target(needed.name, (*in_progress, name))
        plans[name] = plan
        warnings.extend(f"{name}: {warning}" for warning in plan.warnings)

    for name in select_targets(project, names):
        compile_target(name, ())
    return Compiled(
        MappingProxyType(plans), MappingProxyType(ignores), tuple(warnings), facts.stat_cache
    )


def _lower_target(
    spec: TargetSpec,
    facts: FactSource,
    ignores: dict[str, IgnoreMatcher],
    contexts: Mapping[str, NamedContext],
) -> BuildPlan:
    platform = parse_platform(spec.platform) if spec.platform else default_platform()
    # The first target of a context decides its ignore rules (a shared context is walked once).
    ignore = ignores.setdefault(str(spec.context), facts.ignore(spec.context, spec.dockerfile))
    try:
        dockerfile = facts.dockerfile(spec.dockerfile, spec.where)
    except MissingDockerfile as err:
        raise InputError(f"target {spec.name}: {err.args[0]}", err.where) from err
    return lower_stages(
        dockerfile,
        target=spec.target,
        build_args=dict(spec.args),
        context=spec.context,
        ignore=ignore,
        facts=facts,
        platform=platform,
        named=contexts,
    )


class _TargetContexts(Mapping[str, NamedContext]):
    """A target's named contexts; tags of other targets resolve to those targets' results, so
    `FROM <another target's tag>` never pulls a stale registry copy. A target not compiled yet
    raises _NeedTarget: the compilation compiles it and lowers this target again."""

    def __init__(
        self, plans: Mapping[str, BuildPlan], spec: TargetSpec, tag_owners: Mapping[str, str]
    ) -> None:
        self._plans = plans  # the compiled targets so far
        self._spec = spec.name
        self._tag_owners = tag_owners  # every spelling of every target's tags -> that target
        self._explicit: dict[str, NamedContext | str] = {}
        for name, ref in spec.contexts:
            if ref.kind == "target":
                self._explicit[name] = ref.value
            elif ref.kind == "image":
                self._explicit[name] = NamedContext(image=ref.value)
            else:
                self._explicit[name] = NamedContext(directory=ref.value)

    def _lookup(self, name: str) -> NamedContext | str | None:
        if name in self._explicit:
            return self._explicit[name]
        owner = self._tag_owners.get(name)
        return owner if owner is not None and owner != self._spec else None

    def __getitem__(self, name: str) -> NamedContext:
        value = self._lookup(name)
        if value is None:
            raise KeyError(name)
        if isinstance(value, str):  # a target
            if value not in self._plans:
                raise _NeedTarget(value)
            return NamedContext(stage=self._plans[value].target)
        return value

    def __iter__(self) -> Iterator[str]:
        keys = set(self._explicit) | {k for k, v in self._tag_owners.items() if v != self._spec}
        return iter(sorted(keys))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _forms(tag: str) -> set[str]:
    try:
        ref = parse_reference(tag)
    except InputError:
        return {tag}
    return {tag, str(ref), ref.familiar}
