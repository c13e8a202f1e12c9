"""The facts lowering needs from outside: Dockerfiles, .dockerignore files, pinned base images,
ADD URL downloads and context digests. `LiveFacts` gets them (disk, registry, network);
`RecordingFacts` keeps every answer as a frozen `Facts`; `FactTable` answers from one, so a
lowering given a `FactTable` reads nothing but its arguments."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from buildgraph.errors import InputError, Location
from buildgraph.frontend.dockerfile import Dockerfile, parse_dockerfile
from buildgraph.frontend.ignore import IgnoreMatcher, load_dockerignore
from buildgraph.graph.context import StatCache, context_digest, select_sources
from buildgraph.graph.plans import BaseImage, BaseResolver
from buildgraph.graph.urls import Download, UrlFetcher
from buildgraph.image.oci import Platform


class MissingDockerfile(InputError):
    """A target's Dockerfile is not there (the compilation names the target)."""


@dataclass(frozen=True, slots=True)
class ContextFact:
    """The context paths some COPY/ADD/--mount sources select, and their content digest."""

    selected: tuple[str, ...]
    digest: str


# (directory, sources as written, the ignore rules, whether file modes count)
ContextQuery = tuple[str, tuple[str, ...], IgnoreMatcher, bool]


class FactSource(Protocol):
    """Where lowering gets what is not in the Buildfile or the Dockerfile's text."""

    stat_cache: StatCache  # the file hashes behind the context digests (for summaries)

    def dockerfile(self, path: Path, where: Location | None) -> Dockerfile: ...

    def ignore(self, context: Path, dockerfile: Path | None) -> IgnoreMatcher: ...

    def base(self, reference: str, platform: Platform, where: Location | None) -> BaseImage: ...

    def url(self, url: str, checksum: str | None, where: Location | None) -> Download: ...

    def context(
        self,
        directory: Path,
        sources: tuple[str, ...],
        ignore: IgnoreMatcher,
        include_modes: bool,
        where: Location | None,
    ) -> ContextFact: ...


@dataclass(frozen=True)
class Facts:
    """Every answer one compilation needed; frozen, so a compile from it is pure."""

    dockerfiles: Mapping[str, Dockerfile]
    ignores: Mapping[tuple[str, str], IgnoreMatcher]  # (context, dockerfile or "")
    bases: Mapping[tuple[str, Platform], BaseImage]
    urls: Mapping[tuple[str, str | None], Download]
    contexts: Mapping[ContextQuery, ContextFact]
    # A memo of file content hashes, not a fact: kept so that summaries of the same files
    # (`plan`, the build records) hash nothing again, and so that `run` can save it.
    stat_cache: StatCache


class LiveFacts:
    """Reads files, asks the registry (through `resolver_for`) and downloads ADD URLs."""

    def __init__(
        self,
        *,
        resolver_for: Callable[[Platform], BaseResolver],
        fetch_url: UrlFetcher | None,
        stat_cache: StatCache,
    ) -> None:
        self._resolver_for = resolver_for
        self._resolvers: dict[Platform, BaseResolver] = {}  # one per platform, as they cache
        self._fetch_url = fetch_url
        self.stat_cache = stat_cache

    def dockerfile(self, path: Path, where: Location | None) -> Dockerfile:
        if not path.is_file():
            raise MissingDockerfile(f"Dockerfile {path} not found", where)
        return parse_dockerfile(path)

    def ignore(self, context: Path, dockerfile: Path | None) -> IgnoreMatcher:
        return load_dockerignore(context, dockerfile)

    def base(self, reference: str, platform: Platform, where: Location | None) -> BaseImage:
        if platform not in self._resolvers:
            self._resolvers[platform] = self._resolver_for(platform)
        return self._resolvers[platform](reference, where)

    def url(self, url: str, checksum: str | None, where: Location | None) -> Download:
        if self._fetch_url is None:
            raise InputError("ADD of a URL is not available here", where)
        return self._fetch_url(url, checksum, where)

    def context(
        self,
        directory: Path,
        sources: tuple[str, ...],
        ignore: IgnoreMatcher,
        include_modes: bool,
        where: Location | None,
    ) -> ContextFact:
        selected = select_sources(directory, sources, ignore, where)
        digest = context_digest(
            directory, selected, ignore, self.stat_cache, include_modes=include_modes
        )
        return ContextFact(selected, digest)


class RecordingFacts:
    """Asks `live` once per question and keeps the answer."""

    def __init__(self, live: FactSource) -> None:
        self._live = live
        self.stat_cache = live.stat_cache
        self._dockerfiles: dict[str, Dockerfile] = {}
        self._ignores: dict[tuple[str, str], IgnoreMatcher] = {}
        self._bases: dict[tuple[str, Platform], BaseImage] = {}
        self._urls: dict[tuple[str, str | None], Download] = {}
        self._contexts: dict[ContextQuery, ContextFact] = {}

    def dockerfile(self, path: Path, where: Location | None) -> Dockerfile:
        if str(path) not in self._dockerfiles:
            self._dockerfiles[str(path)] = self._live.dockerfile(path, where)
        return self._dockerfiles[str(path)]

    def ignore(self, context: Path, dockerfile: Path | None) -> IgnoreMatcher:
        query = (str(context), str(dockerfile or ""))
        if query not in self._ignores:
            self._ignores[query] = self._live.ignore(context, dockerfile)
        return self._ignores[query]

    def base(self, reference: str, platform: Platform, where: Location | None) -> BaseImage:
        if (reference, platform) not in self._bases:
            self._bases[reference, platform] = self._live.base(reference, platform, where)
        return self._bases[reference, platform]

    def url(self, url: str, checksum: str | None, where: Location | None) -> Download:
        if (url, checksum) not in self._urls:
            self._urls[url, checksum] = self._live.url(url, checksum, where)
        return self._urls[url, checksum]

    def context(
        self,
        directory: Path,
        sources: tuple[str, ...],
        ignore: IgnoreMatcher,
        include_modes: bool,
        where: Location | None,
    ) -> ContextFact:
        query = (str(directory), sources, ignore, include_modes)
        if query not in self._contexts:
            found = self._live.context(directory, sources, ignore, include_modes, where)
            self._contexts[query] = found
        return self._contexts[query]

    def facts(self) -> Facts:
        return Facts(
            MappingProxyType(dict(self._dockerfiles)),
            MappingProxyType(dict(self._ignores)),
            MappingProxyType(dict(self._bases)),
            MappingProxyType(dict(self._urls)),
            MappingProxyType(dict(self._contexts)),
            self.stat_cache,
        )


class FactTable:
    """Answers from gathered facts only. A question they lack is a bug in gathering."""

    def __init__(self, facts: Facts) -> None:
        self._facts = facts
        self.stat_cache = facts.stat_cache

    def dockerfile(self, path: Path, where: Location | None) -> Dockerfile:
        return self._facts.dockerfiles[str(path)]

    def ignore(self, context: Path, dockerfile: Path | None) -> IgnoreMatcher:
        return self._facts.ignores[str(context), str(dockerfile or "")]

    def base(self, reference: str, platform: Platform, where: Location | None) -> BaseImage:
        return self._facts.bases[reference, platform]

    def url(self, url: str, checksum: str | None, where: Location | None) -> Download:
        return self._facts.urls[url, checksum]

    def context(
        self,
        directory: Path,
        sources: tuple[str, ...],
        ignore: IgnoreMatcher,
        include_modes: bool,
        where: Location | None,
    ) -> ContextFact:
        return self._facts.contexts[str(directory), sources, ignore, include_modes]
