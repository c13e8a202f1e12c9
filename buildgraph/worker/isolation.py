"""Which isolation RUN and COPY get here: probe once what the kernel and the container allow.

- namespaces: new mount, pid, IPC and UTS namespaces, overlayfs over the layer snapshots,
  pivot_root (needs CAP_SYS_ADMIN and a seccomp profile that allows unshare and mount: root
  on a host or VM, a privileged container).
- chroot: a materialized root per stage, chroot, a metadata walk for the diff (needs only
  Docker's default capabilities under its default seccomp profile: an ordinary container).

`auto` takes namespaces where they work, chroot otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass

from buildgraph.errors import InputError
from buildgraph.worker import nsinit

MODES = ("auto", "namespaces", "chroot")


@dataclass(frozen=True, slots=True)
class Probe:
    namespaces: str  # "" if they work, else why not (one line)
    chroot: str  # "" if chroot works, else why not


@functools.cache  # once per process: a fork each
def probe() -> Probe:
    return Probe(_try(_namespaces_child), _try(_chroot_child))


def choose(requested: str) -> tuple[str, str]:
    """(the isolation to use, a one-line reason) for `--isolation requested`; an isolation
    that cannot work here is bad input (exit 2) saying what is missing."""
    if requested not in MODES:
        raise InputError(f"--isolation {requested!r}: expected one of {', '.join(MODES)}")
    found = probe()
    if requested == "namespaces" and found.namespaces:
        raise InputError(
            f"--isolation namespaces is not possible here: {found.namespaces} (it needs "
            "CAP_SYS_ADMIN and a seccomp profile that allows unshare and mount; "
            "--isolation chroot needs neither)"
        )
    if requested == "chroot" and found.chroot:
        raise InputError(f"--isolation chroot is not possible here: {found.chroot}")
    if requested != "auto":
        return requested, "as asked"
    if not found.namespaces:
        return "namespaces", "unshare, mount and overlayfs work here"
    if not found.chroot:
        return "chroot", f"namespaces are not available ({found.namespaces})"
    raise InputError(
        f"no isolation for RUN works here: namespaces: {found.namespaces}; "
        f"chroot: {found.chroot} (it needs CAP_SYS_CHROOT, in Docker's default set)"
    )


def describe() -> str:
    """What `buildgraph info` prints about isolation."""
    found = probe()
    lines = [
        f"namespaces: {_availability(found.namespaces)}",
        f"chroot: {_availability(found.chroot)}",
    ]
    with contextlib.suppress(InputError):
        mode, why = choose("auto")
        lines.append(f"isolation auto: {mode} ({why})")
    return "\n".join(lines)


def _availability(why_not: str) -> str:
    return "available" if not why_not else f"unavailable: {why_not}"


def _try(child) -> str:
    """Run `child(scratch_dir)` in a fork; "" if it exits 0, else the reason it reported."""
    scratch = tempfile.mkdtemp(prefix="buildgraph-probe-")
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            code = 1
            try:
                os.close(read_fd)
                child(scratch)
                code = 0
            except BaseException as err:
                with contextlib.suppress(OSError):
                    os.write(write_fd, nsinit.describe(err).encode())
            finally:
                os._exit(code)
        os.close(write_fd)
        message = b""
        while chunk := os.read(read_fd, 4096):
            message += chunk
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            return ""
        return message.decode(errors="replace") or f"probe exited {status}"
    finally:
        os.close(read_fd)
        shutil.rmtree(scratch, ignore_errors=True)


def _namespaces_child(scratch: str) -> None:
    """What the sandbox needs: the namespaces, a private tmpfs, an overlay on it."""
    flags = nsinit.CLONE_NEWNS | nsinit.CLONE_NEWPID | nsinit.CLONE_NEWIPC | nsinit.CLONE_NEWUTS
    nsinit.check(nsinit.LIBC.unshare(flags), "unshare")
    private = nsinit.MS_REC | nsinit.MS_PRIVATE
    nsinit.check(nsinit.LIBC.mount(b"none", b"/", None, private, None), "mount (make / private)")
    nsinit.check(nsinit.LIBC.mount(b"tmpfs", scratch.encode(), b"tmpfs", 0, None), "mount tmpfs")
    os.chdir(scratch)
    for name in ("lower", "upper", "work", "merged"):
        os.mkdir(name)
    nsinit.mount_overlay("merged", ["lower"], "upper", "work")


def _chroot_child(scratch: str) -> None:
    os.chroot(scratch)
