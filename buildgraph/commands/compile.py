"""Compile a Buildfile's targets into lowered plans sharing one key space (and one graph):
the step every command that builds, plans or warms starts from."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from buildgraph.cache.local import LocalStore
from buildgraph.errors import BuildgraphError, InputError, Location
from buildgraph.frontend.buildfile import Project, TargetSpec, select_targets
from buildgraph.frontend.dockerfile import parse_dockerfile
from buildgraph.frontend.ignore import IgnoreMatcher, load_dockerignore
from buildgraph.graph.context import StatCache
from buildgraph.graph.lower import (
    BaseImage,
    BaseResolver,
    BuildPlan,
    NamedContext,
    lower_dockerfile,
)
from buildgraph.graph.model import BuildGraph, Target, build_graph
from buildgraph.graph.remote import url_fetcher
from buildgraph.image.oci import Platform, default_platform, parse_platform
from buildgraph.registry.reference import parse_reference

if TYPE_CHECKING:  # the client pulls in requests; only a registry call needs it
    from buildgraph.registry.client import RegistryClient

ClientFactory = Callable[[], "RegistryClient"]
STAT_CACHE = "statcache.json"  # in the cache dir


def relocate(err: BuildgraphError, where: Location | None) -> BuildgraphError:
    """The same error, naming the Dockerfile line it came from (if it named none)."""
    if err.where is None and where is not None:
        err.where = where
    return err


def base_resolver(
    store: LocalStore, client: ClientFactory, platform: Platform, *, always_pull: bool
) -> BaseResolver:
    """FROM name looks in the local store first, then asks the registry (once per run)."""
    seen: dict[str, BaseImage] = {}

    def resolve(text: str, where: Location | None) -> BaseImage:
        if text in seen:
            return seen[text]
        try:
            ref = parse_reference(text)
            image = (
                None if always_pull else (store.resolve(ref.familiar) or store.resolve(str(ref)))
            )
            if image is None:
                from buildgraph.registry.transfer import pull  # needs requests: only here

                image = pull(client(), store.ensure(), ref, platform=platform)
            config = store.read_config(store.read_manifest(image.descriptor))
        except BuildgraphError as err:
            raise relocate(err, where) from err.__cause__
        seen[text] = BaseImage(str(ref), image.descriptor.digest, config)
        return seen[text]

    return resolve


@dataclass
class Compiled:
    plans: dict[str, BuildPlan]  # target name -> its plan
    ignores: dict[str, IgnoreMatcher] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stat_cache: StatCache = field(default_factory=StatCache)  # one hash per file per run


class _TargetContexts(Mapping[str, NamedContext]):
    """A target's named contexts; tags of other targets resolve to those targets, lowered on
    first use, so `FROM <another target's tag>` never pulls a stale registry copy."""

    def __init__(self, compile_target, spec: TargetSpec, tag_owners: Mapping[str, str]) -> None:
        self._compile_target = compile_target
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
        if isinstance(value, str):  # a target: lower it now (cycles are caught there)
            return NamedContext(stage=self._compile_target(value).target)
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


def compile_project(
    project: Project,
    names: Sequence[str],
    *,
    store: LocalStore,
    client: ClientFactory,
    always_pull: bool = False,
) -> Compiled:
    """Lower every requested target (and what it needs) into plans sharing one key space."""
    compiled = Compiled({}, stat_cache=StatCache.load(store.root / STAT_CACHE))
    stat_cache = compiled.stat_cache  # a context shared by several targets is hashed once
    fetch = url_fetcher(store.root / "downloads")
    resolvers: dict[Platform, object] = {}
    in_progress: list[str] = []
    tag_owners = {
        form: name for name, spec in project.targets for tag in spec.tags for form in _forms(tag)
    }

    def compile_target(name: str) -> BuildPlan:
        if name in compiled.plans:
            return compiled.plans[name]
        spec = project.target(name)
        if name in in_progress:
            cycle = " -> ".join([*in_progress[in_progress.index(name) :], name])
            raise InputError(f"targets depend on each other in a cycle: {cycle}", spec.where)
        in_progress.append(name)
        try:
            for dependency in spec.depends_on:
                compile_target(dependency)
            platform = parse_platform(spec.platform) if spec.platform else default_platform()
            if platform not in resolvers:
                resolvers[platform] = base_resolver(
                    store, client, platform, always_pull=always_pull
                )
            ignore = compiled.ignores.setdefault(
                str(spec.context), load_dockerignore(spec.context, spec.dockerfile)
            )
            if not spec.dockerfile.is_file():
                raise InputError(
                    f"target {name}: Dockerfile {spec.dockerfile} not found", spec.where
                )
            plan = lower_dockerfile(
                parse_dockerfile(spec.dockerfile),
                target=spec.target,
                build_args=dict(spec.args),
                context=spec.context,
                ignore=ignore,
                resolve_base=resolvers[platform],  # type: ignore[arg-type]
                stat_cache=stat_cache,
                platform=platform,
                fetch_url=fetch,
                named=_TargetContexts(compile_target, spec, tag_owners),
            )
        finally:
            in_progress.remove(name)
        compiled.plans[name] = plan
        compiled.warnings.extend(f"{name}: {warning}" for warning in plan.warnings)
        return plan

    for name in select_targets(project, names):
        compile_target(name)
    return compiled


def project_graph(compiled: Compiled) -> BuildGraph:
    """One graph of every compiled target, with the targets."""
    return build_graph(
        (plan.steps for plan in compiled.plans.values()),
        (Target(name, plan.target.key) for name, plan in compiled.plans.items()),
    )
