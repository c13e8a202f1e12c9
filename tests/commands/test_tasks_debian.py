"""A task on the Debian bookworm base of the slow suite: run, replayed, rerun on a change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from debian import debootstrap_bookworm

from buildgraph.cli import main

pytestmark = pytest.mark.slow

BUILDFILE = """version: 1
cache: {dir: cache}
targets:
  tools:
    context: tools
tasks:
  check:
    image: tools
    run: >-
      dpkg-query -W -f '$${Package}\\n' bash coreutils > /out/packages.txt &&
      sha256sum /src/data/*.txt | tee /out/sums.txt && cat /proc/sys/kernel/random/uuid
    inputs: ["data/*.txt"]
    outputs: [/out/packages.txt, /out/sums.txt]
"""


def states(out: str) -> list[str]:
    found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [e["state"] for e in found if e.get("key", "").startswith("task:")]


def test_a_task_in_a_debian_image_is_run_replayed_and_rerun(tmp_path: Path, capsys) -> None:
    rootfs = debootstrap_bookworm(tmp_path / "rootfs")
    cache = tmp_path / "repo/cache"
    argv = ["image", "import", str(rootfs), "-t", "debian:bookworm", "--cache-dir", str(cache)]
    assert main(argv) == 0
    shutil.rmtree(rootfs)
    repo = tmp_path / "repo"
    (repo / "tools").mkdir()
    (repo / "tools/Dockerfile").write_text("FROM debian:bookworm\nRUN echo ok > /etc/tools\n")
    (repo / "data").mkdir()
    (repo / "data/a.txt").write_text("a\n")
    (repo / "Buildfile.yaml").write_text(BUILDFILE)
    run = ["run", "-f", str(repo / "Buildfile.yaml"), "--progress", "json", "check"]
    assert main(run) == 0
    assert states(capsys.readouterr().out) == ["started", "done"]
    assert (repo / "out/check/packages.txt").read_text() == "bash\ncoreutils\n"
    sums = (repo / "out/check/sums.txt").read_text()
    assert main(run) == 0
    assert states(capsys.readouterr().out) == ["cached"]
    assert (repo / "out/check/sums.txt").read_text() == sums
    (repo / "data/a.txt").write_text("b\n")
    assert main(run) == 0
    assert states(capsys.readouterr().out) == ["started", "done"]
    assert (repo / "out/check/sums.txt").read_text() != sums
