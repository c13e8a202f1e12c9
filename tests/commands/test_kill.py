"""Issue 16's kill test: SIGKILL and SIGTERM at random points of a build with a secret mount.
After each kill: no secret byte under the cache dir, no mount and no process left; the next
build leaves no orphaned step dir and gives the digest of an uninterrupted build."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SECRET = "d3b07384d113edec49eaa6238ad5ff00c2d6bbd5c8a1a0f0e1c5a9f3b2e4d6f8"
DOCKERFILE = """FROM busybox
COPY input.txt /input.txt
RUN --mount=type=secret,id=token,required=true sha256sum /run/secrets/token > /token.sha \\
 && sleep 0.3
RUN for i in $(seq 1 1500); do echo "line $i" > /f$i; done
RUN --mount=type=secret,id=token cat /run/secrets/token > /dev/null && sleep 0.3 && echo ok > /ok
COPY input.txt /again.txt
"""
TRIALS = 12


def build(cache: Path, context: Path, secret: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "buildgraph", "build", str(context), "--cache-dir", str(cache)]
    argv += ["--secret", f"id=token,src={secret}", "-t", "app:1", "--progress", "plain", *extra]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out.split()[0]  # the image digest


def leftovers(cache: Path) -> dict[str, list[str]]:
    """What a kill must not leave: secret bytes, mounts, live processes of the build."""
    grep = subprocess.run(
        ["grep", "-rlF", "-e", SECRET, "-e", SECRET[:16], str(cache)],
        capture_output=True,
        text=True,
    )
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    processes = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(cache) in cmdline:
                processes.append(f"{entry.name}: {cmdline}")
    return {
        "secret": grep.stdout.split() + [str(p) for p in cache.rglob("secret-*")],
        "mounts": [line for line in mounts if str(cache) in line],
        "processes": processes,
    }


@pytest.mark.slow
def test_random_kills_leave_nothing_and_change_no_digest(
    busybox_cache: Path, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "input.txt").write_text("input\n")
    secret = tmp_path / "token"
    secret.write_text(SECRET)
    reference = tmp_path / "reference"
    subprocess.run(["cp", "-a", str(busybox_cache), str(reference)], check=True)
    began = time.monotonic()
    expected = finish(build(reference, context, secret))
    duration = time.monotonic() - began

    cache = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(busybox_cache), str(cache)], check=True)
    seed = random.randrange(1 << 32)
    chooser = random.Random(seed)
    for trial in range(TRIALS):
        number = signal.SIGKILL if trial % 2 == 0 else signal.SIGTERM
        delay = chooser.uniform(0.05, duration * 1.1)
        note = f"seed {seed}, trial {trial}, {number.name} after {delay:.2f}s"
        process = build(cache, context, secret, "--no-cache")
        time.sleep(delay)
        process.send_signal(number)
        process.communicate(timeout=30)
        # 0: it finished first; -15: SIGTERM came during interpreter start-up, before main()
        # set its handler (nothing exists yet to clean up then)
        assert process.returncode in (0, -signal.SIGKILL, -signal.SIGTERM, 143), note
        deadline = time.monotonic() + 5  # death signals reach the sandbox asynchronously
        found = leftovers(cache)
        while any(found.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
            found = leftovers(cache)
        assert found == {"secret": [], "mounts": [], "processes": []}, note
        assert finish(build(cache, context, secret)) == expected, note
        assert list((cache / "snapshots" / ".work").iterdir()) == [], note
        assert not (cache / "snapshots" / ".tmp").exists(), note
        assert leftovers(cache) == {"secret": [], "mounts": [], "processes": []}, note
