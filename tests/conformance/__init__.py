"""Conformance corpus: Dockerfiles that buildgraph must build exactly like buildah does."""
