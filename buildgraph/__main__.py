"""Entry point for `python -m buildgraph`."""

from buildgraph.cli import console

console()
