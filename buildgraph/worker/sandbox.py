"""Run one RUN command on overlayfs in fresh Linux namespaces; the upper dir becomes its diff.

This is the parent side: fork the keeper (see `nsinit` for what runs in the namespaces),
stream the command's output, reap it, and take any mount-point stubs back out of the upper dir.
Mount points the image lacks (/proc, /dev, /etc/resolv.conf, RUN --mount targets) come from a
"skeleton" used as the BOTTOM overlay lower, so the image's own entries win, nothing is copied
up to mount on, and `RUN true` leaves the upper dir empty. Only a mount point hidden by a
whiteout or an opaque dir has to be created in the merged view; `remove_stubs` undoes that.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from buildgraph.errors import StepFailed
from buildgraph.worker import nsinit
from buildgraph.worker.confine import INSECURE, Confinement, default_confinement
from buildgraph.worker.nsinit import MountOp
from buildgraph.worker.seccomp import SeccompUnavailable

CANCEL_POLL_MS = 100  # how soon a running command notices that the build was interrupted
TAIL_LINES = 40
TAIL_BYTES = 64 * 1024
MAX_LOWERS = 499  # the kernel stacks at most 500 lowers; the skeleton takes one
OPAQUE_XATTR = "trusted.overlay.opaque"
HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")  # bound read-only for network="host"


@dataclass(frozen=True, slots=True)
class Bind:
    source: Path  # a host file or directory
    target: str  # absolute path inside the root
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class StageBind:
    """A path inside another image's tree (RUN --mount from=): the snapshots are overlaid in
    the sandbox's mount namespace, `source` is resolved inside them, then bound on `target`."""

    lowers: tuple[Path, ...]  # the tree's snapshot dirs, topmost first (may be empty)
    source: str  # absolute path inside the tree; symlinks resolve inside it
    target: str
    readonly: bool = True
    scratch: Path | None = None  # rw: an empty dir for the overlay's upper, thrown away after


@dataclass(frozen=True, slots=True)
class Tmpfs:
    target: str
    size: int | None = None  # bytes; None: the kernel's default (half of RAM)


@dataclass(frozen=True, slots=True)
class Secret:
    """A file made from `content` on a tmpfs inside the sandbox: never written to a disk."""

    target: str
    content: bytes = field(repr=False)
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class SecretEnv:
    """A secret as an environment variable of the command (RUN --mount=type=secret,env=):
    in memory only, never in a step's key."""

    name: str
    value: str = field(repr=False)


def with_secret_env(spec: RunSpec) -> RunSpec:
    """`spec` whose environment holds its SecretEnv mounts, and whose binds no longer do."""
    values = {m.name: m.value for m in spec.extra_binds if isinstance(m, SecretEnv)}
    if not values:
        return spec
    env = tuple((k, v) for k, v in spec.env if k not in values) + tuple(values.items())
    binds = tuple(m for m in spec.extra_binds if not isinstance(m, SecretEnv))
    return replace(spec, env=env, extra_binds=binds)


@dataclass(frozen=True, slots=True)
class RunSpec:
    argv: tuple[str, ...]  # already SHELL-wrapped: ("/bin/sh", "-c", "echo hi")
    env: tuple[tuple[str, str], ...]  # exactly the environment the command sees
    user: str = ""  # "", "name", "uid", "name:group", "uid:gid", looked up in the root's files
    workdir: str = "/"  # created (as root) if missing
    network: str = "host"  # "host" | "none"
    hostname: str = "buildgraph"
    extra_binds: tuple[Bind | StageBind | Tmpfs | Secret | SecretEnv, ...] = ()  # RUN --mount
    timeout: float | None = None  # seconds; then the whole sandbox is killed
    security: str = "sandbox"  # "insecure": every capability, no seccomp (RUN --security)


@dataclass(frozen=True, slots=True)
class RunResult:
    exit_code: int  # 128+N when killed by signal N (137 after a timeout)
    output_tail: str  # the last lines of combined stdout/stderr
    duration_s: float
    timed_out: bool = False


def run_in_sandbox(
    spec: RunSpec,
    lowers: Sequence[Path],
    upper: Path,
    *,
    work: Path | None = None,
    output: Callable[[bytes], None] | None = None,
    cancel: threading.Event | None = None,
) -> RunResult:
    """Run `spec` on lowers (topmost first) + `upper` (empty, same fs as `work`).

    A non-zero exit is a result; a sandbox that cannot start the command (bad user, failed
    mount, missing executable) raises StepFailed with a one-line reason.
    """
    spec = with_secret_env(spec)
    _check_spec(spec, lowers, upper)
    upper = Path(upper).absolute()
    scratch = Path(tempfile.mkdtemp(prefix=".sandbox-", dir=work or upper.parent)).absolute()
    try:
        plan = nsinit.ChildPlan(
            lowers=tuple(str(Path(lower).absolute()) for lower in lowers),
            upper=str(upper),
            work=str(scratch),
            mounts=plan_mounts(spec),
            argv=spec.argv,
            env=spec.env,
            user=spec.user,
            workdir=spec.workdir,
            hostname=spec.hostname,
            new_net=spec.network == "none",
            confinement=INSECURE if spec.security == "insecure" else _default_confinement(),
        )
        return _run(plan, spec.timeout, upper, output, cancel)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _default_confinement() -> Confinement:
    try:
        return default_confinement()
    except SeccompUnavailable as err:  # never run a command less confined than asked
        raise StepFailed(f"sandbox: {err}") from err


def plan_mounts(spec: RunSpec) -> tuple[MountOp, ...]:
    """What the command sees besides the overlay, in mount order."""
    hidden = nsinit.MS_NOSUID | nsinit.MS_NODEV | nsinit.MS_NOEXEC
    ops = [
        MountOp("/proc", "proc", flags=hidden),
        MountOp(
            "/dev",
            "tmpfs",
            flags=nsinit.MS_NOSUID | nsinit.MS_STRICTATIME,
            data="mode=755,size=65536k",
        ),
        MountOp("/sys", "sysfs", flags=hidden | nsinit.MS_RDONLY, optional=True),
    ]
    if spec.network == "host":
        ops += [
            MountOp(
                path, "bind", source=path, flags=nsinit.MS_RDONLY, directory=False, optional=True
            )
            for path in HOST_FILES
            if os.path.isfile(path)
        ]
    for mount in spec.extra_binds:
        if isinstance(mount, Secret):
            ops.append(
                MountOp(
                    _clean(mount.target),
                    "secret",
                    directory=False,
                    content=mount.content,
                    mode=mount.mode,
                    uid=mount.uid,
                    gid=mount.gid,
                )
            )
        elif isinstance(mount, Bind):
            flags = nsinit.MS_RDONLY if mount.readonly else 0
            source = str(Path(mount.source).absolute())
            ops.append(
                MountOp(_clean(mount.target), "bind", source, flags, "", os.path.isdir(source))
            )
        elif isinstance(mount, StageBind):
            flags = nsinit.MS_RDONLY if mount.readonly else 0
            tree = tuple(str(Path(lower).absolute()) for lower in mount.lowers)
            scratch = str(Path(mount.scratch).absolute()) if mount.scratch else ""
            target = _clean(mount.target)
            ops.append(MountOp(target, "bind", mount.source, flags, tree=tree, scratch=scratch))
        else:
            data = "mode=1777" + (f",size={mount.size}" if mount.size else "")
            ops.append(
                MountOp(
                    _clean(mount.target),
                    "tmpfs",
                    flags=nsinit.MS_NOSUID | nsinit.MS_NODEV,
                    data=data,
                )
            )
    return tuple(ops)


def _check_spec(spec: RunSpec, lowers: Sequence[Path], upper: Path) -> None:
    if not spec.argv:
        raise StepFailed("RUN has no command")
    if spec.network not in ("host", "none"):
        raise StepFailed(f"unsupported network mode {spec.network!r} (use host or none)")
    if spec.security not in ("sandbox", "insecure"):
        raise StepFailed(f"unsupported security mode {spec.security!r} (sandbox or insecure)")
    if len(lowers) > MAX_LOWERS:
        raise StepFailed(f"{len(lowers)} layers: overlayfs stacks at most {MAX_LOWERS}")
    trees = [mount for mount in spec.extra_binds if isinstance(mount, StageBind)]
    if any(len(tree.lowers) > MAX_LOWERS for tree in trees):
        raise StepFailed(f"a --mount from= tree: overlayfs stacks at most {MAX_LOWERS} layers")
    dirs = [path for tree in trees for path in (*tree.lowers, tree.scratch) if path is not None]
    for path in [*lowers, upper, *dirs]:
        if Path(path).absolute().is_relative_to("/dev"):  # the child hides /dev (see nsinit)
            raise StepFailed(f"sandbox dir {path} must not be under /dev")
    for mount in spec.extra_binds:
        if isinstance(mount, Bind) and not os.path.exists(mount.source):
            raise StepFailed(f"mount source {mount.source} does not exist")


def _clean(target: str) -> str:
    parts = [p for p in target.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise StepFailed(f"invalid mount target {target!r}")
    return "/" + "/".join(parts)


def _run(
    plan: nsinit.ChildPlan,
    timeout: float | None,
    upper: Path,
    output: Callable[[bytes], None] | None,
    cancel: threading.Event | None = None,
) -> RunResult:
    out_read, out_write = os.pipe()
    message_read, message_write = os.pipe()
    started = time.monotonic()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        nsinit.child_main(plan, out_write, message_write, parent)
    os.close(out_write)
    os.close(message_write)
    reaped = False
    try:
        deadline = None if timeout is None else started + timeout
        tail, timed_out = _stream(out_read, pid, deadline, output, cancel)
        _, status = os.waitpid(pid, 0)
        reaped = True
        duration = time.monotonic() - started
        messages = _read_all(message_read).decode(errors="replace").splitlines()
    finally:
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(out_read)
        os.close(message_read)
    errors = [line.partition("\t")[2] for line in messages if line.startswith("error\t")]
    remove_stubs(upper, [line.split("\t", 2)[1:] for line in messages if line.startswith("stub\t")])
    if errors and not timed_out:
        raise StepFailed(errors[0])
    code = os.waitstatus_to_exitcode(status)
    text = _tail(tail)
    if cancel is not None and cancel.is_set():
        raise StepFailed("interrupted")
    if timed_out:
        text += f"\nbuildgraph: killed after the {timeout:g}s timeout"
    return RunResult(128 - code if code < 0 else code, text, duration, timed_out)


def _stream(
    fd: int,
    pid: int,
    deadline: float | None,
    output: Callable[[bytes], None] | None,
    cancel: threading.Event | None = None,
) -> tuple[bytearray, bool]:
    """Pass output on until the pipe closes; kill the sandbox at the deadline or on cancel."""
    tail = bytearray()
    timed_out = killed = False
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        now = time.monotonic()
        if not killed and cancel is not None and cancel.is_set():
            os.kill(pid, signal.SIGKILL)  # the build is being interrupted: stop at once
            killed = True
        if not killed and deadline is not None and now >= deadline:
            os.kill(pid, signal.SIGKILL)  # init gets its death signal, then the pid ns dies
            killed = timed_out = True
        waits = [] if killed else [int((deadline - now) * 1000) + 1] if deadline else []
        if cancel is not None and not killed:
            waits.append(CANCEL_POLL_MS)
        if not poller.poll(min(waits) if waits else None):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return tail, timed_out
        if output is not None:
            output(chunk)
        tail += chunk
        if len(tail) > 2 * TAIL_BYTES:
            del tail[:-TAIL_BYTES]


def _tail(data: bytes) -> str:
    lines = data.decode(errors="replace").splitlines()
    return "\n".join(lines[-TAIL_LINES:])


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def remove_stubs(upper: Path, stubs: Sequence[Sequence[str]]) -> None:
    """Take mount points created in the merged view (and the dirs copied up for them) out of
    `upper`. Each stub is (depth of its first created component, path). Walks with dir fds and
    O_NOFOLLOW, so a symlink the command left in `upper` cannot send us outside it."""
    candidates: dict[str, bool] = {}  # path -> created by us (else copied up for us)
    for created, path in stubs:
        parts = [p for p in path.split("/") if p]
        for depth in range(1, len(parts) + 1):
            key = "/".join(parts[:depth])
            candidates[key] = candidates.get(key, False) or depth >= int(created)
    for key in sorted(candidates, key=lambda k: k.count("/"), reverse=True):
        _remove_if_unchanged(upper, key, candidates[key])


def _remove_if_unchanged(upper: Path, relative: str, created: bool) -> None:
    *parents, name = relative.split("/")
    try:
        fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        for part in parents:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISREG(info.st_mode) and created and info.st_size == 0:
            os.unlink(name, dir_fd=fd)
        elif stat.S_ISDIR(info.st_mode) and (created or not _is_opaque(fd, name)):
            os.rmdir(name, dir_fd=fd)  # fails (and is kept) unless empty
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_opaque(dir_fd: int, name: str) -> bool:
    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        return os.getxattr(child, OPAQUE_XATTR) == b"y"
    except OSError:
        return False
    finally:
        os.close(child)
