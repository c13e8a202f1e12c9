"""Only the steps a result needs are read or run: nothing below a cached step, unless that
cached step turns out unusable, and then exactly the inputs it needs are built on demand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_runs import run_json, started, step_keys, write_repo
from registry_server import RegistryServer

from buildgraph.cache.steps import StepIndex
from buildgraph.cli import main
from buildgraph.errors import NotFound
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import parse_reference

BUILDFILE = """version: 1
cache: {{dir: cache{remote}}}
targets:
  app:
    context: app
    tags: ["app:1"]
"""
DOCKERFILE = """FROM busybox
COPY main.txt /app/
RUN cat /app/main.txt > /app/copy.txt
RUN echo done >> /app/copy.txt
"""


def make_repo(root: Path, busybox_cache: Path, remote: str = "") -> Path:
    extra = f', remote: "{remote}", mode: min' if remote else ""
    files = {
        "Buildfile.yaml": BUILDFILE.format(remote=extra),
        "app/Dockerfile": DOCKERFILE,
        "app/main.txt": "v1\n",
    }
    return write_repo(root, files, busybox_cache)


def exported_file(root: Path, tmp_path: Path) -> str:
    out = tmp_path / "rootfs"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["image", "export", "app:1", "-o", f"type=local,dest={out}"]
    assert main([*argv, "--cache-dir", str(root / "cache")]) == 0
    return (out / "app/copy.txt").read_text()


def test_steps_below_a_cached_last_step_are_not_rebuilt(
    busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    repo = make_repo(tmp_path / "repo", busybox_cache)
    assert run_json(repo, capsys)[0] == 0
    keys = step_keys(repo, capsys)
    index = StepIndex(repo / "cache/steps")
    for title, key in keys.items():  # keep the last step only
        if not title.startswith("[stage-0] RUN echo done"):
            index.forget(key)
    capsys.readouterr()
    assert main(["plan", "-f", str(repo / "Buildfile.yaml")]) == 0
    plan = capsys.readouterr().out
    assert "not needed  [stage-0] COPY main.txt /app/  (a later step is cached)" in plan
    assert plan.strip().endswith("0 to build, 3 not needed")
    code, events, _ = run_json(repo, capsys)
    assert code == 0
    assert started(events) == []
    assert exported_file(repo, tmp_path) == "v1\ndone\n"


def test_a_corrupt_last_step_builds_the_inputs_it_needs_on_demand(
    busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    repo = make_repo(tmp_path / "repo", busybox_cache)
    assert run_json(repo, capsys)[0] == 0
    keys = step_keys(repo, capsys)
    index = StepIndex(repo / "cache/steps")
    last = keys["[stage-0] RUN echo done >> /app/copy.txt"]
    index.forget(keys["[stage-0] RUN cat /app/main.txt > /app/copy.txt"])
    index.forget(keys["[stage-0] COPY main.txt /app/"])
    index.path(last).write_text("{not json")
    code, events, _ = run_json(repo, capsys)
    assert code == 0
    # The corrupt entry is rebuilt; the two steps under it were pruned, then demanded.
    assert sorted(started(events)) == [
        "[stage-0] COPY main.txt /app/",
        "[stage-0] RUN cat /app/main.txt > /app/copy.txt",
        "[stage-0] RUN echo done >> /app/copy.txt",
    ]
    assert index.get(last) is not None
    assert exported_file(repo, tmp_path) == "v1\ndone\n"


def test_mode_min_cache_machine_b_builds_nothing(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/needed-min"
    machine_a = make_repo(tmp_path / "a", busybox_cache, remote)
    code, _, _ = run_json(machine_a, capsys)
    assert code == 0
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    code, events, _ = run_json(machine_b, capsys)
    assert code == 0
    # The last step hits: nothing below it is read, or needed.
    assert started(events) == []
    keys = step_keys(machine_b, capsys)
    index = StepIndex(machine_b / "cache/steps")
    assert not index.has(keys["[stage-0] COPY main.txt /app/"])
    assert exported_file(machine_b, tmp_path) == "v1\ndone\n"


def test_mode_min_keeps_each_layer_of_the_image_so_a_new_last_line_reuses_them(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    """As BuildKit's min mode does: an entry for every step that adds one of the image's layers
    (not for FROM or metadata steps), so a changed or added last line builds only itself."""
    remote = f"{registry.host}/cache/needed-min-lines"
    machine_a = make_repo(tmp_path / "a", busybox_cache, remote)
    assert run_json(machine_a, capsys)[0] == 0
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    dockerfile = machine_b / "app/Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + 'ENV STAGE=b\nCMD ["cat", "/app/copy.txt"]\n')
    code, events, _ = run_json(machine_b, capsys)
    assert code == 0
    assert started(events) == ["[stage-0] ENV STAGE=b", '[stage-0] CMD ["cat", "/app/copy.txt"]']
    assert exported_file(machine_b, tmp_path) == "v1\ndone\n"
    # B's own export: the new last step is an entry; the ENV under it adds no layer, nor does
    # FROM (the base image is not the cache's to keep).
    keys = step_keys(machine_b, capsys)
    source = next(key for title, key in keys.items() if title.startswith("FROM "))
    with RegistryClient() as client:
        cache = parse_reference(remote, default_tag=None)
        client.get_manifest(cache.with_tag(keys['[stage-0] CMD ["cat", "/app/copy.txt"]']))
        with pytest.raises(NotFound):
            client.get_manifest(cache.with_tag(keys["[stage-0] ENV STAGE=b"]))
        with pytest.raises(NotFound):
            client.get_manifest(cache.with_tag(source))


def test_a_corrupt_remote_blob_of_the_last_step_builds_its_pruned_inputs(
    fresh_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{fresh_registry.host}/cache/needed-corrupt"
    machine_a = make_repo(tmp_path / "a", busybox_cache, remote)
    assert run_json(machine_a, capsys)[0] == 0
    keys = step_keys(machine_a, capsys)
    record = StepIndex(machine_a / "cache/steps").get(
        keys["[stage-0] RUN echo done >> /app/copy.txt"]
    )
    assert record is not None
    blob = record.layers[-1].descriptor.digest.removeprefix("sha256:")
    stored = fresh_registry.storage / "docker/registry/v2/blobs/sha256" / blob[:2] / blob / "data"
    stored.write_bytes(b"not the layer")
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    code, events, err = run_json(machine_b, capsys)
    assert code == 0
    assert "is unusable" in err
    assert "[stage-0] RUN echo done >> /app/copy.txt" in started(events)
    assert exported_file(machine_b, tmp_path) == "v1\ndone\n"


def test_a_cached_step_whose_layers_are_not_here_is_rebuilt_without_a_remote(
    busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    """A record taken from a remote cache whose layers never came (its image was pushed by
    mount), then a run with no remote cache (`--offline`): the step is built here again."""
    repo = make_repo(tmp_path / "repo", busybox_cache)
    assert run_json(repo, capsys)[0] == 0
    keys = step_keys(repo, capsys)
    index = StepIndex(repo / "cache/steps")
    last = keys["[stage-0] RUN echo done >> /app/copy.txt"]
    record = index.get(last)
    assert record is not None
    top = record.layers[-1].descriptor.digest.removeprefix("sha256:")
    (repo / "cache/blobs/sha256" / top).unlink()
    assert main(["image", "rm", "app:1", "--cache-dir", str(repo / "cache")]) == 0
    code, events, _ = run_json(repo, capsys, "--offline")
    assert code == 0
    assert started(events) == ["[stage-0] RUN echo done >> /app/copy.txt"]
    assert exported_file(repo, tmp_path) == "v1\ndone\n"
