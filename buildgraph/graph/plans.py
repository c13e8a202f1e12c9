"""What lowering produces and takes: pinned base images, stage plans, named contexts, plans."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from buildgraph.errors import Location
from buildgraph.graph.steps import Step
from buildgraph.image.config import ImageConfig, RuntimeConfig
from buildgraph.image.oci import Platform


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
