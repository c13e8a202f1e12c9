"""The RUN sandbox on real overlayfs and namespaces, with a busybox lower dir."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildgraph.errors import StepFailed
from buildgraph.worker.sandbox import Bind, RunResult, RunSpec, Tmpfs, run_in_sandbox

PATH = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),)
REPO = Path(__file__).resolve().parents[2]


def sh(script: str, **fields: object) -> RunSpec:
    return RunSpec(argv=("/bin/sh", "-c", script), env=PATH, **fields)  # type: ignore[arg-type]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


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
    def run(spec: RunSpec, lowers: list[Path] | None = None) -> RunResult:
        return run_in_sandbox(spec, [*(lowers or []), busybox_rootfs], upper)

    return run


def test_write_lands_in_upper(run, upper: Path) -> None:
    result = run(sh("echo hi > /a"))
    assert result.exit_code == 0
    assert tree(upper) == ["a"]
    assert (upper / "a").read_text() == "hi\n"


def test_true_leaves_upper_empty(run, upper: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    spec = sh("true", extra_binds=(Bind(cache, "/root/.cache/pip"), Tmpfs("/run/scratch")))
    assert run(spec).exit_code == 0
    assert run(sh("true", network="none")).exit_code == 0
    assert os.listdir(upper) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sandbox-")] == []


def test_delete_makes_whiteout(run, upper: Path) -> None:
    run(sh("rm /bin/ls"))
    info = os.lstat(upper / "bin" / "ls")
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


@pytest.mark.parametrize(("path", "network"), [("/home", "host"), ("/etc", "none")])
def test_recreated_dir_is_opaque(run, upper: Path, path: str, network: str) -> None:
    assert run(sh(f"rm -rf {path} && mkdir {path}", network=network)).exit_code == 0
    assert os.getxattr(upper / path.lstrip("/"), "trusted.overlay.opaque") == b"y"


def test_environment_is_exactly_env_and_path_comes_from_it(run) -> None:
    env = (("PATH", "/usr/bin"), ("FOO", "bar baz"), ("EMPTY", ""), ("HOME", "/custom"))
    result = run(RunSpec(argv=("env",), env=env))
    assert sorted(result.output_tail.splitlines()) == sorted(f"{k}={v}" for k, v in env)


@pytest.mark.parametrize(("user", "home"), [("", "/root"), ("app", "/home/app"), ("4242", "/")])
def test_home_comes_from_passwd_when_env_has_none(run, user: str, home: str) -> None:
    result = run(RunSpec(argv=("/bin/sh", "-c", "echo $HOME"), env=PATH, user=user))
    assert result.output_tail == home


def test_missing_executable_is_an_error(run) -> None:
    with pytest.raises(StepFailed, match=r'exec: "env": executable file not found in \$PATH'):
        run(RunSpec(argv=("env",), env=(("PATH", "/nowhere"),)))
    with pytest.raises(StepFailed, match=r'exec: "/bin/nope": no such file'):
        run(RunSpec(argv=("/bin/nope",), env=PATH))


def test_workdir_is_created_and_used(run, upper: Path) -> None:
    result = run(sh("pwd; touch x", workdir="/srv/app/src"))
    assert result.output_tail == "/srv/app/src"
    assert (upper / "srv/app/src/x").is_file()


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", "uid=0(root) gid=0(root) groups=0(root)"),
        ("app", "uid=1000(app) gid=1000(app) groups=1000(app)"),
        ("1000:1000", "uid=1000(app) gid=1000(app) groups=1000(app)"),
        ("nobody", "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"),
        ("app:daemon", "uid=1000(app) gid=1(daemon) groups=1(daemon)"),
        ("4242", "uid=4242 gid=0(root) groups=0(root)"),
    ],
)
def test_user(run, user: str, expected: str) -> None:
    assert run(sh("id", user=user)).output_tail == expected


def test_supplementary_groups_come_from_the_image(run, tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc/group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app,other\n")
    result = run(sh("id", user="app"), [layer])
    assert (
        result.output_tail == "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)"
    )  # the kernel sorts them


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("app2", "unable to find user app2: no matching entries in passwd file"),
        ("app:wheel", "unable to find group wheel: no matching entries in group file"),
    ],
)
def test_unknown_user_is_an_error(run, upper: Path, user: str, message: str) -> None:
    with pytest.raises(StepFailed, match=message):
        run(sh("true", user=user))
    assert os.listdir(upper) == []


def test_hostname(run) -> None:
    assert run(sh("hostname")).output_tail == "buildgraph"
    assert run(sh("hostname", hostname="box")).output_tail == "box"


def test_proc_sees_only_the_sandbox(run) -> None:
    result = run(
        sh("echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'")
    )
    pid, cmdline, count = result.output_tail.splitlines()
    assert pid == "1"
    assert cmdline.startswith("/bin/sh -c echo $$")
    assert int(count) <= 4  # sh, cat/tr/ls/grep of the pipeline


def test_dev_is_minimal_and_works(run) -> None:
    script = "ls /dev | tr '\\n' ' '; echo; head -c 4 /dev/zero | wc -c; echo x > /dev/null"
    result = run(sh(script))
    names, count = result.output_tail.splitlines()
    assert set(names.split()) >= {"null", "zero", "urandom", "tty", "pts", "shm", "fd", "stdout"}
    assert count.strip() == "4"


def test_network_none_has_only_loopback(run) -> None:
    result = run(
        sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ip link show lo", network="none")
    )
    lines = result.output_tail.splitlines()
    assert lines[0] == "lo"
    assert ",UP" in lines[1]


def test_resolv_conf_is_the_hosts_and_not_in_the_layer(run, upper: Path) -> None:
    result = run(sh("cat /etc/resolv.conf; echo nameserver 1.1.1.1 >> /etc/resolv.conf"))
    host = Path("/etc/resolv.conf").read_text()
    assert result.output_tail.splitlines()[: len(host.splitlines())] == host.splitlines()
    assert result.exit_code != 0  # read-only
    assert os.listdir(upper) == []


def test_hidden_mount_points_leave_nothing_behind(run, upper: Path, tmp_path: Path) -> None:
    # An upper layer made /etc opaque (no resolv.conf) and deleted /cache: the skeleton's mount
    # points are hidden, so stubs are created in the merged view and removed afterwards.
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    os.setxattr(layer / "etc", "trusted.overlay.opaque", b"y")
    os.mknod(layer / "cache", stat.S_IFCHR | 0o000, 0)
    cache = tmp_path / "cache"
    cache.mkdir()
    spec = sh("ls /etc; echo x > /cache/y", extra_binds=(Bind(cache, "/cache"),))
    result = run(spec, [layer])
    assert result.exit_code == 0
    assert sorted(result.output_tail.split()) == ["hosts", "passwd", "resolv.conf"]
    assert (cache / "y").read_text() == "x\n"
    assert os.listdir(upper) == []


def test_binds_and_tmpfs(run, upper: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in").write_text("from host")
    binds = (Bind(data, "/data", readonly=True), Bind(tmp_path / "out", "/out"), Tmpfs("/tmp"))
    (tmp_path / "out").mkdir()
    script = (
        "cat /data/in; echo; touch /data/x 2>/dev/null || echo ro; echo o > /out/o; echo t > /tmp/t"
    )
    result = run(sh(script, extra_binds=binds))
    assert result.output_tail.splitlines() == ["from host", "ro"]
    assert (tmp_path / "out/o").read_text() == "o\n"
    assert os.listdir(upper) == []


def test_exit_code_propagates(run) -> None:
    assert run(sh("exit 3")).exit_code == 3


def test_output_is_streamed_and_tail_kept(busybox_rootfs: Path, upper: Path) -> None:
    seen: list[tuple[float, bytes]] = []

    def output(chunk: bytes) -> None:
        seen.append((time.monotonic(), chunk))

    spec = sh("seq 1 100; sleep 0.5; echo last")
    result = run_in_sandbox(spec, [busybox_rootfs], upper, output=output)
    assert result.output_tail.splitlines() == [*map(str, range(62, 101)), "last"]
    assert b"".join(chunk for _, chunk in seen).split() == [
        *map(str.encode, map(str, range(1, 101))),
        b"last",
    ]
    first = next(when for when, chunk in seen if b"100" in chunk)
    assert seen[-1][0] - first > 0.4  # the numbers arrived before the command ended


def test_many_lowers(busybox_rootfs: Path, upper: Path, tmp_path: Path) -> None:
    layers = []
    for index in range(120):
        layer = tmp_path / "snapshots" / f"sha256-{index:03d}-{'f' * 56}"
        (layer / "layers").mkdir(parents=True)
        (layer / "layers" / f"f{index}").write_text(str(index))
        (layer / "top").write_text(str(index))
        layers.append(layer)
    spec = sh("ls /layers | wc -l; cat /top")
    result = run_in_sandbox(spec, [*reversed(layers), busybox_rootfs], upper)
    assert result.output_tail.split() == ["120", "119"]


def test_timeout_kills_the_sandbox(run) -> None:
    started = time.monotonic()
    result = run(sh("sleep 30 & sleep 30", timeout=0.5))
    assert result.timed_out and result.exit_code == 137
    assert time.monotonic() - started < 5


def test_parallel_runs_from_threads(busybox_rootfs: Path, tmp_path: Path) -> None:
    results: dict[int, RunResult] = {}

    def one(index: int) -> None:
        upper = tmp_path / f"upper{index}"
        upper.mkdir()
        results[index] = run_in_sandbox(sh(f"echo {index} > /n; cat /n"), [busybox_rootfs], upper)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {i: r.output_tail for i, r in results.items()} == {i: str(i) for i in range(6)}


KILLED_SCRIPT = """
import sys
from pathlib import Path
from buildgraph.worker.sandbox import RunSpec, run_in_sandbox
spec = RunSpec(("/bin/sh", "-c", "echo started; sleep 30 & sleep 30"), (("PATH", "/bin"),))
run_in_sandbox(spec, [Path(sys.argv[1])], Path(sys.argv[2]), work=Path(sys.argv[3]),
               output=lambda chunk: (sys.stdout.buffer.write(chunk), sys.stdout.flush()))
"""


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killing_buildgraph_kills_the_sandbox(busybox_rootfs: Path, tmp_path: Path) -> None:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    args = [sys.executable, "-c", KILLED_SCRIPT, str(busybox_rootfs), str(upper), str(work)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 2
        while len(sandbox := _descendants(process.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sandbox) == 3  # keeper, pid 1 (sh execs its last command), background sleep
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 2
    while any(map(_alive, sandbox)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(map(_alive, sandbox))
    for table in ("/proc/mounts", "/proc/self/mountinfo"):
        assert str(tmp_path) not in Path(table).read_text()
    again = tmp_path / "again"
    again.mkdir()
    result = run_in_sandbox(sh("echo ok > /ok"), [busybox_rootfs], again, work=work)
    assert result.exit_code == 0 and tree(again) == ["ok"]


def test_a_failing_output_callback_stops_the_sandbox(
    run, busybox_rootfs: Path, upper: Path
) -> None:
    def output(chunk: bytes) -> None:
        raise RuntimeError("disk full")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="disk full"):
        run_in_sandbox(sh("echo x; sleep 30"), [busybox_rootfs], upper, output=output)
    assert time.monotonic() - started < 5
    assert run(sh("echo again")).output_tail == "again"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RunSpec(argv=(), env=PATH), "RUN has no command"),
        (sh("true", network="bridge"), "unsupported network mode"),
        (sh("true", extra_binds=(Bind(Path("/nonexistent"), "/x"),)), "does not exist"),
        (sh("true", extra_binds=(Tmpfs("/../x"),)), "invalid mount target"),
        (sh("true", workdir="/etc/passwd"), "cannot create workdir /etc/passwd"),
    ],
)
def test_bad_specs_are_errors(run, spec: RunSpec, message: str) -> None:
    with pytest.raises(StepFailed, match=message):
        run(spec)
