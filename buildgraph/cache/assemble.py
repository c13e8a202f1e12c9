"""Assemble a stage's final image (config + manifest) from its plan and its last step's record."""

from __future__ import annotations

import time
from typing import Protocol

from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import StepRecord
from buildgraph.image.config import ImageConfig, RuntimeConfig
from buildgraph.image.oci import Descriptor, Platform


class ImagePlan(Protocol):
    """What assembling reads of a lowered stage (graph.lower.StagePlan); a protocol, so the
    store does not depend on the graph layer above it."""

    @property
    def platform(self) -> Platform: ...
    @property
    def config(self) -> RuntimeConfig: ...
    @property
    def author(self) -> str: ...


def assemble_image(
    store: LocalStore, plan: ImagePlan, record: StepRecord, *, epoch: int | None
) -> Descriptor:
    """Store the image's config and manifest; equal inputs give the same digest, so a fully
    cached rebuild reproduces the image (its time is the newest history entry's)."""
    created = _created(record, epoch)
    config = ImageConfig(
        platform=plan.platform,
        config=plan.config,
        diff_ids=tuple(layer.diff_id for layer in record.layers),
        history=record.history,
        created=created,
        author=plan.author,
    )
    return store.put_image(config, tuple(layer.descriptor for layer in record.layers))


def _created(record: StepRecord, epoch: int | None) -> str:
    if epoch is not None:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return max((entry.created for entry in record.history), default="")
