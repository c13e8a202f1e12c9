"""The build graph as a typed value: steps by key, their input edges, and the targets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from buildgraph.graph.steps import SourceStep, Step, inputs_of


@dataclass(frozen=True, slots=True)
class Target:
    """A result of the graph: the step whose record becomes an image, and what is done with it.
    `mounts_from_cache`: its only use is a push that can mount the layers from the remote
    cache's registry (no local tag, no output), so its files need not come here."""

    name: str
    key: str  # the target's last step
    mounts_from_cache: bool = False


@dataclass(frozen=True, slots=True)
class BuildGraph:
    """Every step once (equal keys from different targets are one step), in an order where a
    step's inputs come before it, with the targets that read them. Built by `build_graph`."""

    steps: Mapping[str, Step]  # key -> step, inputs first
    inputs: Mapping[str, tuple[str, ...]]  # key -> the keys it needs finished first
    consumers: Mapping[str, tuple[str, ...]]  # key -> the keys that read it
    targets: tuple[Target, ...] = ()
    _position: Mapping[str, int] = field(default_factory=dict, repr=False)  # key -> its index

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[str]:
        return iter(self.steps)

    def __contains__(self, key: object) -> bool:
        return key in self.steps

    @property
    def edges(self) -> Iterator[tuple[str, str]]:
        for key, parents in self.inputs.items():
            for parent in parents:
                yield parent, key

    def results(self) -> tuple[str, ...]:
        """Keys something reads from outside the graph: the targets' last steps, and steps no
        other step reads (the last step of a `build` without targets)."""
        sinks = (key for key in self.steps if not self.consumers[key])
        return tuple(dict.fromkeys((*(t.key for t in self.targets), *sinks)))

    def ancestors(self, key: str) -> set[str]:
        """Every step `key` needs, directly or not (itself excluded)."""
        seen: set[str] = set()
        stack = list(self.inputs[key])
        while stack:
            parent = stack.pop()
            if parent not in seen:
                seen.add(parent)
                stack.extend(self.inputs[parent])
        return seen

    def needed_by(self, key: str) -> tuple[str, ...]:
        """`key` and every step it needs, inputs first."""
        wanted = self.ancestors(key) | {key}
        return tuple(sorted(wanted, key=self._position.__getitem__))

    def chain(self, key: str) -> list[str]:
        """The line of steps ending at `key`, base first (COPY --from sources not included)."""
        keys = [key]
        while not isinstance(step := self.steps[keys[-1]], SourceStep):
            keys.append(step.parent)
        return keys[::-1]

    def with_targets(self, targets: Iterable[Target]) -> BuildGraph:
        """The same steps, read by these targets."""
        return BuildGraph(self.steps, self.inputs, self.consumers, tuple(targets), self._position)

    def title(self, key: str) -> str:
        return self.steps[key].title or key[:12]


def build_graph(plans: Iterable[Mapping[str, Step]], targets: Iterable[Target] = ()) -> BuildGraph:
    """One graph of every plan's steps (each `key -> step`, inputs first); equal keys from
    different plans are one step."""
    steps: dict[str, Step] = {}
    for plan in plans:
        for key, step in plan.items():
            steps.setdefault(key, step)  # an equal step from another target is the same step
    steps = _inputs_first(steps)
    inputs = {key: inputs_of(step) for key, step in steps.items()}
    consumers: dict[str, list[str]] = {key: [] for key in steps}
    for key, parents in inputs.items():
        for parent in parents:
            consumers[parent].append(key)
    return BuildGraph(
        MappingProxyType(steps),
        MappingProxyType(inputs),
        MappingProxyType({key: tuple(readers) for key, readers in consumers.items()}),
        _position=MappingProxyType({key: index for index, key in enumerate(steps)}),
    ).with_targets(targets)


def _inputs_first(steps: dict[str, Step]) -> dict[str, Step]:
    """The steps reordered so that each comes after its inputs (a plan lowered earlier may
    read a later one's steps); otherwise in the order given."""
    ordered: dict[str, Step] = {}
    for key in steps:
        stack = [key]
        while stack:
            top = stack[-1]
            if top in ordered:
                stack.pop()
                continue
            waiting = [p for p in inputs_of(steps[top]) if p not in ordered and p in steps]
            if waiting:
                stack.extend(waiting)
            else:
                ordered[top] = steps[top]
                stack.pop()
    return ordered
