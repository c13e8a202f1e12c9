"""The chroot isolation end to end on this host (`--isolation chroot`), and `buildgraph info`.
The same isolation in a container under Docker's defaults is tests/test_unprivileged*.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildgraph.cli import main


@pytest.fixture
def cache(busybox_cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(busybox_cache), str(target)], check=True)
    return target


def context_with(root: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    return root


def build(cache: Path, context: Path, *extra: str) -> int:
    argv = ["build", str(context), "--cache-dir", str(cache), "--progress", "plain"]
    return main([*argv, "--isolation", "chroot", *extra])


def image_files(cache: Path, tag: str, dest: Path) -> Path:
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{cache}:{tag}", str(dest)],
        check=True,
        capture_output=True,
    )
    return dest


def test_info_says_what_works(capsys) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "namespaces: available" in out and "chroot: available" in out
    assert "isolation auto: namespaces" in out


def test_auto_is_namespaces_where_they_work(cache: Path, tmp_path: Path, capsys) -> None:
    context = context_with(tmp_path / "ctx", "FROM busybox\nRUN true\n")
    argv = ["build", str(context), "--cache-dir", str(cache), "--progress", "plain"]
    assert main(argv) == 0
    assert "isolation: chroot" not in capsys.readouterr().err


def test_the_escape_of_issue_16_fails_and_says_so(cache: Path, tmp_path: Path, capsys) -> None:
    """chroot-in-chroot with an fd to the old root is how a chroot is left: RUN has no
    CAP_SYS_CHROOT here, so the inner chroot fails and no host file is read."""
    Path(tmp_path / "host-secret").write_text("HOST-ONLY-CONTENT\n")
    dockerfile = (
        "FROM busybox\n"
        "RUN mkdir -p /esc/bin && cp /bin/busybox /esc/bin/ && exec 3</ && "
        "chroot /esc /bin/busybox sh -c "
        f"'cd -P /proc/self/fd/3 && cd -P ../../../../../.. && cat {tmp_path}/host-secret'\n"
    )
    assert build(cache, context_with(tmp_path / "ctx", dockerfile)) == 1
    err = capsys.readouterr().err
    assert "HOST-ONLY-CONTENT" not in err
    assert "Operation not permitted" in err


def test_mount_and_ptrace_like_calls_are_refused(cache: Path, tmp_path: Path) -> None:
    dockerfile = (
        "FROM busybox\n"
        "RUN (mount -t tmpfs none /mnt && echo mounted || echo refused) > /mount-result\n"
        "RUN (unshare -m true && echo unshared || echo refused) > /unshare-result\n"
        "RUN (chroot / true && echo chrooted || echo refused) > /chroot-result\n"
    )
    assert build(cache, context_with(tmp_path / "ctx", dockerfile), "-t", "probe:1") == 0
    root = image_files(cache, "probe:1", tmp_path / "image")
    for name in ("mount", "unshare", "chroot"):
        assert (root / f"{name}-result").read_text() == "refused\n", name


def test_mounts_leave_nothing_in_the_layers(cache: Path, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value")
    dockerfile = (
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/var/cache/app echo run >> /var/cache/app/log && "
        "cat /var/cache/app/log > /cache-seen\n"
        "RUN --mount=type=secret,id=token,target=/run/secrets/token "
        "--mount=type=tmpfs,target=/scratch "
        "--mount=type=bind,source=data.txt,target=/data.txt "
        "cat /run/secrets/token | wc -c > /secret-length && cat /data.txt > /bound && "
        "echo t > /scratch/x && ls /dev/null /dev/zero > /devices\n"
    )
    context = context_with(tmp_path / "ctx", dockerfile, {"data.txt": "bound\n"})
    argv = ("-t", "m:1", "--secret", f"id=token,src={secret}")
    assert build(cache, context, *argv) == 0
    assert build(cache, context, *argv, "--no-cache") == 0  # the cache mount persisted
    root = image_files(cache, "m:1", tmp_path / "image")
    assert (root / "cache-seen").read_text() == "run\nrun\n"
    assert (root / "secret-length").read_text().strip() == "12"
    assert (root / "bound").read_text() == "bound\n"
    assert (root / "devices").read_text() == "/dev/null\n/dev/zero\n"
    for gone in ("var/cache/app", "run/secrets/token", "scratch", "data.txt", "dev/null"):
        assert not os.path.lexists(root / gone), gone
    leftovers = subprocess.run(
        ["grep", "-rl", "s3cr3t-value", str(cache)], capture_output=True, text=True
    ).stdout
    assert leftovers == ""


def test_network_none_is_refused_with_the_reason(cache: Path, tmp_path: Path, capsys) -> None:
    dockerfile = "FROM busybox\nRUN --network=none true\n"
    assert build(cache, context_with(tmp_path / "ctx", dockerfile)) == 1
    err = capsys.readouterr().err
    assert "Dockerfile:2" in err and "network namespace" in err


def test_sigkill_leaves_no_root_after_the_next_build(cache: Path, tmp_path: Path) -> None:
    # A duration of this test process's own, so another suite's `sleep 60` is not taken for it.
    seconds = 600 + os.getpid() % 10_000
    context = context_with(tmp_path / "ctx", f"FROM busybox\nRUN sleep {seconds}\n")
    argv = [sys.executable, "-m", "buildgraph", "build", str(context), "--cache-dir", str(cache)]
    process = subprocess.Popen([*argv, "--isolation", "chroot"], stderr=subprocess.DEVNULL)
    work = cache / "snapshots" / ".work"
    deadline = time.monotonic() + 30
    while not _sleeping(seconds) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sleeping(seconds), "the command never started"
    assert list(work.glob("root-*")), "the build made no root"
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    assert not _sleeping(seconds), "the command outlived the build"
    other = context_with(tmp_path / "other", "FROM busybox\nRUN true\n")
    assert build(cache, other) == 0
    assert list(work.glob("root-*")) == []


def _sleeping(seconds: int) -> bool:
    found = subprocess.run(["pgrep", "-f", f"^sleep {seconds}$"], capture_output=True, text=True)
    return bool(found.stdout.strip())


def test_cached_steps_need_no_probe_and_no_root(cache: Path, tmp_path: Path) -> None:
    context = context_with(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi\n")
    assert build(cache, context, "-t", "c:1") == 0
    digest = json.loads((cache / "index.json").read_text())["manifests"][-1]["digest"]
    assert build(cache, context, "-t", "c:1") == 0
    assert json.loads((cache / "index.json").read_text())["manifests"][-1]["digest"] == digest
    assert list((cache / "snapshots" / ".work").glob("root-*")) == []


def test_a_command_that_removes_what_was_placed(cache: Path, tmp_path: Path) -> None:
    """/etc (where resolv.conf was placed), /dev and a cache mount's parent removed by the
    command: the keeper puts back only what still has a place, and the build goes on."""
    dockerfile = (
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/var/c rm -rf /etc /dev /var\n"
        "RUN echo after > /after\n"
    )
    assert build(cache, context_with(tmp_path / "ctx", dockerfile), "-t", "rm:1") == 0
    root = image_files(cache, "rm:1", tmp_path / "image")
    assert not (root / "etc").exists() and not (root / "var").exists()
    assert (root / "after").read_text() == "after\n"
