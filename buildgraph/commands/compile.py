"""Compile a Buildfile's targets into lowered plans sharing one key space (and one graph):
the step every command that builds, plans or warms starts from."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from buildgraph.cache.local import LocalStore
from buildgraph.errors import BuildgraphError, Location
from buildgraph.frontend.buildfile import Project
from buildgraph.graph.compile import Compiled, gather_and_compile
from buildgraph.graph.context import StatCache
from buildgraph.graph.facts import LiveFacts
from buildgraph.graph.lower import BaseImage, BaseResolver
from buildgraph.graph.model import BuildGraph, Target, build_graph
from buildgraph.graph.urls import url_fetcher
from buildgraph.image.oci import Platform
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
                from buildgraph.cache.transfer import pull  # needs requests: only here

                image = pull(client(), store.ensure(), ref, platform=platform)
            config = store.read_config(store.read_manifest(image.descriptor))
        except BuildgraphError as err:
            raise relocate(err, where) from err.__cause__
        seen[text] = BaseImage(str(ref), image.descriptor.digest, config)
        return seen[text]

    return resolve


def compile_project(
    project: Project,
    names: Sequence[str],
    *,
    store: LocalStore,
    client: ClientFactory,
    always_pull: bool = False,
) -> Compiled:
    """Gather the facts (Dockerfiles, base images, ADD URLs, context files) and compile."""
    live = LiveFacts(
        resolver_for=functools.partial(base_resolver, store, client, always_pull=always_pull),
        fetch_url=url_fetcher(store.root / "downloads"),
        stat_cache=StatCache.load(store.root / STAT_CACHE),  # each file hashed once per run
    )
    return gather_and_compile(project, names, live)[1]


def project_graph(compiled: Compiled) -> BuildGraph:
    """One graph of every compiled target, with the targets."""
    return build_graph(
        (plan.steps for plan in compiled.plans.values()),
        (Target(name, plan.target.key) for name, plan in compiled.plans.items()),
    )
