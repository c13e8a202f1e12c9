"""buildgraph: build container images the way make builds files."""

__version__ = "0.1.0"
