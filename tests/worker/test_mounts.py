"""RUN --mount from=: a tree of snapshots bound into the sandbox, and a cache seeded from one.
Real overlayfs and namespaces, with a busybox lower dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildgraph.errors import StepFailed
from buildgraph.graph.steps import RunMount, RunStep
from buildgraph.worker.mounts import run_mounts
from buildgraph.worker.sandbox import RunResult, RunSpec, StageBind, run_in_sandbox

PATH = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),)


def sh(script: str, *binds: object) -> RunSpec:
    return RunSpec(argv=("/bin/sh", "-c", script), env=PATH, extra_binds=binds)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_mount_leaks(tmp_path: Path) -> Iterator[None]:
    yield
    for table in ("/proc/mounts", "/proc/self/mountinfo"):
        assert str(tmp_path) not in Path(table).read_text()


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    path = tmp_path / "upper"
    path.mkdir()
    return path


@pytest.fixture
def run(busybox_rootfs: Path, upper: Path):
    def run(spec: RunSpec) -> RunResult:
        return run_in_sandbox(spec, [busybox_rootfs], upper)

    return run


@pytest.fixture
def stage(tmp_path: Path) -> tuple[Path, ...]:
    """Two snapshot dirs of a stage, topmost first: the top one deletes /out/old (whiteout)
    and adds links: absolute, relative and one that climbs above the root."""
    bottom, top = tmp_path / "bottom", tmp_path / "top"
    (bottom / "out").mkdir(parents=True)
    (bottom / "out/old").write_text("old\n")
    (bottom / "out/keep").write_text("keep\n")
    (top / "out/sub").mkdir(parents=True)
    (top / "out/sub/new").write_text("new\n")
    os.mknod(top / "out/old", 0o600 | 0o020000, os.makedev(0, 0))  # overlay whiteout
    (top / "etc").mkdir()
    (top / "etc/only-in-stage").write_text("stage\n")
    os.symlink("/out/sub", top / "abs")
    os.symlink("out/sub", top / "rel")
    os.symlink("../../../../etc", top / "out/up")
    return (top, bottom)


def test_a_stage_path_is_bound_read_only_as_the_stage_sees_it(run, upper, stage) -> None:
    bind = StageBind(stage, "/out", "/mnt")
    result = run(sh("ls /mnt; cat /mnt/sub/new; touch /mnt/x 2>/dev/null || echo read-only", bind))
    assert result.output_tail.split() == ["keep", "sub", "up", "new", "read-only"]
    assert os.listdir(upper) == []  # the mount point came from the skeleton, nothing else


@pytest.mark.parametrize("source", ["/abs", "/rel", "/out/../rel/", "abs"])
def test_links_in_the_source_resolve_inside_the_stage(run, stage, source: str) -> None:
    assert run(sh("cat /m/new", StageBind(stage, source, "/m"))).output_tail == "new"


def test_a_link_above_the_root_stays_in_the_stage(run, stage) -> None:
    # /out/up -> ../../../../etc: the stage's /etc, never the host's or the RUN's own.
    result = run(sh("ls /m", StageBind(stage, "/out/up", "/m")))
    assert result.output_tail == "only-in-stage"


def test_a_file_source_is_bound_on_a_file(run, upper, stage) -> None:
    result = run(sh("cat /k && [ -f /k ]", StageBind(stage, "/out/keep", "/k")))
    assert (result.exit_code, result.output_tail) == (0, "keep")
    assert os.listdir(upper) == []


def test_rw_writes_go_to_a_throwaway_upper(run, upper, stage, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    bind = StageBind(stage, "/out", "/o", readonly=False, scratch=scratch)
    result = run(sh("echo w > /o/written && rm /o/keep && ls /o", bind))
    assert result.output_tail.split() == ["sub", "up", "written"]
    assert sorted(os.listdir(stage[0] / "out")) == ["old", "sub", "up"]  # the stage unchanged
    assert (stage[1] / "out/keep").read_text() == "keep\n"
    assert os.listdir(upper) == []  # and nothing in the step's layer


def test_an_empty_tree_and_a_missing_source(run, stage) -> None:
    assert run(sh("ls -A /e | wc -l", StageBind((), "/", "/e"))).output_tail == "0"
    with pytest.raises(StepFailed, match="mount source /nope: No such file or directory"):
        run(sh("true", StageBind(stage, "/nope", "/m")))


def step(*mounts: RunMount) -> RunStep:
    return RunStep("p", ("true",), (), "", "/", "host", mounts=mounts, title="[x] RUN true")


def test_a_cache_from_a_tree_is_seeded_once_then_persists(stage, tmp_path: Path) -> None:
    caches, scratch = tmp_path / "caches", tmp_path / "scratch"
    scratch.mkdir()
    seeded = RunMount("cache", "/c", id="c", source="/out", stage_key="s1")
    (bind,) = run_mounts(step(seeded), scratch, caches, {}, {"s1": stage})
    assert sorted(os.listdir(bind.source)) == ["keep", "sub", "up"]  # whiteout applied
    assert (Path(bind.source) / "sub/new").read_text() == "new\n"
    (Path(bind.source) / "keep").write_text("changed\n")
    again = run_mounts(step(seeded), scratch, caches, {}, {"s1": stage})
    assert again == (bind,) and (Path(bind.source) / "keep").read_text() == "changed\n"
    # Another stage result (or path, or a cache without from=) is another cache.
    other = run_mounts(step(RunMount("cache", "/c", id="c", source="/out", stage_key="s2")),
                       scratch, caches, {}, {"s2": stage})  # fmt: skip
    plain = run_mounts(step(RunMount("cache", "/c", id="c")), scratch, caches, {}, {})
    assert len({bind.source, other[0].source, plain[0].source}) == 3
    assert (Path(other[0].source) / "keep").read_text() == "keep\n"
    assert os.listdir(plain[0].source) == []
    assert os.listdir(scratch) == []  # each was made there, then renamed into place


def test_a_cache_from_a_tree_root_with_an_owner_starts_empty(stage, tmp_path: Path) -> None:
    # BuildKit setCacheUIDGID: a new /cache dir with that owner and mode, not the tree
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    owned = RunMount("cache", "/c", id="c", source="/", stage_key="s1", uid=7, mode=0o700)
    (bind,) = run_mounts(step(owned), scratch, tmp_path / "caches", {}, {"s1": stage})
    info = os.stat(bind.source)
    assert (os.listdir(bind.source), info.st_uid, info.st_mode & 0o7777) == ([], 7, 0o700)
    root = RunMount("cache", "/c", id="d", source="/", stage_key="s1")
    (bind,) = run_mounts(step(root), scratch, tmp_path / "caches", {}, {"s1": stage})
    assert sorted(os.listdir(bind.source)) == ["abs", "etc", "out", "rel"]


def test_a_cache_from_a_missing_path_fails_the_step_and_makes_no_cache(
    stage, tmp_path: Path
) -> None:
    caches, scratch = tmp_path / "caches", tmp_path / "scratch"
    scratch.mkdir()
    missing = RunMount("cache", "/c", id="c", source="/nope", stage_key="s1")
    with pytest.raises(StepFailed, match="cache mount from=: source '/nope' not found"):
        run_mounts(step(missing), scratch, caches, {}, {"s1": stage})
    assert os.listdir(caches) == [".locks"]  # no cache, not even an empty one


@pytest.mark.parametrize(
    ("bind", "message"),
    [
        (StageBind((Path("/dev/shm/x"),), "/", "/m"), "must not be under /dev"),
        (StageBind((Path("/x"),) * 500, "/", "/m"), "a --mount from= tree: overlayfs stacks"),
        (StageBind((), "/", "/"), "invalid mount target '/'"),
    ],
)
def test_bad_tree_binds_are_refused_before_the_sandbox_starts(
    run, bind: StageBind, message: str
) -> None:
    with pytest.raises(StepFailed, match=message):
        run(sh("true", bind))
