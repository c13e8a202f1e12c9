"""`buildgraph build` with RUN --mount from= (a stage or an image) and ${VAR}s in mount
options, end to end on the busybox image, real overlayfs and namespaces."""

from __future__ import annotations

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


def write_context(root: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        (root / name).write_text(content)
    return root


def build(cache: Path, context: Path, *extra: str) -> int:
    return main(["build", str(context), "--cache-dir", str(cache), "--progress", "plain", *extra])


def unpack(cache: Path, name: str, dest: Path) -> Path:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{cache}:{name}", str(dest)],
        check=True,
        capture_output=True,
    )
    return dest / "rootfs"


def no_mounts_below(*roots: Path) -> bool:
    text = Path("/proc/self/mountinfo").read_text()
    return not any(str(root) in text for root in roots)


def started(log: str) -> list[str]:
    return [line.split("STARTED", 1)[1].strip() for line in log.splitlines() if "STARTED" in line]


WHEELS = """FROM busybox AS builder
COPY version.txt /
RUN mkdir -p /wheels/sub && cp /version.txt /wheels/app.whl && ln -s /wheels/sub /wheels-link

FROM busybox
WORKDIR /app
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels cat /wheels/app.whl > installed
RUN --mount=from=builder,src=/wheels,dst=/mnt,rw touch /mnt/written && ls /mnt > rw-saw
RUN --mount=from=0,src=wheels,dst=mnt ls mnt > ro-saw && (touch mnt/x || echo ro) >> ro-saw
RUN --mount=from=builder,source=/wheels-link,target=/s [ -d /s ] && ls -A /s | wc -l > link-saw
RUN --mount=type=bind,from=busybox,source=/bin,target=/image-bin ls /image-bin | grep -c . > n
"""


def test_bind_from_a_stage_and_an_image(
    cache: Path, tmp_path: Path, capsys, busybox_rootfs: Path
) -> None:
    context = write_context(tmp_path / "ctx", WHEELS, {"version.txt": "1.0\n"})
    assert build(cache, context, "-t", "wheels:1") == 0
    root = unpack(cache, "wheels:1", tmp_path / "bundle")
    app = root / "app"
    assert (app / "installed").read_text() == "1.0\n"
    assert (app / "rw-saw").read_text() == "app.whl\nsub\nwritten\n"
    assert (app / "ro-saw").read_text() == "app.whl\nsub\nro\n"  # read-only by default
    assert (app / "link-saw").read_text() == "0\n"  # the link resolved in the builder stage
    assert int((app / "n").read_text()) == len(os.listdir(busybox_rootfs / "bin"))
    for gone in ("wheels", "mnt", "s", "image-bin", "app/mnt", "app/x", "version.txt"):
        assert not os.path.lexists(root / gone), gone  # mount points and rw writes: dropped
    assert no_mounts_below(cache, tmp_path)
    # A second build: all cached, and the rw write did not reach the builder stage.
    capsys.readouterr()
    assert build(cache, context, "-t", "wheels:1") == 0
    assert started(capsys.readouterr().err) == []


def test_a_changed_stage_reruns_the_steps_that_mount_it(
    cache: Path, tmp_path: Path, capsys
) -> None:
    context = write_context(tmp_path / "ctx", WHEELS, {"version.txt": "1.0\n"})
    assert build(cache, context, "-t", "wheels:1") == 0
    (context / "version.txt").write_text("2.0\n")
    capsys.readouterr()
    assert build(cache, context, "-t", "wheels:2") == 0
    reran = started(capsys.readouterr().err)
    # The builder, then every RUN from the first that mounts it; not FROM nor WORKDIR.
    assert [title.split(" ", 2)[:2] for title in reran] == [
        ["[builder]", "COPY"], ["[builder]", "RUN"], *[["[stage-1]", "RUN"]] * 5,
    ]  # fmt: skip
    root = unpack(cache, "wheels:2", tmp_path / "bundle")
    assert (root / "app/installed").read_text() == "2.0\n"


def test_a_cache_seeded_from_a_stage(cache: Path, tmp_path: Path) -> None:
    dockerfile = """FROM busybox AS deps
COPY seed.txt /seed/list
FROM busybox
RUN --mount=type=cache,id=deps,from=deps,source=/seed,target=/var/cache/deps \\
    echo run1 >> /var/cache/deps/list && cp /var/cache/deps/list /seen
"""
    context = write_context(tmp_path / "ctx", dockerfile, {"seed.txt": "seed\n"})
    assert build(cache, context, "-t", "seeded:1") == 0
    seen = unpack(cache, "seeded:1", tmp_path / "b1") / "seen"
    assert seen.read_text() == "seed\nrun1\n"
    # A new step with the same cache: it persisted (not seeded again).
    write_context(context, dockerfile.replace("run1", "run2"))
    assert build(cache, context, "-t", "seeded:2") == 0
    assert (unpack(cache, "seeded:2", tmp_path / "b2") / "seen").read_text() == "seed\nrun1\nrun2\n"
    # A changed stage: BuildKit keys the cache by the tree it came from, so a fresh copy.
    (context / "seed.txt").write_text("other\n")
    assert build(cache, context, "-t", "seeded:3") == 0
    assert (unpack(cache, "seeded:3", tmp_path / "b3") / "seen").read_text() == "other\nrun2\n"
    assert len([p for p in (cache / "mounts").iterdir() if not p.name.startswith(".")]) == 2
    assert no_mounts_below(cache, tmp_path)


def test_variables_in_mount_options(cache: Path, tmp_path: Path) -> None:
    # buildkit testMountArg, testMountEnvVar, testMountEnvAcrossStages, testMountMetaArg
    dockerfile = """ARG META_PATH=/tmp/meta
FROM busybox AS stage1
ENV MNT_ID=mycache MNT_TYPE2=cache SOME_PATH=/mycache
RUN --mount=type=cache,id=mycache,target=/abcabc touch /abcabc/foo
RUN --mount=type=$MNT_TYPE2,id=$MNT_ID,target=/cbacba [ -f /cbacba/foo ]
RUN --mount=type=cache,target=/mycache touch /mycache/bar
RUN --mount=type=cache,target=$SOME_PATH [ -f $SOME_PATH/bar ]

FROM stage1
ARG MT=TMPFS META_PATH
RUN --mount=type=$MNT_TYPE2,id=$MNT_ID,target=/whatever [ -f /whatever/foo ]
RUN --mount=type=$MT,target=/t grep -q " /t tmpfs " /proc/mounts && touch /t/x
RUN --mount=type=cache,id=$MNT_ID,target=$META_PATH [ -f /tmp/meta/foo ] && echo ok > /ok
"""
    context = write_context(tmp_path / "ctx", dockerfile)
    assert build(cache, context, "-t", "vars:1") == 0
    root = unpack(cache, "vars:1", tmp_path / "bundle")
    assert (root / "ok").read_text() == "ok\n"
    for gone in ("t", "whatever", "tmp/meta"):
        assert not os.path.lexists(root / gone), gone


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (  # a later stage (BuildKit: "stage needs to be defined before current command")
            "FROM busybox AS a\nRUN --mount=from=b,target=/b true\nFROM busybox AS b\nFROM a\n",
            2,
            "RUN --mount from=b: a stage can only use an earlier stage",
        ),
        (  # buildkit testMountFromError
            "FROM busybox AS test\nFROM busybox\nENV ttt=test\n"
            "RUN --mount=from=$ttt,target=/t ls\n",
            4,
            "'from' doesn't support variable expansion, define alias stage instead",
        ),
        (
            "FROM busybox\nARG T=bogus\nRUN --mount=type=$T,target=/t ls\n",
            3,
            "unsupported mount type 'bogus'",
        ),
    ],
)
def test_bad_mount_input_exits_2_naming_the_line(
    cache: Path, tmp_path: Path, capsys, text: str, line: int, message: str
) -> None:
    context = write_context(tmp_path / "ctx", text)
    assert build(cache, context) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"buildgraph: error: {context / 'Dockerfile'}:{line}: {message}"


def test_an_image_that_is_not_there_is_a_registry_error_naming_the_line(
    cache: Path, tmp_path: Path, capsys
) -> None:
    # Not a stage: an image reference, as in BuildKit (here a registry that refuses at once).
    text = "FROM busybox AS build\nFROM busybox\nRUN --mount=from=127.0.0.1:9/nope,target=/x true\n"
    context = write_context(tmp_path / "ctx", text)
    assert build(cache, context) == 3
    assert f"{context / 'Dockerfile'}:3: " in capsys.readouterr().err


def test_a_source_missing_from_the_stage_fails_the_step(
    cache: Path, tmp_path: Path, capsys
) -> None:
    text = (
        "FROM busybox AS build\nFROM busybox\n"
        "RUN --mount=from=build,source=/nope,target=/x true\n"
        "RUN --mount=type=cache,from=build,source=/nope,target=/x true\n"
    )
    context = write_context(tmp_path / "ctx", text)
    assert build(cache, context) == 1
    err = capsys.readouterr().err
    assert f"{context / 'Dockerfile'}:3: " in err and "mount source /nope" in err
    context = write_context(
        tmp_path / "ctx", text.replace("RUN --mount=from=build,source=/nope,target=/x true\n", "")
    )
    assert build(cache, context) == 1
    err = capsys.readouterr().err
    assert f"{context / 'Dockerfile'}:3: " in err and "source '/nope' not found" in err
    assert [p for p in (cache / "mounts").iterdir() if not p.name.startswith(".")] == []
    assert no_mounts_below(cache, tmp_path)


def test_sigkill_during_a_run_with_tree_mounts_leaves_no_mount(cache: Path, tmp_path: Path) -> None:
    text = (
        "FROM busybox AS build\nRUN mkdir /out && echo x > /out/f\nFROM busybox\n"
        "RUN --mount=from=build,src=/out,dst=/o,rw --mount=from=build,dst=/ro"
        " --mount=type=cache,from=build,source=/out,target=/c"
        " cat /o/f /c/f && echo started && sleep 30 # killed\n"
    )
    context = write_context(tmp_path / "ctx", text)
    argv = [sys.executable, "-m", "buildgraph", "build", str(context), "--cache-dir", str(cache)]
    process = subprocess.Popen([*argv, "--progress", "plain"], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    started_lines = (line for line in process.stderr if "| started" in line)
    assert next(started_lines, None) is not None  # the command runs, its mounts in place
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    deadline = time.monotonic() + 5  # the death signal reaches the sandbox asynchronously
    while not no_mounts_below(cache, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert no_mounts_below(cache, tmp_path)
    write_context(context, text.replace("sleep 30 # killed", "true"))
    assert build(cache, context) == 0
