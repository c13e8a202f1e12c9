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
from dataclasses import dataclass
from pathlib import Path

from buildgraph.errors import StepFailed
from buildgraph.worker import nsinit
from buildgraph.worker.confine import DEFAULT_CAPABILITIES, Confinement, confine
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


@dataclass(frozen=True, slots=True)
class _Placement:
    """Something the keeper puts at `target` for the command and takes away after it."""

    target: str  # relative to the root, no ".." (checked)
    kind: str  # "dir" (a fresh empty dir), "aside" (rename `name` in from the aside dir)
    name: str = ""  # the entry in the aside dir that "aside" moves in, and back after
    keep: bool = False  # move it back to the aside dir after (a cache); else delete it


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
        _keeper(spec, str(tree), str(aside), placements, policy, out_write, message_write, parent)
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
) -> tuple[list[_Placement], dict[str, Path]]:
    """What the keeper will move in, made ready in `aside` (ours, outside the root, so no
    path of the image is followed here). Returns the placements and the cache dirs moved
    out of the store (aside name -> their place in the store)."""
    placements = [_Placement(name, "dir") for name in VOLATILE_DIRS]
    caches: dict[str, Path] = {}
    for host_file, target in zip(HOST_SOURCES, HOST_FILES, strict=True):
        if os.path.isfile(host_file):
            name = f"host-{os.path.basename(target)}"
            shutil.copyfile(host_file, aside / name)
            os.chmod(aside / name, 0o644)
            placements.append(_Placement(target, "aside", name))
    for index, mount in enumerate(spec.extra_binds):
        target = _relative(mount.target)
        name = f"mount-{index}"
        if isinstance(mount, Tmpfs):
            placements.append(_Placement(target, "dir"))
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
            placements.append(_Placement(target, "aside", name))
        elif isinstance(mount, StageBind):  # a copy of the path in the stage's own root
            placements.append(_Placement(target, "aside", _copy_from_tree(mount, aside, name)))
        elif isinstance(mount, Bind) and Path(mount.source).parent == cache_root:
            os.rename(mount.source, aside / name)  # same filesystem: the cache dir itself
            caches[name] = Path(mount.source)
            placements.append(_Placement(target, "aside", name, keep=True))
        else:  # a bind of the build context: a copy (read-only is not enforced here)
            source = Path(mount.source)
            if source.is_dir():
                shutil.copytree(source, aside / name, symlinks=True)
            else:
                shutil.copy2(source, aside / name)
            placements.append(_Placement(target, "aside", name))
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


# --- the keeper (forked; chrooted into the root) -------------------------------------------


def _keeper(
    spec: RunSpec,
    tree: str,
    aside: str,
    placements: list[_Placement],
    policy: Confinement,
    stdout_fd: int,
    message_fd: int,
    parent: int,
) -> None:
    code = nsinit.SETUP_FAILED
    try:
        nsinit.arrange_fds(stdout_fd, message_fd)
        nsinit.die_with_parent(parent)
        os.setsid()  # buildgraph's Ctrl-C goes to its own group, not to us
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # until the command runs: see _run_command
        aside_fd = os.open(aside, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        os.chroot(tree)
        os.chdir("/")
        os.umask(0)
        undo = _Undo(aside_fd)
        try:
            for placement in placements:
                undo.place(placement)
            _populate_dev()
            os.umask(0o022)
            code = _run_command(spec, policy)
        finally:
            os.umask(0)
            undo.restore()
        nsinit.report("restored")
    except BaseException as err:
        nsinit.report(f"error\tsandbox: {nsinit.describe(err)}")
    finally:
        os._exit(code)


def _run_command(spec: RunSpec, policy: Confinement) -> int:
    uid, gid, groups = nsinit.resolve_user(spec.user)
    if not os.path.isdir(spec.workdir):
        nsinit._make_workdir(spec.workdir)
    child = 0
    stop_asked = False

    def stop(_signum: int, _frame: object) -> None:  # buildgraph: stop the command now
        nonlocal stop_asked
        stop_asked = True
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop)  # before the fork: no moment without it
    keeper = os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover - the command
        try:
            os.setpgid(0, 0)
            os.chdir(spec.workdir)
            confine(policy, uid, gid, groups)
            nsinit.die_with_parent(keeper)  # armed after confine: a new uid clears it
            nsinit._reset_signals()
            env = dict(spec.env)
            env.setdefault("HOME", nsinit.home_of(uid))
            try:
                os.execvpe(spec.argv[0], list(spec.argv), env)
            except OSError as err:
                raise nsinit.SetupError(nsinit._exec_error(spec.argv[0], err)) from err
        except BaseException as err:
            nsinit.report(f"error\t{nsinit.describe(err)}")
        finally:
            os._exit(nsinit.SETUP_FAILED)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.setpgid(child, child)  # also here: whichever runs first, the group exists for a kill
    if stop_asked:
        stop(signal.SIGTERM, None)
    _, status = os.waitpid(child, 0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child, signal.SIGKILL)  # what the command left running (a daemon) ends too
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class _Undo:
    """Places things in the root (we are chrooted there) and takes them all back out."""

    def __init__(self, aside_fd: int) -> None:
        self.aside_fd = aside_fd
        self.steps: list[Callable[[], None]] = []

    def place(self, placement: _Placement) -> None:
        target = placement.target
        parent = os.path.dirname(target)
        self._make_parents(parent)
        self._keep_times(parent or ".")
        if os.path.lexists(target):
            saved = f"saved-{len(self.steps)}"
            os.rename(target, saved, dst_dir_fd=self.aside_fd)
            self.steps.append(lambda: os.rename(saved, target, src_dir_fd=self.aside_fd))
        if placement.kind == "dir":
            os.mkdir(target, 0o755)
            self.steps.append(lambda: _remove(target))
            return
        os.rename(placement.name, target, src_dir_fd=self.aside_fd)
        if placement.keep:
            name = placement.name
            self.steps.append(lambda: os.rename(target, name, dst_dir_fd=self.aside_fd))
        else:
            self.steps.append(lambda: _remove(target))

    def restore(self) -> None:
        """Undo in reverse. What the command itself removed stays removed: a step whose path
        (or its parent) is gone, or is no longer a dir, is skipped, as if what we placed
        there had gone with it (a saved original left in the aside dir is then dropped)."""
        for step in reversed(self.steps):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                step()
        self.steps.clear()

    def _make_parents(self, path: str) -> None:
        if not path or os.path.isdir(path):
            return
        self._make_parents(os.path.dirname(path))
        self._keep_times(os.path.dirname(path) or ".")
        os.mkdir(path, 0o755)
        self.steps.append(lambda: os.rmdir(path))

    def _keep_times(self, directory: str) -> None:
        """The dir's times come back after: our entries must not mark it changed."""
        info = os.stat(directory, follow_symlinks=False)
        times = (info.st_atime_ns, info.st_mtime_ns)
        self.steps.append(lambda: os.utime(directory, ns=times, follow_symlinks=False))


def _populate_dev() -> None:
    for name, major, minor in nsinit.DEVICES:
        os.mknod(f"dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(f"dev/{name}", 0o666)
    for name, target in nsinit.DEV_LINKS:
        os.symlink(target, f"dev/{name}")
    os.mkdir("dev/pts", 0o755)
    os.mkdir("dev/shm", 0o1777)
    os.chmod("dev/shm", 0o1777)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


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
