"""Entry point for `python -m buildgraph`."""

from buildgraph.cli import main

raise SystemExit(main())
