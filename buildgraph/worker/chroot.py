"""RUN in a materialized root with chroot alone: the isolation for where mount(2) and
unshare(2) are refused (an ordinary container under Docker's default seccomp profile).

A forked keeper chroots into the root and puts there, for the command only, what the
namespaces sandbox mounts: a fresh /dev (Docker's device nodes), empty /proc and /sys, the
host's resolv.conf and hosts, and the RUN --mount targets (a cache dir moved in by rename, a
copy of a context bind, a secret file, an empty tmpfs dir). It runs the command as a child in
a process group of its own, under `confine` (Docker's capabilities less CAP_SYS_CHROOT, so the
command cannot chroot its way out; no_new_privs; the seccomp filter, refusing also ptrace and
the reading of other processes' memory, which share this pid namespace). When the command is
done, or buildgraph says stop (SIGTERM), the keeper kills what is left of that group and puts
everything back as it was, so the root then holds exactly what the command changed.

What this cannot give (README, "Security"): no pid, network, IPC or UTS namespace (the command
sees and can signal the other processes of the container, shares its network, and
`--network=none` is refused); no /proc inside the root; /proc/sys is the container's own; a
secret is a file in the root (the cache dir's disk) while its step runs.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from buildgraph.errors import StepFailed
from buildgraph.worker import nsinit
from buildgraph.worker.chroot_keeper import Placement, keep
from buildgraph.worker.confine import DEFAULT_CAPABILITIES, Confinement
from buildgraph.worker.sandbox import (
    CANCEL_POLL_MS,
    TAIL_BYTES,
    Bind,
    RunResult,
    RunSpec,
    Secret,
    StageBind,
    Tmpfs,
    with_secret_env,
)
from buildgraph.worker.sandbox import (
    HOST_FILES as HOST_SOURCES,
)

VOLATILE_DIRS = ("dev", "proc", "sys")  # mount points in a container: never in a layer
HOST_FILES = ("etc/resolv.conf", "etc/hosts")  # bound from the host when network is "host"
NO_CHROOT = 1 << DEFAULT_CAPABILITIES["SYS_CHROOT"]
GRACE_S = 10.0  # after SIGTERM, how long the keeper may take to put things back


def chroot_confinement(insecure: bool) -> Confinement:
    """Docker's defaults less CAP_SYS_CHROOT, with ptrace and friends refused too."""
    from buildgraph.worker.confine import DEFAULT_MASK
    from buildgraph.worker.seccomp import SHARED_PID_NAMESPACE_DENIED, default_filter

    if insecure:
        return Confinement(capabilities=None, no_new_privs=False, seccomp=b"")
    return Confinement(DEFAULT_MASK & ~NO_CHROOT, True, default_filter(SHARED_PID_NAMESPACE_DENIED))


def run_in_root(
    spec: RunSpec,
    tree: Path,
    aside: Path,
    *,
    cache_root: Path,
    output: Callable[[bytes], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[RunResult, bool]:
    """Run `spec` chrooted in `tree` (materialized, held by the caller); `aside` is an empty
    dir of ours on the same filesystem, as `cache_root` (where the RUN --mount=type=cache
    dirs live, moved in and out by rename). Returns the result and whether the tree was put
    back clean (else the caller must throw the tree away)."""
    spec = with_secret_env(spec)
    if spec.network != "host":
        raise StepFailed(
            "RUN --network=none needs a network namespace, which the chroot isolation cannot "
            "make (use --isolation namespaces where unshare is allowed)"
        )
    placements, caches = _prepare_aside(spec, aside, cache_root)
    policy = chroot_confinement(spec.security == "insecure")
    out_read, out_write = os.pipe()
    message_read, message_write = os.pipe()
    started = time.monotonic()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        keep(spec, str(tree), str(aside), placements, policy, out_write, message_write, parent)
    os.close(out_write)
    os.close(message_write)
    reaped = False
    try:
        deadline = None if spec.timeout is None else started + spec.timeout
        tail, stopped, status = _stream(out_read, pid, deadline, output, cancel)
        reaped = True
        messages = _read_all(message_read).decode(errors="replace").splitlines()
    finally:
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(out_read)
        os.close(message_read)
        for name, home in caches.items():  # the cache dirs go home whatever happened
            with contextlib.suppress(OSError):
                os.rename(aside / name, home)
        _empty(aside)
    clean = "restored" in messages
    errors = [line.partition("\t")[2] for line in messages if line.startswith("error\t")]
    if errors and stopped != "timeout":
        raise StepFailed(errors[0])
    if cancel is not None and cancel.is_set():
        raise StepFailed("interrupted")
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    text = "\n".join(tail.decode(errors="replace").splitlines()[-40:])
    if stopped == "timeout":
        text += f"\nbuildgraph: killed after the {spec.timeout:g}s timeout"
    duration = time.monotonic() - started
    return RunResult(code, text, duration, stopped == "timeout"), clean


def _prepare_aside(
    spec: RunSpec, aside: Path, cache_root: Path
) -> tuple[list[Placement], dict[str, Path]]:
    """What the keeper will move in, made ready in `aside` (ours, outside the root, so no
    path of the image is followed here). Returns the placements and the cache dirs moved
    out of the store (aside name -> their place in the store)."""
    placements = [Placement(name, "dir") for name in VOLATILE_DIRS]
    caches: dict[str, Path] = {}
    for host_file, target in zip(HOST_SOURCES, HOST_FILES, strict=True):
        if os.path.isfile(host_file):
            name = f"host-{os.path.basename(target)}"
            shutil.copyfile(host_file, aside / name)
            os.chmod(aside / name, 0o644)
            placements.append(Placement(target, "aside", name))
    for index, mount in enumerate(spec.extra_binds):
        target = _relative(mount.target)
        name = f"mount-{index}"
        if isinstance(mount, Tmpfs):
            placements.append(Placement(target, "dir"))
        elif isinstance(mount, Secret):
            fd = os.open(aside / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(mount.content)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchown(fd, mount.uid, mount.gid)
                os.fchmod(fd, mount.mode)
            finally:
                os.close(fd)
            placements.append(Placement(target, "aside", name))
        elif isinstance(mount, StageBind):  # a copy of the path in the stage's own root
            placements.append(Placement(target, "aside", _copy_from_tree(mount, aside, name)))
        elif isinstance(mount, Bind) and Path(mount.source).parent == cache_root:
            os.rename(mount.source, aside / name)  # same filesystem: the cache dir itself
            caches[name] = Path(mount.source)
            placements.append(Placement(target, "aside", name, keep=True))
        else:  # a bind of the build context: a copy (read-only is not enforced here)
            source = Path(mount.source)
            if source.is_dir():
                shutil.copytree(source, aside / name, symlinks=True)
            else:
                shutil.copy2(source, aside / name)
            placements.append(Placement(target, "aside", name))
    return placements, caches


def _copy_from_tree(mount: StageBind, aside: Path, name: str) -> str:
    """Copy `mount.source` of the stage's materialized root into aside/NAME, resolving links
    inside that root; the entry of the aside dir that holds it (rw writes are thrown away
    with the copy; read-only is not enforced in a copy)."""
    from buildgraph.worker.copy import copy_in_root
    from buildgraph.worker.copy_plan import CopyJob, clean_parts

    (tree,) = mount.lowers
    root_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = nsinit.open_in_root(root_fd, mount.source or "/")
    except OSError as err:
        raise StepFailed(f"mount source {mount.source}: {err.strerror}") from err
    finally:
        os.close(root_fd)
    try:
        is_dir = stat.S_ISDIR(os.fstat(found).st_mode)
    finally:
        os.close(found)
    (aside / name).mkdir()
    copy_in_root(CopyJob(sources=(mount.source or "/",), dest="/"), aside / name, source_tree=tree)
    parts = clean_parts(mount.source or "/")
    return name if is_dir or not parts else f"{name}/{parts[-1]}"


def _relative(target: str) -> str:
    parts = [part for part in target.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise StepFailed(f"invalid mount target {target!r}")
    return "/".join(parts)


# --- the parent side -----------------------------------------------------------------------


def _stream(
    fd: int,
    pid: int,
    deadline: float | None,
    output: Callable[[bytes], None] | None,
    cancel: threading.Event | None,
) -> tuple[bytearray, str, int]:
    """Pass output on until the keeper has exited and the pipe is quiet; on cancel or at the
    deadline ask the keeper to stop (SIGTERM), and kill it if it does not within GRACE_S.
    Returns the output tail, "" / "cancel" / "timeout", and the keeper's wait status."""
    tail = bytearray()
    stopped = ""
    asked_at = 0.0
    status: int | None = None
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        now = time.monotonic()
        if not stopped and cancel is not None and cancel.is_set():
            stopped, asked_at = "cancel", now
            _signal(pid, signal.SIGTERM)
        if not stopped and deadline is not None and now >= deadline:
            stopped, asked_at = "timeout", now
            _signal(pid, signal.SIGTERM)
        if stopped and status is None and now - asked_at > GRACE_S:
            _signal(pid, signal.SIGKILL)
        if status is None:
            done, found = os.waitpid(pid, os.WNOHANG)
            status = found if done else None
        ready = poller.poll(CANCEL_POLL_MS)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk and status is None:
                time.sleep(0.01)  # the pipe is closed: only the keeper's exit is awaited
            if chunk:
                if output is not None:
                    output(chunk)
                tail += chunk
                if len(tail) > 2 * TAIL_BYTES:
                    del tail[:-TAIL_BYTES]
                continue
        if status is not None:  # exited, and the pipe is closed or quiet (a setsid daemon)
            return tail, stopped, status


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _empty(directory: Path) -> None:
    for entry in list(directory.iterdir()) if directory.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
