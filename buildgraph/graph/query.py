"""Questions about a compiled step graph."""

from __future__ import annotations

import networkx as nx

from buildgraph.graph.steps import SourceStep


def chain(graph: nx.DiGraph, key: str) -> list[str]:
    """The target's own line of steps, from its base up (COPY --from sources not included)."""
    keys = [key]
    while not isinstance(step := graph.nodes[keys[-1]]["step"], SourceStep):
        keys.append(step.parent)
    return keys[::-1]
