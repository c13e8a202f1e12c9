"""`run --executor dask` on a real Dask cluster (scheduler + worker processes on 127.0.0.1) and
the suite's real registry: the same digests as the local executor, each step built once, a
killed worker costing only its work, a second run building nothing; bad input refused."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from dask_cluster import DaskCluster
from registry_server import RegistryServer, free_port

from buildgraph.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from monorepo import generate

EPOCH = "1700000000"
SERVICES = 12
SLOW_STEP = "wc -l out/objects.md5 && sleep 4"  # svc05's last RUN: the one a kill interrupts


def monorepo(root: Path, busybox_cache: Path) -> Path:
    """The N=12 monorepo of bench/monorepo.py made reproducible, so that two builds can give
    the same digests: its "linked binary" from /dev/zero, not /dev/urandom, and its archive
    by `cat`, not `tar` (which records the build time as the objects' mtimes)."""
    repo = generate(root, SERVICES)
    for service in repo.services:
        text = service.dockerfile.read_text().replace("/dev/urandom", "/dev/zero")
        archive = f"tar -cf out/lib{service.name}.a obj"
        text = text.replace(archive, f"cat obj/*.o > out/lib{service.name}.a")
        if service.name == "svc05":
            text = text.replace("wc -l out/objects.md5", SLOW_STEP)
        service.dockerfile.write_text(text)
    shutil.copytree(busybox_cache, root / "cache", symlinks=True)
    return repo.buildfile


def digests(cache: Path) -> dict[str, str]:
    """Tag -> manifest digest of every image in a local store."""
    index = json.loads((cache / "index.json").read_text())
    return {
        entry["annotations"]["org.opencontainers.image.ref.name"]: entry["digest"]
        for entry in index["manifests"]
        if "org.opencontainers.image.ref.name" in entry.get("annotations", {})
    }


def remote_args(registry: RegistryServer, repository: str) -> list[str]:
    where = f"{registry.host}/{repository}"
    return ["--cache-to", where, "--cache-from", where, "--insecure-registry", registry.host]


def dask_run(buildfile: Path, cluster: DaskCluster, *extra: str) -> int:
    argv = ["run", "-f", str(buildfile), "--progress", "plain", "--executor", "dask"]
    return main([*argv, "--scheduler", cluster.address, *extra])


def built_keys(cluster: DaskCluster) -> Counter[str]:
    return Counter(e["key"] for e in cluster.events() if e.get("state") == "built")


@pytest.fixture(scope="module")
def local_digests(tmp_path_factory, busybox_cache: Path, monkeypatch_module) -> dict[str, str]:
    buildfile = monorepo(tmp_path_factory.mktemp("local") / "repo", busybox_cache)
    assert main(["run", "-f", str(buildfile), "--progress", "plain"]) == 0
    return digests(buildfile.parent / "cache")


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOURCE_DATE_EPOCH", EPOCH)
        yield patch


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    with DaskCluster(tmp_path / "cluster", workers=3) as started:
        yield started


@pytest.mark.slow
def test_dask_gives_the_local_digests_and_builds_each_step_once(
    tmp_path: Path, busybox_cache: Path, registry, cluster, local_digests, capsys
) -> None:
    buildfile = monorepo(tmp_path / "repo", busybox_cache)
    cache = remote_args(registry, "dask-same")
    assert dask_run(buildfile, cluster, *cache) == 0
    assert digests(buildfile.parent / "cache") == local_digests
    built = built_keys(cluster)
    assert built and max(built.values()) == 1, built.most_common(3)
    workers = {e["worker"] for e in cluster.events() if e.get("state") == "built"}
    assert len(workers) >= 2  # the work was spread, not all on one worker
    captured = capsys.readouterr()
    assert "built on tcp://127.0.0.1:" in captured.err  # plain progress goes to stderr
    (summary,) = [line for line in captured.out.splitlines() if line.startswith("remote cache:")]
    assert int(summary.split(", ")[1].split()[0]) > len(
        built
    )  # workers' exports and ours  # worker events reached the renderer live

    # A second run, from a fresh coordinator cache too: no step is built on any worker.
    assert dask_run(buildfile, cluster, *cache) == 0
    fresh = monorepo(tmp_path / "fresh", busybox_cache)
    assert dask_run(fresh, cluster, *cache) == 0
    assert digests(fresh.parent / "cache") == local_digests
    assert built_keys(cluster) == built
    assert not [e for e in cluster.events() if e.get("state") == "started"][len(built) :]


@pytest.mark.slow
def test_a_worker_killed_mid_run_costs_only_its_work(
    tmp_path: Path, busybox_cache: Path, registry, cluster, local_digests
) -> None:
    buildfile = monorepo(tmp_path / "repo", busybox_cache)
    codes: list[int] = []
    run = threading.Thread(
        target=lambda: codes.append(dask_run(buildfile, cluster, *remote_args(registry, "kill")))
    )
    run.start()
    victim = slow = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and run.is_alive():
        for event in cluster.events():
            if event.get("state") == "started" and "sleep 4" in event.get("title", ""):
                victim, slow = event["worker"], event["key"]
        time.sleep(0.05)
    assert victim is not None, "the slow step never started"
    cluster.kill_worker(_process_of(cluster, victim))  # SIGKILL while it sleeps in its RUN
    run.join(timeout=300)
    assert codes == [0]
    assert digests(buildfile.parent / "cache") == local_digests
    events = cluster.events()
    builders: dict[str, list[str]] = {}
    for event in events:
        if event.get("state") == "built":
            builders.setdefault(event["key"], []).append(event["worker"])
    exported = {(e["key"], e["worker"]) for e in events if e.get("state") == "exported"}
    for key, workers in builders.items():
        # Built once; or twice when the victim had built it but its background export had
        # not ended at the kill (no tag: another worker builds it again).
        lost = workers[0] == victim and (key, victim) not in exported
        assert len(workers) == 1 or (len(workers) == 2 and lost and workers[1] != victim), (
            key,
            workers,
        )
    rebuilt = builders[slow]
    assert len(rebuilt) == 1 and rebuilt[0] != victim  # Dask gave the lost task to another


def _process_of(cluster: DaskCluster, address: str):
    from distributed import Client

    with Client(cluster.address) as client:
        names = {addr: info["name"] for addr, info in client.scheduler_info()["workers"].items()}
    number = int(str(names[address]).removeprefix("worker"))
    return cluster.worker_processes[number]


# -- bad input: one line, before any step runs -------------------------------------------------

TINY = {
    "Buildfile.yaml": "version: 1\ntargets:\n  app: {context: app}\n",
    "app/Dockerfile": "FROM busybox\nRUN echo hello > /hello\nRUN exit 3\n",
}


def tiny(root: Path, busybox_cache: Path, buildfile: str = TINY["Buildfile.yaml"]) -> Path:
    for path, text in {**TINY, "Buildfile.yaml": buildfile}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    shutil.copytree(busybox_cache, root / "cache", symlinks=True)
    return root / "Buildfile.yaml"


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("buildgraph: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_an_unknown_executor_kind_is_refused(tmp_path: Path, busybox_cache: Path, capsys) -> None:
    buildfile = tiny(tmp_path, busybox_cache)
    assert main(["run", "-f", str(buildfile), "--executor", "dusk"]) == 2
    assert "unknown executor kind 'dusk' (did you mean 'dask'?)" in one_error_line(
        capsys.readouterr().err
    )
    in_file = TINY["Buildfile.yaml"] + "executor: {kind: ray, scheduler: tcp://127.0.0.1:1}\n"
    buildfile = tiny(tmp_path / "file", busybox_cache, in_file)
    assert main(["run", "-f", str(buildfile)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Buildfile.yaml:4: unknown executor kind 'ray'" in line


def test_dask_needs_a_remote_cache(tmp_path: Path, busybox_cache: Path, capsys) -> None:
    buildfile = tiny(tmp_path, busybox_cache)
    argv = ["run", "-f", str(buildfile), "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1"]
    assert main(argv) == 2
    assert "needs a remote cache" in one_error_line(capsys.readouterr().err)


def test_an_unreachable_scheduler_is_exit_3(
    tmp_path: Path, busybox_cache: Path, registry, capsys
) -> None:
    buildfile = tiny(tmp_path, busybox_cache)
    address = f"tcp://127.0.0.1:{free_port()}"
    argv = ["run", "-f", str(buildfile), "--executor", "dask", "--scheduler", address]
    assert main([*argv, *remote_args(registry, "unreachable")]) == 3
    assert f"dask scheduler {address} unreachable" in one_error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory) -> Iterator[DaskCluster]:
    with DaskCluster(tmp_path_factory.mktemp("one"), workers=1) as started:
        yield started


def test_a_failing_run_is_exit_1_naming_the_worker(
    tmp_path: Path, busybox_cache: Path, registry, one_worker, capsys
) -> None:
    buildfile = tiny(tmp_path, busybox_cache)
    assert dask_run(buildfile, one_worker, *remote_args(registry, "failing")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "RUN exit 3" in line and "exited with code 3" in line
    assert "app/Dockerfile:3" in line and "(on worker tcp://127.0.0.1:" in line


def test_another_buildgraph_version_on_a_worker_is_refused(one_worker) -> None:
    from distributed import Client

    from buildgraph.errors import InputError
    from buildgraph.executors.dask_executor import check_workers

    with Client(one_worker.address) as client:
        assert check_workers(client, "0.1.0")  # the version installed on both sides
        with pytest.raises(InputError, match=r"runs buildgraph 0\.1\.0, this coordinator 9\.9"):
            check_workers(client, "9.9")


def test_a_worker_without_a_cache_dir_is_refused_before_any_step(
    tmp_path: Path, busybox_cache: Path, registry, capsys
) -> None:
    buildfile = tiny(tmp_path, busybox_cache)
    with DaskCluster(tmp_path / "cluster", workers=1, cache_dirs=False) as cluster:
        assert dask_run(buildfile, cluster, *remote_args(registry, "nocache")) == 2
        assert not cluster.events()  # no step started anywhere
    line = one_error_line(capsys.readouterr().err)
    assert "has no cache dir: set BUILDGRAPH_CACHE_DIR" in line
    assert "STARTED" not in capsys.readouterr().out


def test_the_context_reaches_the_worker_through_the_registry_minus_dockerignore(
    tmp_path: Path, busybox_cache: Path, registry, one_worker
) -> None:
    files = {
        "Buildfile.yaml": "version: 1\ntargets:\n  app: {context: app}\n",
        "app/Dockerfile": "FROM busybox\nCOPY . /app\nRUN test ! -e /app/local.env && "
        "test -x /app/bin/run && test -L /app/bin/link && cat /app/bin/run\n",
        "app/.dockerignore": "local.env\n",
        "app/local.env": "TOKEN=not-for-workers\n",
        "app/bin/run": "#!/bin/sh\necho shipped\n",
    }
    buildfile = tiny(tmp_path, busybox_cache, files["Buildfile.yaml"])
    (tmp_path / "app/Dockerfile").unlink()
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / "app/bin/run").chmod(0o755)
    (tmp_path / "app/bin/link").symlink_to("run")
    assert dask_run(buildfile, one_worker, *remote_args(registry, "context")) == 0
    worker_cache = one_worker.root / "worker0" / "cache" / "contexts"
    (shipped,) = list(worker_cache.iterdir())  # one context, unpacked once, by its digest
    assert sorted(p.name for p in shipped.rglob("*")) == [
        ".dockerignore", "Dockerfile", "bin", "link", "run"
    ]  # fmt: skip


def test_keep_going_builds_what_does_not_need_the_failed_step(
    tmp_path: Path, busybox_cache: Path, registry, one_worker, capsys
) -> None:
    two = "version: 1\ntargets:\n  app: {context: app}\n  ok: {context: ok, tags: [ok]}\n"
    buildfile = tiny(tmp_path, busybox_cache, two)
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok/Dockerfile").write_text("FROM busybox\nRUN echo fine > /fine\n")
    argv = ["--keep-going", *remote_args(registry, "keep-going")]
    assert dask_run(buildfile, one_worker, *argv) == 1
    assert "ok:latest" in digests(tmp_path / "cache")  # built and tagged despite app's failure
    assert "exited with code 3" in one_error_line(capsys.readouterr().err)


# -- a worker that dies after returning a step, while its export still runs --------------------

BIG = {
    "Buildfile.yaml": "version: 1\ntargets:\n  big: {context: big, tags: [big]}\n",
    "big/Dockerfile": "FROM busybox\nRUN head -c 150000000 /dev/urandom > /big\n"
    "RUN test -s /big && echo read > /read\n",
}


def _tag_exists(registry: RegistryServer, repository: str, key: str) -> bool:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{key}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            return True
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise


@pytest.mark.slow
def test_a_worker_killed_before_its_export_ended_gets_its_step_built_elsewhere(
    tmp_path: Path, busybox_cache: Path, registry
) -> None:
    """The worker returns a built step while its export still runs. Killed then, it leaves no
    tag: the coordinator, which counts a step done only once its export is confirmed, sees
    Dask compute the task again on the other worker, and the next step reads that one's
    record (from /dev/urandom: other digests than the lost one's)."""
    from distributed import Client

    buildfile = tiny(tmp_path, busybox_cache, BIG["Buildfile.yaml"])
    (tmp_path / "big").mkdir()
    (tmp_path / "big/Dockerfile").write_text(BIG["big/Dockerfile"])
    with DaskCluster(tmp_path / "cluster", workers=2) as cluster:
        codes: list[int] = []
        argv = remote_args(registry, "lost-export")
        run = threading.Thread(target=lambda: codes.append(dask_run(buildfile, cluster, *argv)))
        run.start()
        victim = big = None
        with Client(cluster.address) as client:
            deadline = time.monotonic() + 120
            while victim is None and time.monotonic() < deadline and run.is_alive():
                events = [message for _, message in client.get_events("buildgraph")]
                started = {e["key"] for e in events if "urandom" in e.get("title", "")}
                for event in events:
                    if event.get("state") == "built" and event["key"] in started:
                        victim, big = event["worker"], event["key"]
                time.sleep(0.01)
        assert victim is not None and big is not None, "the big step was never built"
        time.sleep(0.1)  # the coordinator has its record by now; the export runs on
        process = _process_of(cluster, victim)
        exported_before = _tag_exists(registry, "lost-export", big)
        cluster.kill_worker(process)
        run.join(timeout=300)
        builders = [
            e["worker"] for e in cluster.events() if e.get("key") == big and e["state"] == "built"
        ]
    assert not exported_before, "the export ended before the kill: make the layer bigger"
    assert codes == [0]
    assert len(builders) == 2 and builders[1] != victim  # built again on the other worker
    assert _tag_exists(registry, "lost-export", big)
    assert "big:latest" in digests(tmp_path / "cache")


# -- secrets: read on the workers, never sent through Dask -----------------------------------

SECRET = "w0rker-s3cret-value"
SECRET_BUILD = {
    "Buildfile.yaml": "version: 1\ntargets:\n  app: {context: app, tags: [app]}\n",
    "app/Dockerfile": "FROM busybox\n"
    "RUN --mount=type=secret,id=token,required=true "
    "sha256sum /run/secrets/token | cut -c1-64 > /token.sha\n",
}


def test_a_secret_is_read_on_the_worker_and_never_sent(
    tmp_path: Path, busybox_cache: Path, registry, capsys
) -> None:
    import hashlib
    import subprocess

    secrets = tmp_path / "worker-secrets"
    secrets.mkdir()
    (secrets / "token").write_text(SECRET)
    (secrets / ".hidden").write_text("not a secret id")
    buildfile = tiny(tmp_path / "repo", busybox_cache, SECRET_BUILD["Buildfile.yaml"])
    (buildfile.parent / "app" / "Dockerfile").write_text(SECRET_BUILD["app/Dockerfile"])
    env = {"BUILDGRAPH_SECRETS_DIR": str(secrets)}
    with DaskCluster(tmp_path / "cluster", workers=1, env=env) as cluster:
        assert dask_run(buildfile, cluster, *remote_args(registry, "secret")) == 0
        logs = [path.read_bytes() for path in (tmp_path / "cluster").glob("*.log")]
    image = tmp_path / "image"
    cache = buildfile.parent / "cache"
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{cache}:app:latest", str(image)],
        check=True,
        capture_output=True,
    )
    assert (image / "token.sha").read_text().strip() == hashlib.sha256(SECRET.encode()).hexdigest()
    assert not (image / "run" / "secrets" / "token").exists()
    for place in (cache, tmp_path / "cluster"):  # no layer, entry, event or log holds it
        found = subprocess.run(["grep", "-rl", SECRET, str(place)], capture_output=True, text=True)
        assert found.stdout == "", found.stdout
    assert all(SECRET.encode() not in log for log in logs)
    assert SECRET not in capsys.readouterr().out


def test_a_secret_missing_on_a_worker_is_refused_before_any_step(
    tmp_path: Path, busybox_cache: Path, registry, one_worker, capsys
) -> None:
    secret = tmp_path / "coordinator-token"
    secret.write_text(SECRET)  # the coordinator's own source is not sent to a worker
    target = "{context: app, secrets: {token: " + str(secret) + "}}"
    with_source = f"version: 1\ntargets:\n  app: {target}\n"
    buildfile = tiny(tmp_path, busybox_cache, with_source)
    (buildfile.parent / "app" / "Dockerfile").write_text(SECRET_BUILD["app/Dockerfile"])
    before = len(one_worker.events())
    assert dask_run(buildfile, one_worker, *remote_args(registry, "nosecret")) == 2
    assert len(one_worker.events()) == before  # no step started anywhere
    line = one_error_line(capsys.readouterr().err)
    assert "RUN --mount=type=secret,id=token: dask worker tcp://127.0.0.1:" in line
    assert "has no such secret" in line and "BUILDGRAPH_SECRETS_DIR" in line
    assert "app/Dockerfile:2" in line
