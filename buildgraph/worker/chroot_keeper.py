"""The keeper of the chroot isolation: the forked process that chroots into a materialized
root, puts there what the command needs (a fresh /dev, empty /proc and /sys, host files, the
RUN --mount targets), runs the command confined, and takes everything back out after, so the
root holds exactly what the command changed (see worker/chroot.py for the parent's side)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass

from buildgraph.worker import nsinit
from buildgraph.worker.confine import Confinement, confine
from buildgraph.worker.sandbox import RunSpec


@dataclass(frozen=True, slots=True)
class Placement:
    """Something the keeper puts at `target` for the command and takes away after it."""

    target: str  # relative to the root, no ".." (checked)
    kind: str  # "dir" (a fresh empty dir), "aside" (rename `name` in from the aside dir)
    name: str = ""  # the entry in the aside dir that "aside" moves in, and back after
    keep: bool = False  # move it back to the aside dir after (a cache); else delete it


def keep(
    spec: RunSpec,
    tree: str,
    aside: str,
    placements: list[Placement],
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

    def place(self, placement: Placement) -> None:
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
