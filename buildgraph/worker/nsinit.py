"""The forked side of the RUN sandbox: namespaces, mounts, pivot_root, confinement and exec.

Everything here runs in a child of `os.fork()` and must never return into the caller's stack:
`child_main` ends in `os._exit` or `execve`. It imports nothing after the fork and touches no
locks, so it is safe to fork from a threaded buildgraph. Process tree:

    buildgraph ── keeper (new mount/pid/ipc/uts[/net] ns, waits) ── init = the command (pid 1)

Both children die with their parent (PR_SET_PDEATHSIG); when pid 1 exits the kernel kills the
rest of its pid namespace, and when the keeper exits the mount namespace and its mounts go away.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import socket
import stat
import struct
from dataclasses import dataclass, field, replace

from buildgraph.worker.confine import Confinement, confine

# Other worker modules use some of these as nsinit.NAME (worker/chroot.py, isolation.py):
# they moved to devices, kernel and users, and stay importable from here.
from buildgraph.worker.devices import (  # noqa: F401
    DEV_LINKS,
    DEVICES,
    populate_dev,
    protect_kernel_files,
)
from buildgraph.worker.kernel import (  # noqa: F401
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    IFF_UP,
    LIBC,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_STRICTATIME,
    PR_SET_PDEATHSIG,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    SETUP_FAILED,
    SIOCGIFFLAGS,
    SIOCSIFFLAGS,
    STUB_FD,
    SYS_OPENAT2,
    SYS_PIVOT_ROOT,
    OpenHow,
    SetupError,
    arrange_fds,
    check,
    describe,
    die_with_parent,
    link_names,
    mount_overlay,
    mount_scratch,
    open_in_root,
    report,
)
from buildgraph.worker.kernel import mount_or_fail as _mount
from buildgraph.worker.users import (
    home_of,
    read_db,  # noqa: F401
    resolve_user,
)


@dataclass(frozen=True, slots=True)
class MountOp:
    """One mount inside the new root, made after chroot so `target` resolves inside it."""

    target: str  # absolute path inside the root
    fstype: str  # "bind", "secret" or a filesystem type
    source: str = ""  # host path for "bind" (opened before chroot)
    flags: int = 0
    data: str = ""
    directory: bool = True  # the kind of mount point to create if it is missing
    optional: bool = False  # skip (instead of failing) if the mount point has the wrong type
    content: bytes = field(default=b"", repr=False)  # "secret": the file's bytes, never on disk
    mode: int = 0o400  # "secret": the file's mode, owner and group
    uid: int = 0
    gid: int = 0
    tree: tuple[str, ...] | None = None  # bind from an image's snapshot dirs (topmost first):
    # `source` is a path inside them, resolved there (RUN --mount from=)
    scratch: str = ""  # tree, rw: an empty host dir for the tree's throwaway upper and work


@dataclass(frozen=True, slots=True)
class ChildPlan:
    lowers: tuple[str, ...]  # absolute, topmost first
    upper: str
    work: str  # an empty dir on the upper's filesystem
    mounts: tuple[MountOp, ...]
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    user: str
    workdir: str
    hostname: str
    new_net: bool
    confinement: Confinement  # see confine; INSECURE for RUN --security=insecure


SECRETS_DIR = "secrets"  # a tmpfs in the scratch dir: secret files exist in this mount ns only


def child_main(plan: ChildPlan, stdout_fd: int, message_fd: int, parent_pid: int) -> None:
    """The keeper: enter new namespaces, fork init, wait for it, exit with its status."""
    code = SETUP_FAILED
    try:
        arrange_fds(stdout_fd, message_fd)
        die_with_parent(parent_pid)
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        check(LIBC.unshare(flags | (CLONE_NEWNET if plan.new_net else 0)), "unshare")
        alive_read, alive_write = os.pipe()  # init sees EOF here if the keeper is gone
        pid = os.fork()
        if pid == 0:
            os.close(alive_write)
            _init_main(plan, alive_read)
        os.close(alive_read)
        os.close(STUB_FD)  # only init reports; buildgraph then sees EOF once init execs or dies
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # buildgraph decides; we die with it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
    except BaseException as err:  # never unwind into the forked copy of the caller
        report(f"error\tsandbox: {describe(err)}")
    finally:
        os._exit(code)


def _init_main(plan: ChildPlan, alive_fd: int) -> None:
    """Pid 1 of the new pid namespace: build the root, pivot into it, confine, exec."""
    try:
        die_with_parent(0, alive_fd)
        name = plan.hostname.encode()
        check(LIBC.sethostname(name, len(name)), f"sethostname {plan.hostname!r}")
        if plan.new_net:
            _loopback_up()
        check(LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        host_root = os.open("/", os.O_PATH | os.O_DIRECTORY)
        sources = {
            index: os.open(m.source, os.O_PATH)
            for index, m in enumerate(plan.mounts)
            if m.source and m.tree is None
        }
        mounts = _mount_root(plan, sources)
        sources.update(_write_secrets(plan.mounts))
        # Mount targets resolve inside the root (an image's symlink cannot point them at the
        # host), so mount from within a chroot, then leave it for the pivot.
        os.chroot("r")
        os.chdir("/")
        os.umask(0)
        for index, op in enumerate(mounts):
            _apply(op, sources.get(index))
        os.umask(0o022)
        for fd in sources.values():
            os.close(fd)
        if plan.confinement.capabilities is not None:  # not --security=insecure
            protect_kernel_files()
        uid, gid, groups = resolve_user(plan.user)
        if not os.path.isdir(plan.workdir):
            _make_workdir(plan.workdir)
        _pivot(host_root)
        os.chdir(plan.workdir)
        confine(plan.confinement, uid, gid, groups)
        die_with_parent(0, alive_fd)  # a credential change clears the death signal
        _reset_signals()
        env = dict(plan.env)
        env.setdefault("HOME", home_of(uid))  # as runc does: the user's home, else "/"
        try:
            os.execvpe(plan.argv[0], list(plan.argv), env)
        except OSError as err:
            raise SetupError(_exec_error(plan.argv[0], err)) from err
    except BaseException as err:
        report(f"error\t{describe(err)}")
    finally:
        os._exit(SETUP_FAILED)


def _pivot(host_root: int) -> None:
    """Make the overlay (/dev/r of the host view, where we are chrooted) the root of this
    mount namespace and detach everything else, as runc does: unlike a chroot, nothing of
    the host stays reachable, not even through a directory fd or a second chroot."""
    os.fchdir(host_root)
    os.chroot(".")
    new_root = os.open("/dev/r", os.O_PATH | os.O_DIRECTORY)
    os.fchdir(new_root)
    os.close(new_root)
    dot = ctypes.c_char_p(b".")
    check(LIBC.syscall(ctypes.c_long(SYS_PIVOT_ROOT), dot, dot), "pivot_root")
    os.fchdir(host_root)  # the old root, now stacked on top of the new one
    os.close(host_root)
    check(LIBC.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def _write_secrets(mounts: tuple[MountOp, ...]) -> dict[int, int]:
    """Each secret as a file on a tmpfs of this mount namespace (in the scratch /dev, the
    cwd), opened for a bind: it never touches a disk and vanishes with the namespace."""
    secrets = [(index, op) for index, op in enumerate(mounts) if op.fstype == "secret"]
    if not secrets:
        return {}
    size = sum(len(op.content) + 4096 for _, op in secrets)
    _mount(
        b"tmpfs",
        SECRETS_DIR.encode(),
        b"tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        f"mode=700,size={size}",
        "mount a tmpfs for secrets",
    )
    found = {}
    for index, op in secrets:
        path = f"{SECRETS_DIR}/{index}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            view = memoryview(op.content)
            while view:
                view = view[os.write(fd, view) :]
            os.fchown(fd, op.uid, op.gid)
            os.fchmod(fd, op.mode)
        finally:
            os.close(fd)
        found[index] = os.open(path, os.O_PATH)
    return found


def _mount_root(plan: ChildPlan, sources: dict[int, int]) -> tuple[MountOp, ...]:
    """Mount the overlay on /dev/r, using a tmpfs over the host's /dev (hidden in this mount
    namespace only, and nothing of ours lives there) for what needs no disk: short relative
    names for the lowers, so their list fits the one-page limit of mount options (500 lowers),
    the skeleton, and the mount point. The skeleton holds every mount point and is the bottom
    lower: the image's own entries win, and nothing is copied up to mount on them. Trees to
    bind from are mounted here too; the mounts are returned with their sources opened."""
    mount_scratch()
    mounts = tuple(
        op if op.tree is None else _open_tree(index, op, sources)
        for index, op in enumerate(plan.mounts)
    )
    lowers = link_names(plan.lowers, "")
    os.symlink(plan.upper, "u")
    os.symlink(plan.work, "w")
    os.mkdir("r")
    os.mkdir("s")
    os.mkdir(SECRETS_DIR)
    for op in mounts:
        path = "s" + op.target
        os.makedirs(path if op.directory else os.path.dirname(path), 0o755, exist_ok=True)
        if not op.directory:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    mount_overlay("r", [*lowers, "s"], "u", "w")
    return mounts


def _open_tree(index: int, op: MountOp, sources: dict[int, int]) -> MountOp:
    """Overlay a tree's snapshots on t<index> (read-only, or writing to a throwaway upper in
    `op.scratch`), open `op.source` in it as if it were "/" so no link leads out of it, and
    return the op as a bind of that fd."""
    name = f"t{index}"
    os.mkdir(name)
    lowers = link_names(op.tree or (), f"{name}-")
    # Empty bottom lowers: overlayfs needs one, and two without an upper dir (a tree from FROM
    # scratch has no snapshot of its own).
    for empty in (f"{name}e", f"{name}f")[: 1 if lowers or op.scratch else 2]:
        os.mkdir(empty)
        lowers.append(empty)
    if op.scratch:
        os.symlink(op.scratch, f"{name}s")
        os.mkdir(f"{name}s/upper")
        os.mkdir(f"{name}s/work")
        mount_overlay(name, lowers, f"{name}s/upper", f"{name}s/work")
    else:
        mount_overlay(name, lowers)
    root = os.open(name, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = open_in_root(root, op.source)
    except OSError as err:
        raise SetupError(f"mount source {op.source}: {err.strerror}") from err
    finally:
        os.close(root)
    sources[index] = fd
    return replace(op, tree=None, directory=stat.S_ISDIR(os.fstat(fd).st_mode))


def _apply(op: MountOp, source_fd: int | None) -> None:
    if not _mount_point(op):
        return
    target = op.target.encode()
    if op.fstype in ("bind", "secret"):
        assert source_fd is not None
        source = f"/proc/self/fd/{source_fd}".encode()
        what = f"bind {op.source or 'a secret'} on {op.target}"
        _mount(source, target, None, MS_BIND | MS_REC, "", what)
        readonly = op.fstype == "secret" or op.flags & MS_RDONLY
        if readonly:
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | (op.flags & ~MS_RDONLY)
            if op.fstype == "secret":
                flags |= MS_NOSUID | MS_NODEV | MS_NOEXEC
            _mount(None, target, None, flags, "", f"read-only {op.target}")
        return
    what = f"mount {op.fstype} on {op.target}"
    _mount(op.fstype.encode(), target, op.fstype.encode(), op.flags, op.data, what)
    if op.target == "/dev":
        populate_dev()


def _mount_point(op: MountOp) -> bool:
    """Make sure the mount point exists; say whether to mount (optional ones may be skipped)."""
    try:
        mode = os.lstat(op.target).st_mode
    except FileNotFoundError:
        _make_stub(op.target, op.directory)
        return True
    except OSError as err:  # e.g. a parent is a file or a symlink loop in the image
        if op.optional:
            return False
        raise SetupError(f"mount point {op.target}: {err.strerror}") from err
    if stat.S_ISDIR(mode) == op.directory and not stat.S_ISLNK(mode):
        return True
    if op.optional:
        return False
    kind = "directory" if op.directory else "file"
    raise SetupError(f"mount point {op.target} exists in the image but is not a {kind}")


def _make_stub(path: str, directory: bool) -> None:
    """Create a missing mount point (hidden by a whiteout), reporting it so it can be removed."""
    parts = [p for p in path.split("/") if p]
    created = len(parts)
    for depth in range(1, len(parts)):
        prefix = "/" + "/".join(parts[:depth])
        if not os.path.lexists(prefix):
            os.mkdir(prefix, 0o755)
            created = min(created, depth)
    if directory:
        os.mkdir(path, 0o755)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    report(f"stub\t{created}\t{path}")


def _make_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, 0o755, exist_ok=True)
    except OSError as err:
        raise SetupError(f"cannot create workdir {workdir}: {err.strerror}") from err


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _reset_signals() -> None:
    """Undo what Python (SIGPIPE ignored) and buildgraph did to signals; exec keeps SIG_IGN."""
    for number in signal.valid_signals():
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):  # reserved real-time signals
            signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _exec_error(program: str, err: OSError) -> str:
    if err.errno == errno.ENOENT and "/" not in program:
        return f'exec: "{program}": executable file not found in $PATH'
    return f'exec: "{program}": {os.strerror(err.errno or 0).lower()}'
