"""Linux constants, libc calls and the helpers every forked child shares (overlay and
scratch mounts, openat2 in a root, fd layout, dying with the parent), and SetupError.

Nothing here allocates locks or starts threads: it runs in children of `os.fork()`."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import select
import signal

from buildgraph.worker.confine import ConfineError

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2
SYS_PIVOT_ROOT = 155 if platform.machine() == "x86_64" else 41  # 41: asm-generic (aarch64)

PR_SET_PDEATHSIG = 1
SYS_OPENAT2 = 437  # one number on every architecture (asm-generic table, Linux 5.6)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

STUB_FD = 3  # the message pipe to buildgraph: "stub\t...", "error\t..." lines; close-on-exec
SETUP_FAILED = 125  # keeper/init exit code when the message pipe carries the reason

LIBC = ctypes.CDLL(None, use_errno=True)  # mount, unshare, prctl, sethostname; errno kept
LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong]
LIBC.mount.argtypes += [ctypes.c_void_p]
LIBC.unshare.argtypes = [ctypes.c_int]
LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
LIBC.prctl.argtypes += [ctypes.c_ulong]
LIBC.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
LIBC.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
LIBC.syscall.restype = ctypes.c_long  # variadic: every call passes typed ctypes arguments


class OpenHow(ctypes.Structure):  # struct open_how, for openat2
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class SetupError(Exception):
    """A one-line reason the sandbox could not start the command."""


def mount_or_fail(
    source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data: str, what: str
) -> None:
    check(LIBC.mount(source, target, fstype, flags, data.encode() or None), what)


def check(result: int, what: str) -> None:
    """Raise SetupError naming `what` and errno if a libc call returned nonzero."""
    if result != 0:
        number = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(number)}")


def report(line: str) -> None:
    """Write one line to the message pipe on STUB_FD (best effort: the reader may be gone)."""
    data = (line.replace("\n", " ") + "\n").encode(errors="replace")
    with contextlib.suppress(OSError):
        os.write(STUB_FD, data)


def open_in_root(root_fd: int, path: str) -> int:
    """An O_PATH fd of `path` below `root_fd`, resolved as if `root_fd` were "/": absolute
    links and ".." stay inside it (openat2 with RESOLVE_IN_ROOT)."""
    how = OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = LIBC.syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(root_fd),
        ctypes.c_char_p(path.encode()),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), path)
    return fd


def mount_scratch() -> None:
    """A small tmpfs over /dev (this mount namespace only) and chdir into it: room for short
    names and mount points. Call after making / private in a new mount namespace."""
    mount_or_fail(
        b"tmpfs",
        b"/dev",
        b"tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "mode=700,size=1m",
        "mount scratch",
    )
    os.chdir("/dev")


def link_names(paths: tuple[str, ...] | list[str], prefix: str) -> list[str]:
    """Short symlinks in the cwd (`prefix`0, `prefix`1, ...) to `paths`, for mount options."""
    names = [f"{prefix}{index}" for index in range(len(paths))]
    for name, path in zip(names, paths, strict=True):
        os.symlink(path, name)
    return names


def mount_overlay(target: str, lowers: list[str], upper: str = "", work: str = "") -> None:
    """Overlay `lowers` (topmost first, names relative to the cwd) on `target`; read-only
    without `upper`. Lowers may not be empty: the kernel needs at least one."""
    # redirect_dir/metacopy/index off: the upper dir must be a plain diff the layer code reads.
    # volatile: no fsync into the upper dir; a crashed step is thrown away anyway.
    options = f"lowerdir={':'.join(lowers)},redirect_dir=off,metacopy=off,index=off"
    if upper:
        options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
        options += ",redirect_dir=off,metacopy=off,index=off,volatile"
    flags = 0 if upper else MS_RDONLY
    mount_or_fail(
        b"overlay", target.encode(), b"overlay", flags, options, f"mount overlay on {target}"
    )


def arrange_fds(stdout_fd: int, message_fd: int) -> None:
    """stdin from /dev/null, stdout and stderr to `stdout_fd`, the message pipe on STUB_FD;
    every other fd is closed."""
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stdout_fd, 2)
    os.dup2(message_fd, STUB_FD)
    os.set_inheritable(STUB_FD, False)
    os.closerange(STUB_FD + 1, 1 << 20)  # other threads' pipes must not stay open in here


def die_with_parent(parent_pid: int, alive_fd: int | None = None) -> None:
    """Arm SIGKILL-on-parent-death, then make sure the parent did not die before that."""
    check(LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if alive_fd is None:  # the keeper: its parent is buildgraph
        if os.getppid() != parent_pid:
            os._exit(SETUP_FAILED)
    elif select.select([alive_fd], [], [], 0)[0]:  # init: getppid() is 0 across the pid ns
        os._exit(SETUP_FAILED)  # EOF: the keeper is gone


def describe(err: BaseException) -> str:
    """A one-line reason for `err`: a SetupError as is, anything else with its type name."""
    if isinstance(err, SetupError | ConfineError):
        return str(err)
    return f"{type(err).__name__}: {err}"
