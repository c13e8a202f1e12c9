"""What a run asks the remote cache for, counted in the registry's own access log: the targets'
last steps first (one manifest GET per hit, nothing more), then only what a miss among them may
need; each needed blob once."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_runs import step_keys
from registry_server import RegistryServer, free_port
from remote_repo import make_repo

from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import StepIndex
from buildgraph.cli import main
from buildgraph.errors import NotFound
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import parse_reference
from buildgraph.solver.remote import remote_session


def run(root: Path, capsys) -> None:
    assert main(["run", "-f", str(root / "Buildfile.yaml"), "--progress", "json"]) == 0
    capsys.readouterr()


def machine_b(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys, name: str
) -> tuple[Path, str]:
    """(machine B's repo, the cache repository) after machine A built and exported into it."""
    remote = f"{registry.host}/cache/{name}"
    run(make_repo(tmp_path / "a", busybox_cache, remote), capsys)  # exports every step
    return make_repo(tmp_path / "b", busybox_cache, remote), remote


def looked_up(registry: RegistryServer, since: int) -> list[str]:
    """The keys whose manifests were read by tag after the first SINCE requests."""
    return sorted(
        path.rsplit("/", 1)[1]
        for method, path in registry.requests()[since:]
        if method in ("GET", "HEAD") and "/manifests/" in path and "sha256:" not in path
    )


def test_a_fully_cached_graph_costs_one_lookup_per_target(
    logged_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    repo, remote = machine_b(logged_registry, busybox_cache, tmp_path, capsys, "lookups")
    keys = step_keys(repo, capsys)
    before = len(logged_registry.requests())
    run(repo, capsys)
    last_steps = [keys["[stage-0] RUN echo base > /base.txt"]]
    last_steps.append(keys["[stage-0] RUN cat /base.txt /app/main.txt > /out"])
    assert looked_up(logged_registry, before) == sorted(last_steps)
    # A hit costs that one GET: its manifest carries the config, so the other reads are the
    # layer downloads, and no config blob is read.
    reads = [path for method, path in logged_registry.requests()[before:] if method == "GET"]
    assert len([path for path in reads if "/manifests/" in path]) == len(last_steps)
    with RegistryClient() as client:
        manifests = [client.get_manifest(parse_reference(f"{remote}:{key}")) for key in last_steps]
    configs = {json.loads(manifest.data)["config"]["digest"] for manifest in manifests}
    blobs = {path.rsplit("/", 1)[1] for path in reads if "/blobs/" in path}
    assert blobs and not blobs & configs


def test_a_miss_looks_up_what_it_may_need_and_nothing_below_hits(
    logged_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    repo, _ = machine_b(logged_registry, busybox_cache, tmp_path, capsys, "lookups-miss")
    (repo / "app/main.txt").write_text("v2\n")
    keys = step_keys(repo, capsys)
    before = len(logged_registry.requests())
    run(repo, capsys)
    seen = looked_up(logged_registry, before)
    base_last = keys["[stage-0] RUN echo base > /base.txt"]
    copy = keys["[stage-0] COPY main.txt /app/"]
    app_last = keys["[stage-0] RUN cat /base.txt /app/main.txt > /out"]
    # Round one: both last steps; round two: the changed COPY under the miss. base's last step
    # hit, so nothing below it (its FROM busybox) is looked up.
    assert {base_last, copy, app_last} <= set(seen)
    below_base = {key for title, key in keys.items() if "busybox" in title}
    assert below_base and not below_base & set(seen)
    assert len(seen) == len(set(seen))  # no step is looked up twice


def test_records_that_share_layers_download_each_blob_once(
    logged_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    repo, remote = machine_b(logged_registry, busybox_cache, tmp_path, capsys, "shared-layers")
    key = step_keys(repo, capsys)["[stage-0] RUN cat /base.txt /app/main.txt > /out"]
    store = LocalStore(repo / "cache")
    session = remote_session(
        store,
        RegistryClient,
        source=remote,
        target=None,
        warn=pytest.fail,
        required=True,
        export_only=None,
    )
    assert session is not None
    session.lookup([key])
    record = session.record(key)
    assert record is not None
    missing = record.missing_layers(store)
    assert len(missing) >= 2  # base's layer and app's own
    before = len(logged_registry.requests())
    with ThreadPoolExecutor(max_workers=8) as pool:  # eight consumers need them at once
        list(pool.map(lambda _: session.ensure_layers(record), range(8)))
    session.finish()
    fetched = [path for method, path in logged_registry.requests()[before:] if method == "GET"]
    assert sorted(fetched) == sorted(f"/v2/cache/shared-layers/blobs/{b.digest}" for b in missing)
    assert session.downloaded == sum(blob.size for blob in missing)
    assert record.missing_layers(store) == []


def test_mode_min_pushes_the_layer_of_an_image_step_as_soon_as_it_is_built(
    logged_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    """With cache.mode min only the targets' last steps become entries, but the layers a target's
    image holds are pushed as each of its steps is built: the entry's tail is then short."""
    repo = make_repo(tmp_path / "repo", busybox_cache, "")
    assert main(["run", "-f", str(repo / "Buildfile.yaml"), "--progress", "json"]) == 0
    keys = step_keys(repo, capsys)
    copy = keys["[stage-0] COPY main.txt /app/"]
    record = StepIndex(repo / "cache/steps").get(copy)
    assert record is not None
    remote = f"{logged_registry.host}/cache/early"
    session = remote_session(
        LocalStore(repo / "cache"),
        RegistryClient,
        source=None,
        target=remote,
        warn=pytest.fail,
        required=True,
        export_only={keys["[stage-0] RUN cat /base.txt /app/main.txt > /out"]},
        layers_early={copy},
    )
    assert session is not None
    session.check_export_access()
    session.export(copy, record)
    session.finish()
    assert session.exported == []  # no entry for it
    with RegistryClient() as client:
        cache = parse_reference(remote, default_tag=None)
        assert client.blob_exists(cache, record.layers[-1].descriptor.digest)
        with pytest.raises(NotFound):
            client.get_manifest(cache.with_tag(copy))


@pytest.mark.parametrize("export", [False, True], ids=["read only", "read and write"])
def test_a_run_with_every_step_local_makes_no_registry_client(
    busybox_cache: Path, tmp_path: Path, capsys, export: bool
) -> None:
    """Nothing to look up and nothing built to export: no client is made, requests is never
    imported (~0.1 s), and the registry (unreachable here) is not even asked for push access."""
    nobody = f"127.0.0.1:{free_port()}/cache/none"  # would fail, were it asked anything
    repo = make_repo(tmp_path / "repo", busybox_cache, nobody)
    buildfile = str(repo / "Buildfile.yaml")
    no_remote = ["--cache-from", "", "--cache-to", ""]
    assert main(["run", "-f", buildfile, "--progress", "json", *no_remote]) == 0  # all local now
    capsys.readouterr()
    argv = ["run", "-f", buildfile, "--progress", "plain"]  # cache.remote: `nobody`
    if not export:
        argv += ["--cache-to", ""]
    script = (
        "import sys; from buildgraph.cli import main; "
        f"code = main({argv!r}); print('requests' in sys.modules); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"
    assert "warning" not in done.stderr
