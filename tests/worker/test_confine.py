"""RUN's confinement on the real sandbox: pivot_root, Docker's capabilities, no_new_privs,
seccomp; and --security=insecure giving them back."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildgraph.worker import seccomp
from buildgraph.worker.confine import DEFAULT_MASK
from buildgraph.worker.sandbox import Bind, RunResult, RunSpec, Secret, run_in_sandbox

PATH = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),)
DOCKER_DEFAULT_MASK = 0x00000000A80425FB  # `docker run busybox grep CapEff /proc/self/status`


STATUS = "grep -E '^(Uid|Cap[a-zA-Z]+|NoNewPrivs|Seccomp):' /proc/self/status"


def sh(script: str, **fields: object) -> RunSpec:
    return RunSpec(argv=("/bin/sh", "-c", script), env=PATH, **fields)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_mount_leaks(tmp_path: Path) -> Iterator[None]:
    yield
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


@pytest.fixture
def run(busybox_rootfs: Path, tmp_path: Path):
    def run(spec: RunSpec) -> RunResult:
        upper = tmp_path / f"upper-{len(list(tmp_path.iterdir()))}"
        upper.mkdir()
        return run_in_sandbox(spec, [busybox_rootfs], upper)

    return run


def status(result: RunResult) -> dict[str, str]:
    return dict(re.findall(r"^(\w+):\s+(\S+)", result.output_tail, re.MULTILINE))


def test_default_mask_is_dockers() -> None:
    assert DEFAULT_MASK == DOCKER_DEFAULT_MASK


def test_root_gets_dockers_capabilities_no_new_privs_and_seccomp(run) -> None:
    found = status(run(sh(STATUS)))
    for field in ("CapEff", "CapPrm", "CapBnd", "CapInh"):
        assert int(found[field], 16) == DOCKER_DEFAULT_MASK, field
    assert int(found["CapAmb"], 16) == 0
    assert found["NoNewPrivs"] == "1"
    assert found["Seccomp"] == "2"


def test_a_user_gets_no_effective_capabilities(run) -> None:
    found = status(run(sh(STATUS, user="65534")))
    assert found["Uid"] == "65534"
    assert int(found["CapEff"], 16) == int(found["CapPrm"], 16) == 0
    assert int(found["CapBnd"], 16) == DOCKER_DEFAULT_MASK
    assert found["NoNewPrivs"] == "1"


@pytest.mark.parametrize(
    "script",
    [
        "mkdir -p /m && mount -t tmpfs none /m",
        "mount -t proc proc /proc",
        "umount /proc",
        "unshare -m true",
        "unshare -U true",
        "unshare -n true",
        "chroot / true && unshare -r true",
    ],
)
def test_mount_and_unshare_fail(run, script: str) -> None:
    result = run(sh(script))
    assert result.exit_code != 0, result.output_tail
    assert re.search(r"not permitted|denied", result.output_tail, re.IGNORECASE)


def test_what_builds_need_still_works(run) -> None:
    script = (
        "set -e; touch /f && chown 123:456 /f && chmod 4755 /f && stat -c '%u %g %a' /f;"
        " mknod /dev/mine c 1 3 && mkdir -p /x && mknod /x/n c 1 3 && echo ok > /x/n;"
        " chroot / true; adduser -D -u 1000 u && su u -c 'id -u' 2>&1 || true;"
        " ping -c1 -W1 127.0.0.1 >/dev/null 2>&1 || true; hostname; echo done"
    )
    result = run(sh(script))
    assert result.exit_code == 0, result.output_tail
    assert "123 456 4755" in result.output_tail
    assert result.output_tail.endswith("done")


ESCAPE = (  # issue 16: printed a host file when RUN was only chrooted
    "mkdir -p /esc/bin /esc/proc && cp /bin/busybox /esc/bin/ && mount -t proc proc /esc/proc"
    " && exec 3</ && chroot /esc /bin/busybox sh -c 'cd -P /proc/self/fd/3 && "
    "cd -P ../../../../../.. && cat .{marker}'"
)


@pytest.mark.parametrize("security", ["sandbox", "insecure"])
def test_the_escape_cannot_read_a_host_file(run, tmp_path: Path, security: str) -> None:
    """Refused at `mount` by default; with every privilege (insecure) the mount works, but
    after pivot_root the fd on / is the step's root, so `..` never reaches the host."""
    marker = tmp_path / "host-marker"
    marker.write_text("host secret 5d41402a")
    result = run(sh(ESCAPE.format(marker=marker), security=security))
    assert result.exit_code != 0
    assert "5d41402a" not in result.output_tail
    expected = "permission denied" if security == "sandbox" else "No such file"
    assert expected in result.output_tail


def test_no_host_mount_is_left_in_the_step(run, tmp_path: Path) -> None:
    mountinfo = run(sh("cat /proc/self/mountinfo")).output_tail.splitlines()
    assert mountinfo[0].split()[4] == "/"  # the overlay is the root of the namespace
    assert not any(str(tmp_path) in line for line in mountinfo)
    assert not any(line.split()[4] in ("/dev/r", "/dev/secrets") for line in mountinfo)


def test_insecure_keeps_every_capability_and_may_mount(run) -> None:
    result = run(
        sh(
            f"mkdir -p /m && mount -t tmpfs none /m && echo mounted; {STATUS}",
            security="insecure",
        )
    )
    assert result.exit_code == 0, result.output_tail
    assert "mounted" in result.output_tail
    found = status(result)
    assert int(found["CapEff"], 16) & ~DOCKER_DEFAULT_MASK  # more than the default
    assert found["Seccomp"] == "0"
    assert found["NoNewPrivs"] == "0"


def test_secret_lives_on_a_tmpfs_with_its_mode(run, tmp_path: Path) -> None:
    secret = Secret("/run/secrets/token", b"s3cr3t-value", mode=0o440, uid=0, gid=1000)
    result = run(
        sh(
            "stat -c '%a %u %g' /run/secrets/token; cat /run/secrets/token; echo;"
            " grep /run/secrets/token /proc/self/mountinfo; echo x > /run/secrets/token",
            extra_binds=(secret,),
        )
    )
    assert "440 0 1000" in result.output_tail
    assert "s3cr3t-value" in result.output_tail
    line = next(line for line in result.output_tail.splitlines() if "/run/secrets/token" in line)
    assert " - tmpfs " in line and " ro," in line
    assert result.exit_code != 0  # read-only
    hits = subprocess.run(["grep", "-rl", "s3cr3t-value", str(tmp_path)], capture_output=True)
    assert hits.stdout == b""


def test_personality_is_limited_to_dockers_values() -> None:
    blocks = seccomp._complement_blocks(seccomp.PERSONALITIES)
    for value in (*seccomp.PERSONALITIES, 1, 7, 9, 0x20001, 0x40000, 0xFFFFFFFE, 1 << 40):
        refused = any(value & (((1 << 64) - 1) & ~(size - 1)) == low for low, size in blocks)
        assert refused == (value not in seccomp.PERSONALITIES), hex(value)


def test_filter_compiles_to_bpf() -> None:
    program = seccomp.default_filter()
    assert program and len(program) % 8 == 0
    assert stat.S_ISREG(os.stat("/proc/self/status").st_mode)


def test_kernel_settings_are_read_only(run) -> None:
    """Root in the initial user namespace could set kernel.core_pattern to a program the
    host's root then runs: /proc/sys is read-only, as runc makes it. (Writing the value it
    already has: harmless if this test ever fails.)"""
    result = run(
        sh(
            "cat /proc/sys/kernel/core_pattern > /tmp/pattern"
            " && cat /tmp/pattern > /proc/sys/kernel/core_pattern; echo status=$?;"
            " grep -E ' /proc/sys ' /proc/self/mountinfo"
        )
    )
    assert "status=1" in result.output_tail
    assert "Read-only file system" in result.output_tail
    line = next(line for line in result.output_tail.splitlines() if " /proc/sys " in line)
    assert " ro," in line


PROBE = Path(__file__).resolve().parents[1] / "data" / "syscall-probe" / "probe.c"
FILTERED = [
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "iopl",
    "ioperm",
    "userfaultfd",
    "lookup_dcookie",
    "quotactl",
    "syslog",
    "io_uring_setup",
    "fsopen",
    "open_tree",
    "clone_newns",
    "clone_newpid",
    "personality_no_aslr",
    "i386_mount",
]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(["gcc", "-static", "-O", "-o", str(binary), str(PROBE)], check=True)
    return binary


def test_the_seccomp_filter_refuses_what_dockers_profile_refuses(run, probe: Path) -> None:
    found = dict(
        line.split()
        for line in run(
            RunSpec(("/probe",), PATH, extra_binds=(Bind(probe, "/probe", readonly=True),))
        ).output_tail.splitlines()
    )
    filtered = [n for n in FILTERED if n != "i386_mount" or found["i386_getpid"] == "OK"]
    assert {name: found[name] for name in filtered} == dict.fromkeys(filtered, "EPERM")
    assert found["clone3"] == "ENOSYS"  # so that the C library falls back to clone
    assert found["personality_query"] == found["personality_linux32"] == "OK"
    assert found["ptrace"] == "ESRCH"  # allowed, as Docker allows it since Linux 4.8
    # 32-bit calls (int 0x80) go through the same filter, where the kernel has them at all
    assert found["i386_getpid"] in ("OK", "ENOSYS")


def test_the_probe_tells_filtered_from_refused(run, probe: Path) -> None:
    """Without the filter (insecure) the same calls fail otherwise or succeed: the test above
    sees the filter, not the kernel refusing bad arguments."""
    output = run(
        RunSpec(
            ("/probe",),
            PATH,
            extra_binds=(Bind(probe, "/probe", readonly=True),),
            security="insecure",
        )
    ).output_tail
    found = dict(line.split() for line in output.splitlines())
    assert found["unshare"] == found["personality_no_aslr"] == "OK"
    assert (found["mount"], found["bpf"]) == ("EFAULT", "EINVAL")
    assert found["i386_mount"] in ("EFAULT", "ENOSYS")
    assert found["clone3"] == "EINVAL"
