"""`buildgraph run`: a monorepo's targets in one graph; shared steps built once."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_runs import events_in, run, started_in

from buildgraph.cli import main

BUILDFILE = """version: 1
vars: {REGISTRY: "localhost:5000/acme"}
cache: {dir: cache}
groups:
  default: [api, web]
targets:
  base:
    context: base
    tags: ["${REGISTRY}/base:latest"]
  api:
    context: services/api
    args: {NAME: api}
  web:
    context: services/web
    contexts: {base: "target:base"}
    args: {NAME: web}
    tags: ["web:1"]
"""
BASE = "FROM busybox\nRUN echo base > /base.txt\n"
SERVICE_ON_TAG = (
    "FROM localhost:5000/acme/base:latest\nARG NAME\nCOPY src/ /src/\n"
    "RUN cat /base.txt /src/* > /out-$NAME\n"
)
SERVICE_ON_CONTEXT = SERVICE_ON_TAG.replace("localhost:5000/acme/base:latest", "base")


@pytest.fixture
def monorepo(tmp_path: Path, busybox_cache: Path) -> Path:
    root = tmp_path / "repo"
    for path, text in {
        "Buildfile.yaml": BUILDFILE,
        "base/Dockerfile": BASE,
        "services/api/Dockerfile": SERVICE_ON_TAG,
        "services/api/src/main.txt": "api v1\n",
        "services/web/Dockerfile": SERVICE_ON_CONTEXT,
        "services/web/src/index.txt": "web v1\n",
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    shutil.copytree(busybox_cache, root / "cache", symlinks=True)
    return root


def test_default_group_builds_every_target_once(monorepo: Path, capsys) -> None:
    assert run(monorepo) == 0
    out = capsys.readouterr().out
    titles = started_in(out)
    shared = [
        e for e in events_in(out) if e["instruction"] == "[stage-0] RUN echo base > /base.txt"
    ]
    assert sorted(shared[0]["target"]) == ["api", "base", "web"]
    exports = {e["export"]: e["target"] for e in events_in(out) if "export" in e}
    assert exports == {name: [name] for name in ("api", "base", "web")}
    assert titles.count("[stage-0] RUN echo base > /base.txt") == 1  # shared by api and web
    assert sum("RUN cat /base.txt" in t for t in titles) == 2
    assert run(monorepo) == 0
    assert started_in(capsys.readouterr().out) == []  # a no-op rebuild runs nothing
    root = monorepo / "unpacked"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{monorepo / 'cache'}:web:1", str(root)],
        check=True,
        capture_output=True,
    )
    assert (root / "rootfs/out-web").read_text() == "base\nweb v1\n"


def test_a_changed_file_rebuilds_only_its_service(monorepo: Path, capsys) -> None:
    assert run(monorepo) == 0
    capsys.readouterr()
    (monorepo / "services/api/src/main.txt").write_text("api v2\n")
    assert run(monorepo) == 0
    titles = started_in(capsys.readouterr().out)
    assert titles == [
        "[stage-0] COPY src/ /src/",
        "[stage-0] RUN cat /base.txt /src/* > /out-$NAME",
    ]


def test_base_change_rebuilds_dependents(monorepo: Path, capsys) -> None:
    assert run(monorepo) == 0
    capsys.readouterr()
    (monorepo / "base/Dockerfile").write_text(BASE.replace("echo base", "echo base2"))
    assert run(monorepo) == 0
    titles = started_in(capsys.readouterr().out)
    assert len([t for t in titles if "RUN" in t]) == 3


def test_failure_with_keep_going_builds_the_rest(monorepo: Path, capsys) -> None:
    (monorepo / "services/api/Dockerfile").write_text(SERVICE_ON_TAG + "RUN exit 7\n")
    assert run(monorepo, "--keep-going") == 1
    captured = capsys.readouterr()
    states = {e["instruction"]: e["state"] for e in events_in(captured.out)}
    assert states["[stage-0] RUN exit 7"] == "failed"
    assert "web:1" in captured.out or any("out-$NAME" in k for k in states)
    assert "code 7" in captured.err
    error = captured.err.strip().splitlines()[-1]
    dockerfile = monorepo / "services/api/Dockerfile"
    assert error.startswith(f"buildgraph: error: {dockerfile}:5: target api: [stage-0] RUN exit 7")


def test_buildfile_errors_exit_2(monorepo: Path, capsys) -> None:
    (monorepo / "Buildfile.yaml").write_text(BUILDFILE.replace("context: base", "contxt: base"))
    assert run(monorepo) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{monorepo / 'Buildfile.yaml'}:" in err and "did you mean" in err


def plan(root: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["plan", "-f", str(root / "Buildfile.yaml")]) == 0
    return capsys.readouterr().out


def test_plan_says_why_each_step_must_be_built(monorepo: Path, capsys) -> None:
    first = plan(monorepo, capsys)
    assert "no earlier build" in first and "cached" in first  # FROM busybox is in the store
    assert run(monorepo) == 0
    out = plan(monorepo, capsys)
    assert "  to build  " not in out and out.strip().endswith(" 0 to build")
    (monorepo / "services/api/src/main.txt").write_text("api v2\n")
    out = plan(monorepo, capsys)
    assert "(file src/main.txt changed)" in out
    assert "(parent step changed)" in out
    buildfile = (monorepo / "Buildfile.yaml").read_text()
    (monorepo / "Buildfile.yaml").write_text(buildfile.replace("NAME: web", "NAME: www"))
    out = plan(monorepo, capsys)
    assert "(build arg or env NAME changed: web → www)" in out


def test_graph_formats(monorepo: Path, capsys) -> None:
    for fmt in ("text", "dot", "json"):
        capsys.readouterr()
        assert main(["graph", "-f", str(monorepo / "Buildfile.yaml"), "--format", fmt]) == 0
        out = capsys.readouterr().out
        if fmt == "json":
            doc = json.loads(out)
            assert {n["target"] for n in doc["nodes"]} >= {"api", "web", "base"}
            titles = [n["title"] for n in doc["nodes"]]
            assert not any(title.endswith("] export") for title in titles)  # steps only
            keys = {n["key"] for n in doc["nodes"]}
            assert all(a in keys and b in keys for a, b in doc["edges"])
            assert titles.count("[stage-0] RUN echo base > /base.txt") == 1
        elif fmt == "dot":
            assert out.startswith("digraph buildgraph {")
        else:
            assert "=> web" in out
