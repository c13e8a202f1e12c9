"""The shared monorepo workload (../shared/bench/make_workload.py) as a tree the benchmarks build.

`make_workload.py generate DIR -n N --registry HOST:PORT` (seed 1) writes a base target and N
services with a Buildfile.yaml; `mutate DIR` changes one source file of the middle service;
`plain DIR --tool docker` prints the CI script of `docker build`s (base, then each service) that
BuildKit runs. The registry named is only a name here: its Dockerfiles say FROM
REGISTRY/busybox:latest and the services FROM REGISTRY/bench/base:latest, which every engine
finds in its own store (imported beforehand, or built by the script), so no registry is asked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAKE_WORKLOAD = REPO.parent / "shared" / "bench" / "make_workload.py"
REGISTRY = "127.0.0.1:5999"  # a name in FROM lines and tags; nothing listens there
SEED = 1


@dataclass(frozen=True, slots=True)
class SharedTree:
    root: Path
    buildfile: Path
    services: tuple[str, ...]  # svc01 .. svcNN
    changed: str  # the service `mutate` changes: the middle one
    tags: tuple[str, ...]  # the images the CI script tags, base first


def generate_shared(root: Path, services: int) -> SharedTree:
    """Write the workload of N services under ROOT (made afresh)."""
    argv = [sys.executable, str(MAKE_WORKLOAD), "generate", str(root), "-n", str(services)]
    argv += ["--seed", str(SEED), "--registry", REGISTRY, "--force"]
    subprocess.run(argv, check=True, capture_output=True)
    meta = json.loads((root / "workload.json").read_text())
    names = tuple(meta["services"])
    tags = (f"{REGISTRY}/bench/base:latest", *(f"{REGISTRY}/bench/{name}:latest" for name in names))
    return SharedTree(root, root / "Buildfile.yaml", names, names[(len(names) - 1) // 2], tags)


def change_one(tree: SharedTree) -> None:
    """`mutate`: one source file of the middle service gets its next revision line."""
    argv = [sys.executable, str(MAKE_WORKLOAD), "mutate", str(tree.root)]
    subprocess.run(argv, check=True, capture_output=True)


def docker_script(tree: SharedTree, docker: str) -> str:
    """The CI script `plain --tool docker` prints: one `docker build` per target, in order."""
    argv = [sys.executable, str(MAKE_WORKLOAD), "plain", str(tree.root), "--tool", "docker"]
    done = subprocess.run([*argv, "--docker", docker], check=True, capture_output=True, text=True)
    return done.stdout
