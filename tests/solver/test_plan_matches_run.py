"""`buildgraph plan` predicts `buildgraph run`, step by step: real caches (local, and the test
registry as the remote one), graphs in mixed states: changed sources, missing layers, corrupt
records, entries only in the remote cache."""

from __future__ import annotations

import re
from pathlib import Path

from cli_runs import run_json, write_repo
from lowered import SERVICE
from registry_server import RegistryServer

from buildgraph.cache.steps import StepIndex
from buildgraph.cli import main

PLAN_LINE = re.compile(r"^  ([0-9a-f]{12})  (cached|remote|to build|not needed)\s+(.*?)(  \(.*)?$")
RUN_STATES = {"started": "to build", "cached": "cached", "remote": "remote"}


def make_monorepo(root: Path, busybox_cache: Path, services: int, remote: str = "") -> Path:
    """SERVICES services, each a builder stage and a runtime stage that copies from it."""
    cache = f'{{dir: cache, remote: "{remote}"}}' if remote else "{dir: cache}"
    lines = ["version: 1", f"cache: {cache}", "targets:"]
    files = {}
    for n in range(1, services + 1):
        name = f"svc{n:02}"
        lines += [f"  {name}:", f"    context: services/{name}", f'    tags: ["{name}:1"]']
        files[f"services/{name}/Dockerfile"] = SERVICE
        files[f"services/{name}/main.txt"] = f"{name} v1\n"
    files["Buildfile.yaml"] = "\n".join(lines) + "\n"
    return write_repo(root, files, busybox_cache)


def planned(root: Path, capsys, *argv: str) -> dict[str, tuple[str, str]]:
    """Short key -> (state, title) of every step `buildgraph plan` lists."""
    capsys.readouterr()
    assert main(["plan", "-f", str(root / "Buildfile.yaml"), *argv]) == 0
    steps = {}
    for line in capsys.readouterr().out.splitlines():
        if match := PLAN_LINE.match(line):
            steps[match[1]] = (match[2], match[3])
    return steps


def ran(events: list[dict]) -> dict[str, str]:
    """Short key -> what `run` did with the step (its last state among started/cached/remote)."""
    did: dict[str, str] = {}
    for event in events:
        if "key" in event and event["state"] in RUN_STATES:
            did.setdefault(event["key"][:12], RUN_STATES[event["state"]])
    return did


def assert_run_does_what_plan_said(root: Path, capsys, targets: list[str], *argv: str) -> dict:
    """Plan, run, compare every step the plan lists; returns the plan."""
    plan_argv = [arg for arg in argv if not arg.startswith("--cache-to")]
    prediction = planned(root, capsys, *targets, *plan_argv)
    code, events, err = run_json(root, capsys, *targets, *argv)
    assert code == 0, err
    did = ran(events)
    expected = {key: state for key, (state, _) in prediction.items() if state != "not needed"}
    assert did == expected
    return prediction


def to_build(prediction: dict[str, tuple[str, str]]) -> list[str]:
    titles = [title for state, title in prediction.values() if state == "to build"]
    return sorted(title.split("] ", 1)[-1] for title in titles)


def test_a_changed_source_of_one_of_twelve_services(
    busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    """Issue 13: after a change to one source file of svc03, `plan svc03` lists exactly what
    `run svc03` builds, its builder steps included."""
    repo = make_monorepo(tmp_path / "repo", busybox_cache, 12)
    assert_run_does_what_plan_said(repo, capsys, [])
    (repo / "services/svc03/main.txt").write_text("svc03 v2\n")
    prediction = assert_run_does_what_plan_said(repo, capsys, ["svc03"])
    assert to_build(prediction) == [
        'CMD ["cat", "/app/copy.txt"]',
        "COPY --from=builder /out.txt /app/out.txt",
        "COPY main.txt ./",
        "ENV MODE=prod",
        "RUN cat /app/out.txt > /app/copy.txt",
        "RUN cat main.txt > /out.txt",
        "RUN echo built >> /out.txt",
    ]


def by_target(root: Path, capsys) -> dict[str, dict[str, str]]:
    """Target -> title (stage prefix dropped) -> full key, from `buildgraph plan`'s listing."""
    capsys.readouterr()
    assert main(["plan", "-f", str(root / "Buildfile.yaml")]) == 0
    targets: dict[str, dict[str, str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            steps = targets.setdefault(line[:-1], {})
        elif match := PLAN_LINE.match(line):
            (path,) = (root / "cache/steps").glob(f"*/{match[1]}*.json")
            steps[match[3].split("] ", 1)[-1]] = path.stem
    return targets


def test_missing_layers_and_corrupt_records_without_a_remote_cache(
    busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    repo = make_monorepo(tmp_path / "repo", busybox_cache, 3)
    assert_run_does_what_plan_said(repo, capsys, [])
    keys = by_target(repo, capsys)
    index = StepIndex(repo / "cache/steps")
    # svc01: the runtime RUN lost its layer (as after a push by mount), so did each record
    # above it; svc02: its last record is corrupt; svc03: a record under its cached last step
    # is gone (not needed: nothing is built below a cached step).
    lost = keys["svc01"]["RUN cat /app/out.txt > /app/copy.txt"]
    record = index.get(lost)
    assert record is not None
    for name in ("svc01", "svc02", "svc03"):  # the images no longer hold the layer either
        assert main(["image", "rm", f"{name}:1", "--cache-dir", str(repo / "cache")]) == 0
    (repo / "cache/blobs/sha256" / record.layers[-1].descriptor.digest[7:]).unlink()
    corrupt = keys["svc02"]['CMD ["cat", "/app/copy.txt"]']
    index.path(corrupt).write_text("{not json")
    gone = keys["svc03"]["ENV MODE=prod"]
    index.forget(gone)
    prediction = assert_run_does_what_plan_said(repo, capsys, [])
    assert prediction[lost[:12]][0] == "to build"
    assert prediction[keys["svc01"]['CMD ["cat", "/app/copy.txt"]'][:12]][0] == "to build"
    assert prediction[corrupt[:12]][0] == "to build"
    assert prediction[gone[:12]][0] == "not needed"
    again = assert_run_does_what_plan_said(repo, capsys, [])  # and then nothing is left to do
    assert to_build(again) == []


def test_entries_in_the_remote_cache_local_ones_and_a_change(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/plan-matches-run"
    machine_a = make_monorepo(tmp_path / "a", busybox_cache, 3, remote)
    assert_run_does_what_plan_said(machine_a, capsys, [])
    machine_b = make_monorepo(tmp_path / "b", busybox_cache, 3, remote)
    # B built svc01 on its own, offline; then svc03's source changed.
    assert run_json(machine_b, capsys, "svc01", "--offline")[0] == 0
    (machine_b / "services/svc03/main.txt").write_text("svc03 v2\n")
    prediction = assert_run_does_what_plan_said(machine_b, capsys, [])
    states = [state for state, _ in prediction.values()]
    assert {"cached", "remote", "to build", "not needed"} <= set(states)
    assert len(to_build(prediction)) == 7
