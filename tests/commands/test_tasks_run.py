"""`buildgraph run TASK`: tasks run in busybox images in the real sandbox, cached, replayed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_runs import write_repo
from registry_server import RegistryServer

from buildgraph.cli import main

BUILDFILE = """version: 1
cache: {dir: cache}
targets:
  app:
    context: app
tasks:
  test-a:
    image: app
    run: >-
      cat /proc/sys/kernel/random/uuid > /out/stamp; cat /src/a/*.txt /etc/app.txt;
      echo extra > /out/extra.txt; echo leak > /etc/leak
    inputs: ["a/**"]
    outputs: ["/out/stamp"]
  test-b:
    image: app
    run: ["/bin/sh", "-c", "cat /proc/sys/kernel/random/uuid; ls /src/b > /out/listing"]
    inputs: ["b"]
    outputs: ["listing"]
  report:
    image: app:build
    run: "cat /deps/test-b/listing /stage.txt > /out/report.txt"
    outputs: ["/out/report.txt"]
    depends_on: [test-b]
"""
DOCKERFILE = (
    "FROM busybox AS build\nRUN echo build-stage > /stage.txt\n"
    "FROM busybox\nRUN echo app v1 > /etc/app.txt\n"
)


@pytest.fixture
def repo(tmp_path: Path, busybox_cache: Path) -> Path:
    files = {
        "Buildfile.yaml": BUILDFILE,
        "app/Dockerfile": DOCKERFILE,
        "a/one.txt": "input one\n",
        "b/two.txt": "input two\n",
    }
    return write_repo(tmp_path / "repo", files, busybox_cache)


def run(root: Path, *argv: str) -> int:
    return main(["run", "-f", str(root / "Buildfile.yaml"), "--progress", "json", *argv])


def task_events(out: str) -> list[dict]:
    found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [e for e in found if e.get("key", "").startswith("task:") or "task " in e["instruction"]]


def states(out: str) -> dict[str, str]:
    """task name -> its last state (started, done, cached, remote, failed, skipped)."""
    return {
        e["key"].removeprefix("task:"): e["state"] for e in task_events(out) if e["state"] != "log"
    }


def logs(out: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for e in task_events(out):
        if e["state"] == "log":
            found[e["instruction"]] = found.get(e["instruction"], "") + e["output"]
    return found


def test_a_task_runs_then_is_replayed_from_the_local_cache(repo: Path, capsys) -> None:
    assert run(repo, "test-a") == 0
    out = capsys.readouterr().out
    assert states(out) == {"test-a": "done"}
    stamp = (repo / "out/test-a/stamp").read_text()
    log = logs(out)["task test-a"]
    assert "input one" in log and "app v1" in log
    assert [p.name for p in (repo / "out/test-a").iterdir()] == ["stamp"]  # extra.txt not copied
    shutil.rmtree(repo / "out")

    assert run(repo, "test-a") == 0
    out = capsys.readouterr().out
    # Not run: the uuid it printed and wrote is the first run's, and no "started" event came.
    assert states(out) == {"test-a": "cached"}
    assert "started" not in [e["state"] for e in task_events(out)]
    assert logs(out) == {"task test-a (cached)": log}
    assert (repo / "out/test-a/stamp").read_text() == stamp
    assert not list((repo / "cache").rglob("leak"))  # nothing the command wrote is kept


def test_a_changed_input_or_image_reruns_exactly_the_affected_tasks(repo: Path, capsys) -> None:
    assert run(repo, "test-a", "test-b") == 0
    assert states(capsys.readouterr().out) == {"test-a": "done", "test-b": "done"}
    (repo / "a/one.txt").write_text("input one, changed\n")
    assert run(repo, "test-a", "test-b") == 0
    assert states(capsys.readouterr().out) == {"test-a": "done", "test-b": "cached"}
    (repo / "b/new.txt").write_text("new\n")
    assert run(repo, "report") == 0  # test-b's outputs changed: report runs too
    assert states(capsys.readouterr().out) == {"test-b": "done", "report": "done"}
    assert (repo / "out/report/report.txt").read_text() == "new.txt\ntwo.txt\nbuild-stage\n"
    (repo / "app/Dockerfile").write_text(DOCKERFILE.replace("app v1", "app v2"))
    assert run(repo, "test-a", "report") == 0  # the final image changed, not the build stage
    expected = {"test-a": "done", "test-b": "done", "report": "cached"}
    assert states(capsys.readouterr().out) == expected


def test_a_failing_task_exits_1_with_its_last_lines_and_runs_again(repo: Path, capsys) -> None:
    text = BUILDFILE.replace("echo leak > /etc/leak", "echo it broke; exit 3")
    (repo / "Buildfile.yaml").write_text(text)
    assert run(repo, "test-a") == 1
    captured = capsys.readouterr()
    assert states(captured.out) == {"test-a": "failed"}
    assert "task test-a: command exited with code 3: " in captured.err
    assert "it broke" in captured.err.splitlines()[-1]
    assert run(repo, "test-a") == 1
    assert [e["state"] for e in task_events(capsys.readouterr().out) if e["state"] != "log"] == [
        "started",
        "failed",
    ]


def test_an_output_never_produced_fails_the_task(repo: Path, capsys) -> None:
    (repo / "Buildfile.yaml").write_text(BUILDFILE.replace('["listing"]', '["listing", "nope"]'))
    assert run(repo, "test-b") == 1
    assert "declared output /out/nope was not produced by the command" in capsys.readouterr().err


def test_an_output_that_is_a_link_out_of_the_output_dir_is_refused(repo: Path, capsys) -> None:
    text = BUILDFILE.replace("ls /src/b > /out/listing", "ln -s /etc/passwd /out/listing")
    (repo / "Buildfile.yaml").write_text(text)
    assert run(repo, "test-b") == 1
    assert "/out/listing: listing is a symbolic link" in capsys.readouterr().err
    assert not (repo / "out/test-b/listing").exists()


def test_a_declared_output_escaping_the_output_dir_is_bad_input(repo: Path, capsys) -> None:
    (repo / "Buildfile.yaml").write_text(BUILDFILE.replace('["listing"]', '["../etc/passwd"]'))
    assert run(repo, "test-b") == 2
    err = capsys.readouterr().err
    assert f"{repo / 'Buildfile.yaml'}:18: task test-b: output '../etc/passwd' escapes" in err


def test_a_task_is_replayed_from_the_remote_cache_on_a_fresh_machine(
    repo: Path, registry: RegistryServer, busybox_cache: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/tasks-remote"
    text = BUILDFILE.replace("cache: {dir: cache}", f"cache: {{dir: cache, remote: {remote}}}")
    (repo / "Buildfile.yaml").write_text(text + f"insecure_registries: [{registry.host}]\n")
    assert run(repo, "test-a") == 0
    first = capsys.readouterr().out
    stamp = (repo / "out/test-a/stamp").read_text()
    shutil.rmtree(repo / "cache")
    shutil.rmtree(repo / "out")
    shutil.copytree(busybox_cache, repo / "cache", symlinks=True)
    assert run(repo, "test-a") == 0
    out = capsys.readouterr().out
    assert states(out) == {"test-a": "remote"}
    assert logs(out) == {"task test-a (cached)": logs(first)["task test-a"]}
    assert (repo / "out/test-a/stamp").read_text() == stamp
    assert run(repo, "test-a") == 0  # and now from the local cache
    assert states(capsys.readouterr().out) == {"test-a": "cached"}


def test_the_chroot_isolation_runs_tasks_in_a_root_thrown_away_after(repo: Path, capsys) -> None:
    text = BUILDFILE.replace('inputs: ["a/**"]', 'inputs: ["a/**"]\n    network: host')
    (repo / "Buildfile.yaml").write_text(text)
    assert run(repo, "test-a", "--isolation", "chroot") == 0
    out = capsys.readouterr().out
    assert states(out) == {"test-a": "done"}
    assert "input one" in logs(out)["task test-a"]
    assert [p.name for p in (repo / "out/test-a").iterdir()] == ["stamp"]
    assert not list((repo / "cache").rglob("leak"))  # the task's root is gone, not kept idle
    assert run(repo, "test-b", "--isolation", "chroot") == 1  # network: none cannot be had
    assert "network: none needs a network namespace" in capsys.readouterr().err


def test_plan_lists_each_task_with_its_action_and_why(repo: Path, capsys) -> None:
    plan = ["plan", "-f", str(repo / "Buildfile.yaml"), "test-a", "report"]
    assert main(plan) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("run" in line and "task test-a  (never run here)" in line for line in lines)
    assert any("task report  (after task test-b: its outputs" in line for line in lines)
    assert run(repo, "test-a", "report") == 0
    capsys.readouterr()
    (repo / "a/one.txt").write_text("changed\n")
    assert main(plan) == 0
    out = capsys.readouterr().out
    assert "task test-a  (input a/one.txt changed)" in out
    assert [line.split()[1:3] for line in out.splitlines() if "task report" in line] == [
        ["replay", "local"]
    ]
    assert out.splitlines()[-1] == "3 tasks: 2 to replay, 1 to run"


def test_run_without_names_runs_the_tasks_of_the_default_group(repo: Path, capsys) -> None:
    group = "  other:\n    context: app\n    target: build\ngroups: {default: [other, report]}\n"
    (repo / "Buildfile.yaml").write_text(BUILDFILE.replace("tasks:\n", group + "tasks:\n", 1))
    assert run(repo) == 0
    out = capsys.readouterr().out
    assert states(out) == {"test-b": "done", "report": "done"}
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    exported = [event["export"] for event in events if "export" in event]
    assert "other" in exported  # the group's target is built as well as its task
    assert (repo / "out/report/report.txt").read_text().endswith("build-stage\n")


def test_an_unknown_stage_is_bad_input_naming_the_task_line(repo: Path, capsys) -> None:
    (repo / "Buildfile.yaml").write_text(BUILDFILE.replace("image: app:build", "image: app:biuld"))
    assert run(repo, "report") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"buildgraph: error: {repo / 'Buildfile.yaml'}:19: task report: ")
    assert "no stage 'biuld'" in err and len(err.splitlines()) == 1


def test_an_input_glob_matching_nothing_is_a_warning(repo: Path, capsys) -> None:
    (repo / "Buildfile.yaml").write_text(BUILDFILE.replace('["a/**"]', '["a/**", "nothere/*"]'))
    assert run(repo, "test-a") == 0
    err = capsys.readouterr().err
    where = f"{repo / 'Buildfile.yaml'}:12"
    assert f"buildgraph: warning: {where}: task test-a: input 'nothere/*' matches no file" in err


def test_warm_downloads_task_results_for_an_offline_run(
    repo: Path, registry: RegistryServer, busybox_cache: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/tasks-warm"
    text = BUILDFILE.replace("cache: {dir: cache}", f"cache: {{dir: cache, remote: {remote}}}")
    (repo / "Buildfile.yaml").write_text(text + f"insecure_registries: [{registry.host}]\n")
    assert run(repo, "test-a", "report") == 0
    stamp = (repo / "out/test-a/stamp").read_text()
    shutil.rmtree(repo / "cache")
    shutil.copytree(busybox_cache, repo / "cache", symlinks=True)
    capsys.readouterr()
    warm = ["warm", "-f", str(repo / "Buildfile.yaml"), "--progress", "plain", "test-a", "report"]
    assert main(warm) == 0
    assert (
        "tasks: 3 downloaded, 0 already here, 0 not in the remote cache" in capsys.readouterr().err
    )
    assert run(repo, "--offline", "test-a", "report") == 0
    assert states(capsys.readouterr().out) == {
        "test-a": "cached",
        "test-b": "cached",
        "report": "cached",
    }
    assert (repo / "out/test-a/stamp").read_text() == stamp


def test_a_task_that_turns_the_output_dir_into_a_link_is_refused(repo: Path, capsys) -> None:
    # Under chroot /out is a dir of the task's root, which the command can replace: a link to
    # /etc there must not make buildgraph copy the host's /etc/hostname.
    text = BUILDFILE.replace("ls /src/b > /out/listing", "rm -rf /out && ln -s /etc /out")
    text = text.replace('outputs: ["listing"]', 'outputs: ["hostname"]\n    network: host')
    (repo / "Buildfile.yaml").write_text(text)
    assert run(repo, "test-b", "--isolation", "chroot") == 1
    assert "the output dir /out was replaced by a symbolic link" in capsys.readouterr().err
    assert not (repo / "out/test-b/hostname").exists()


@pytest.mark.parametrize("fmt", ["text", "dot", "json"])
def test_graph_draws_tasks_after_their_images(repo: Path, capsys, fmt: str) -> None:
    argv = ["graph", "-f", str(repo / "Buildfile.yaml"), "--format", fmt, "report"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        doc = json.loads(out)
        tasks = [node["key"] for node in doc["nodes"] if "task" in node]
        assert tasks == ["task:test-b", "task:report"]
        assert ["task:test-b", "task:report"] in doc["edges"]
        keys = {node["key"] for node in doc["nodes"]}
        assert all(edge[0] in keys for edge in doc["edges"])
    elif fmt == "dot":
        assert out.rstrip().endswith("}") and '"task:test-b" -> "task:report";' in out
    else:
        (line,) = [line for line in out.splitlines() if line.startswith("task:report")]
        assert line.endswith(", task:test-b")


def test_a_corrupt_local_task_entry_is_a_cache_error(repo: Path, capsys) -> None:
    assert run(repo, "test-b") == 0
    (log,) = (repo / "cache/tasks").glob("??/*/log")
    log.write_bytes(b"not what ran\n")
    assert run(repo, "test-b") == 4  # errors.CacheError: the cache's own exit code
    err = capsys.readouterr().err
    assert f"{log.parent / 'result.json'}: corrupt task entry: the log does not match" in err


def test_a_task_runs_as_its_user_in_its_workdir_with_its_env(repo: Path) -> None:
    task = (
        '  who:\n    image: app\n    user: "1000:1000"\n    workdir: /tmp\n'
        "    env: {GREETING: hello}\n"
        '    run: "id -u > /out/who && pwd >> /out/who && echo $$GREETING >> /out/who"\n'
        "    outputs: [/out/who]\n"
    )
    (repo / "Buildfile.yaml").write_text(BUILDFILE + task)
    assert run(repo, "who") == 0
    assert (repo / "out/who/who").read_text() == "1000\n/tmp\nhello\n"


BROKEN_IMAGE = "  broken:\n    context: broken\ntasks:\n"  # a target whose RUN fails
BROKEN_TASKS = """  in-broken:
    image: broken
    run: "echo never > /out/x"
    outputs: [/out/x]
  after-broken:
    image: app
    run: "cat /deps/in-broken/x"
    depends_on: [in-broken]
"""


def test_keep_going_runs_the_tasks_whose_images_built(repo: Path, capsys) -> None:
    (repo / "Buildfile.yaml").write_text(
        BUILDFILE.replace("tasks:\n", BROKEN_IMAGE, 1) + BROKEN_TASKS
    )
    (repo / "broken").mkdir()
    (repo / "broken/Dockerfile").write_text("FROM busybox\nRUN echo broken; exit 5\n")
    names = ("test-a", "in-broken", "after-broken")
    assert run(repo, *names) == 1  # without --keep-going no task runs once an image failed
    assert states(capsys.readouterr().out) == {}
    assert not (repo / "out").exists()

    assert run(repo, "--keep-going", *names) == 1  # the image's failure is still exit 1
    out, err = capsys.readouterr()
    assert states(out) == {"test-a": "done", "in-broken": "skipped", "after-broken": "skipped"}
    reasons = {e["key"]: e.get("reason") for e in task_events(out) if e["state"] == "skipped"}
    assert reasons == {
        "task:in-broken": "its image broken was not built",
        "task:after-broken": "task in-broken it depends on was skipped",
    }
    assert (repo / "out/test-a/stamp").is_file()
    summary = [line.split(None, 3) for line in err.splitlines() if line.startswith("task ")]
    assert summary == [
        ["task", "after-broken", "skipped", "(task in-broken it depends on was skipped)"],
        ["task", "in-broken", "skipped", "(its image broken was not built)"],
        ["task", "test-a", "ran", summary[2][3]],
    ]
    assert "exited with code 5" in err.splitlines()[-1]


def test_the_tty_progress_prints_a_replayed_tasks_log(repo: Path, capsys) -> None:
    tty = ["run", "-f", str(repo / "Buildfile.yaml"), "--progress", "tty", "test-a"]
    assert main(tty) == 0
    first = capsys.readouterr().err
    assert "task test-a (cached) |" not in first  # ran: its live lines are not kept
    assert main(tty) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "task test-a (cached) | input one" in lines
    assert "task test-a (cached) | app v1" in lines
