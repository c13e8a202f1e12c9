"""The executor interface: what the scheduler asks of whatever carries out a plan's steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from buildgraph.cache.steps import StepRecord
from buildgraph.graph.model import Target
from buildgraph.graph.steps import Step
from buildgraph.solver.plan import Plan


class Unusable(Exception):
    """A cache entry the plan counted on cannot be used (corrupt, a blob failing its digest,
    layers gone). The scheduler then asks `replan` and builds the step instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Executor(Protocol):
    """Carries out single plan nodes; never decides what to do (the plan did).

    Contract:
    - Every method may be called from several scheduler threads at once, for different keys;
      each key is given to at most one method at a time, and to `build` at most once per run.
    - A step's result is a `StepRecord`: its image's layer descriptors and history. The layers
      need not be on this machine: a record from the remote cache (`use_remote`), or one built
      by a remote worker and pushed to the shared remote cache, names blobs that only the
      registry holds. Whoever reads files (a RUN, a COPY, a local tag) fetches what it lacks.
    - `use_local`, `use_remote` and `fetch` raise `Unusable` when the entry cannot be used
      (after any warning of their own); nothing else they raise is expected.
    - `build` raises a `BuildgraphError` (or `OSError` from the disk) when the step fails;
      the scheduler records it as that step's failure and skips what needs the step. It
      stores the result where `use_local` finds it and may export it to the remote cache.
    - Output of a running step goes to the executor's own event sink as `LogEvent`s; step
      states are the scheduler's to emit.
    - `export` makes a target's image from its last step's record (tag, outputs, push); its
      return value is kept in `Outcome.exported` under the target's name.
    - `cancel` stops running steps (Ctrl-C); they raise and leave nothing half-written.

    A make-like task (a command run in a built image, its log and outputs restored from the
    cache) is one more kind of plan node for `build`, keyed and cached like a step.
    """

    def start(self, plan: Plan) -> None:
        """Called once before any step: e.g. read ahead the remote records the plan uses."""
        ...

    def use_local(self, key: str) -> StepRecord: ...

    def use_remote(self, key: str) -> StepRecord:
        """The remote record of `key`, its layers left in the remote cache."""
        ...

    def fetch(self, key: str) -> StepRecord:
        """The remote record of `key` with its layers brought into the local cache."""
        ...

    def before_build(self) -> None:
        """Called once before the first `build`, from the scheduler's thread: whatever would
        make every build pointless (refused push credentials) raises here."""
        ...

    def build(self, key: str, step: Step, inputs: Mapping[str, StepRecord]) -> StepRecord: ...

    def export(self, target: Target, record: StepRecord) -> object: ...

    def cancel(self) -> None: ...
