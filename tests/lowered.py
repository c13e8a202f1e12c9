"""Step graphs for solver tests, lowered from Dockerfile text (base images pinned by name)."""

from __future__ import annotations

from pathlib import Path

from buildgraph.errors import Location
from buildgraph.frontend.dockerfile import parse_dockerfile
from buildgraph.frontend.ignore import load_dockerignore
from buildgraph.graph.context import StatCache
from buildgraph.graph.lower import BaseImage, BuildPlan, lower_dockerfile
from buildgraph.graph.model import BuildGraph, Target, build_graph
from buildgraph.image.config import ImageConfig
from buildgraph.image.oci import Platform

# A service as the monorepo of issue 13 has them: a builder stage, then a runtime stage.
SERVICE = """FROM busybox AS builder
WORKDIR /src
COPY main.txt ./
RUN cat main.txt > /out.txt
RUN echo built >> /out.txt
FROM busybox
WORKDIR /app
COPY --from=builder /out.txt /app/out.txt
RUN cat /app/out.txt > /app/copy.txt
ENV MODE=prod
CMD ["cat", "/app/copy.txt"]
"""


def resolve(reference: str, where: Location | None) -> BaseImage:
    return BaseImage(reference, "sha256:" + "a" * 64, ImageConfig())


def lower(context: Path, text: str, files: dict[str, str] | None = None) -> BuildPlan:
    context.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {"main.txt": "v1\n"}).items():
        (context / name).write_text(content)
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(text)
    return lower_dockerfile(
        parse_dockerfile(dockerfile),
        target=None,
        build_args={},
        context=context,
        ignore=load_dockerignore(context),
        resolve_base=resolve,
        stat_cache=StatCache(),
        platform=Platform(),
    )


def service_graph(root: Path, names: list[str], *, mounts_from_cache: bool = False) -> BuildGraph:
    """One graph of a SERVICE per name (each with its own main.txt), one target each."""
    plans = {name: lower(root / name, SERVICE, {"main.txt": f"{name}\n"}) for name in names}
    return build_graph(
        (plan.steps for plan in plans.values()),
        (Target(name, plan.target.key, mounts_from_cache) for name, plan in plans.items()),
    )


def titled(graph: BuildGraph, keys) -> list[str]:
    """The titles of KEYS without the stage prefix, in graph order."""
    wanted = set(keys)
    return [graph.steps[key].title.split("] ", 1)[-1] for key in graph.steps if key in wanted]
