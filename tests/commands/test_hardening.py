"""Issue 16, defects 1-4 end to end: RUN confinement and --allow, secrets never on the cache
dir's disk, SIGTERM, orphaned step dirs. Real busybox image, overlayfs, namespaces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildgraph.cli import main
from buildgraph.fs import held_dir

SECRET = "plaintext-2c26b46b68ffc68ff99b453c1d304134"


@pytest.fixture
def cache(busybox_cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(busybox_cache), str(target)], check=True)
    return target


def context_with(tmp_path: Path, dockerfile: str) -> Path:
    context = tmp_path / "ctx"
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    return context


def build(cache: Path, context: Path, *extra: str) -> int:
    return main(["build", str(context), "--cache-dir", str(cache), "--progress", "plain", *extra])


def files_holding(root: Path, needle: str) -> list[str]:
    found = subprocess.run(["grep", "-rlF", needle, str(root)], capture_output=True, text=True)
    return found.stdout.split()


# -- 1: RUN's confinement --------------------------------------------------------------------
ESCAPE = (  # the issue's Dockerfile, reading a file only the host has
    "FROM busybox\nRUN mkdir -p /esc/bin /esc/proc && cp /bin/busybox /esc/bin/"
    " && mount -t proc proc /esc/proc \\\n && exec 3</ && chroot /esc /bin/busybox sh -c"
    " 'cd -P /proc/self/fd/3 && cd -P ../../../../../.. && cat {path}'\n"
)


def test_the_issues_escape_cannot_print_a_host_file(cache: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "host-only.txt"
    marker.write_text("host file 9f86d081884c7d65\n")
    context = context_with(tmp_path, ESCAPE.format(path=str(marker).lstrip("/")))
    assert build(cache, context) == 1
    captured = capsys.readouterr()
    assert "9f86d081884c7d65" not in captured.out + captured.err
    assert "Dockerfile:2" in captured.err


def test_run_sees_dockers_default_capabilities(cache: Path, tmp_path: Path, capsys) -> None:
    context = context_with(
        tmp_path,
        "FROM busybox\nRUN grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"
        " && mkdir /m && ! unshare -m true && ! mount -t tmpfs none /m\n",
    )
    assert build(cache, context) == 0
    out = capsys.readouterr().err
    assert "CapEff:\t00000000a80425fb" in out
    assert "CapBnd:\t00000000a80425fb" in out
    assert "NoNewPrivs:\t1" in out
    assert "Seccomp:\t2" in out


INSECURE = (
    "FROM busybox\nRUN true\n"
    "RUN --security=insecure mkdir /m && mount -t tmpfs none /m && echo mounted\n"
)


def test_insecure_without_allow_is_exit_2_naming_the_line(
    cache: Path, tmp_path: Path, capsys
) -> None:
    context = context_with(tmp_path, INSECURE)
    assert build(cache, context) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{context / 'Dockerfile'}:3:" in err[0]
    assert "--allow security.insecure" in err[0]
    assert not list((cache / "steps").rglob("*.json"))  # refused before anything ran


def test_insecure_with_allow_may_mount(cache: Path, tmp_path: Path, capsys) -> None:
    context = context_with(tmp_path, INSECURE)
    assert build(cache, context, "--allow", "security.insecure") == 0
    assert "mounted" in capsys.readouterr().err
    assert build(cache, context) == 2  # cached or not, the command line must allow it


def test_run_command_checks_the_allow_flag_too(cache: Path, tmp_path: Path, capsys) -> None:
    context = context_with(tmp_path, INSECURE)
    buildfile = tmp_path / "Buildfile.yaml"
    buildfile.write_text(f"version: 1\ntargets:\n  app:\n    context: {context}\n")
    argv = ["run", "-f", str(buildfile), "--cache-dir", str(cache), "--progress", "plain"]
    assert main(argv) == 2
    assert f"{context / 'Dockerfile'}:3:" in capsys.readouterr().err
    assert main([*argv, "--allow", "security.insecure"]) == 0


def test_an_unknown_entitlement_is_exit_2(cache: Path, tmp_path: Path) -> None:
    assert build(cache, context_with(tmp_path, INSECURE), "--allow", "network.everything") == 2


# -- 2: secrets --------------------------------------------------------------------------------
def start(cache: Path, context: Path, *extra: str) -> subprocess.Popen:
    """A build in its own process, returned once a RUN printed "started"."""
    argv = [sys.executable, "-m", "buildgraph", "build", str(context), "--cache-dir", str(cache)]
    process = subprocess.Popen(
        [*argv, "--progress", "plain", *extra], stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    for line in process.stderr:
        if "| started" in line or time.monotonic() > deadline:
            break
    return process


def secret_build(cache: Path, tmp_path: Path) -> tuple[Path, Path]:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    context = context_with(
        tmp_path,
        "FROM busybox\nRUN --mount=type=secret,id=s,required=true wc -c /run/secrets/s"
        " && echo started && sleep 30\n",
    )
    return context, secret


def test_a_secret_never_lands_in_the_cache_dir(cache: Path, tmp_path: Path) -> None:
    context, secret = secret_build(cache, tmp_path)
    process = start(cache, context, "--secret", f"id=s,src={secret}")
    try:
        assert files_holding(cache, SECRET) == []  # while the step runs
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert files_holding(cache, SECRET) == []  # and after a kill


def test_a_secret_left_by_an_older_version_is_removed_at_start_up(
    cache: Path, tmp_path: Path
) -> None:
    legacy = cache / "snapshots" / ".tmp" / "step-k1ll3d"
    (legacy / "upper" / "etc").mkdir(parents=True)
    (legacy / "secret-0123456789abcdef").write_text(SECRET)
    assert build(cache, context_with(tmp_path, "FROM busybox\nRUN true\n")) == 0
    assert files_holding(cache, SECRET) == []
    assert not legacy.exists()  # no other build held the cache: the whole dir went


# -- 3: SIGTERM: see tests/commands/test_build.py (parametrized with Ctrl-C) ----------------
def test_sigterm_exits_143_with_one_line_and_no_leftovers(cache: Path, tmp_path: Path) -> None:
    context, secret = secret_build(cache, tmp_path)
    process = start(cache, context, "--secret", f"id=s,src={secret}")
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 143
    assert process.stderr is not None
    assert process.stderr.read().strip().splitlines()[-1] == "buildgraph: terminated"
    assert not list((cache / "snapshots" / ".work").iterdir())
    assert str(cache) not in Path("/proc/self/mountinfo").read_text()


# -- 4: orphaned step dirs -----------------------------------------------------------------------
def cache_du(cache: Path, capsys) -> str:
    assert main(["cache", "du", "--cache-dir", str(cache)]) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if "scratch" in line)


def test_a_killed_builds_step_dir_is_counted_then_reclaimed(
    cache: Path, tmp_path: Path, capsys
) -> None:
    context, secret = secret_build(cache, tmp_path)
    process = start(cache, context, "--secret", f"id=s,src={secret}")
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    work = cache / "snapshots" / ".work"
    assert len(list(work.iterdir())) == 1
    assert "(1 orphaned" in cache_du(cache, capsys)
    assert build(cache, context_with(tmp_path / "other", "FROM busybox\nRUN true\n")) == 0
    assert list(work.iterdir()) == []
    assert "(0 orphaned" in cache_du(cache, capsys)


def test_prune_reclaims_orphans_but_never_a_held_dir(cache: Path, tmp_path: Path, capsys) -> None:
    work = cache / "snapshots" / ".work"
    orphan = work / "step-orphan"
    (orphan / "upper").mkdir(parents=True)
    (orphan / "upper" / "big").write_bytes(b"x" * 100_000)
    with held_dir(work, "step-") as live:
        (live / "upper").mkdir()
        assert "(1 orphaned" in cache_du(cache, capsys)
        assert main(["cache", "prune", "--cache-dir", str(cache)]) == 0
        assert "1 orphaned step dirs" in capsys.readouterr().out
        assert not orphan.exists()
        assert (live / "upper").is_dir()  # held by a live process (this one)
    assert list(work.iterdir()) == []


def test_a_dir_held_by_another_live_process_is_kept(cache: Path, tmp_path: Path) -> None:
    work = cache / "snapshots" / ".work"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from buildgraph.fs import held_dir\n"
            f"with held_dir(Path({str(work)!r}), 'step-') as p:\n"
            "    print(p, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        held = Path(holder.stdout.readline().strip())
        assert build(cache, context_with(tmp_path, "FROM busybox\nRUN true\n")) == 0
        assert held.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert held.is_dir()  # SIGKILL: no cleanup ran, the kernel dropped the lock
    assert build(cache, context_with(tmp_path, "FROM busybox\nRUN echo 2\n")) == 0
    assert not held.exists()
    assert os.listdir(work) == []
