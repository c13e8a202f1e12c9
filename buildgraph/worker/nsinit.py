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
import platform
import select
import signal
import socket
import stat
import struct
from dataclasses import dataclass, field, replace

from buildgraph.worker.confine import ConfineError, Confinement, confine

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


class _OpenHow(ctypes.Structure):  # struct open_how, for openat2
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


DEVICES = (  # name, major, minor: what docker puts in a container's /dev
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
MASKED_PATHS = (  # what runc hides from a container: host state and ways to write to the host
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
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


class SetupError(Exception):
    """A one-line reason the sandbox could not start the command."""


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
            _protect_kernel_files()
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


def _protect_kernel_files() -> None:
    """As runc does: /proc/sys and friends read-only (root in the initial user namespace
    could otherwise write e.g. kernel.core_pattern, and run a program of its choice as the
    host's root), host-wide files masked. Paths the kernel lacks are skipped."""
    hidden = MS_NOSUID | MS_NODEV | MS_NOEXEC
    for path in READONLY_PATHS:
        if os.path.lexists(path) and not os.path.islink(path):
            target = path.encode()
            _mount(target, target, None, MS_BIND | MS_REC, "", f"bind {path}")
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | hidden
            _mount(None, target, None, flags, "", f"read-only {path}")
    for path in MASKED_PATHS:
        if os.path.islink(path):
            continue  # not the kernel's (e.g. /sys of the image, where sysfs was not mounted)
        if os.path.isdir(path):
            _mount(b"tmpfs", path.encode(), b"tmpfs", MS_RDONLY | hidden, "size=0", f"mask {path}")
        elif os.path.lexists(path):
            _mount(b"/dev/null", path.encode(), None, MS_BIND, "", f"mask {path}")


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


def open_in_root(root_fd: int, path: str) -> int:
    """An O_PATH fd of `path` below `root_fd`, resolved as if `root_fd` were "/": absolute
    links and ".." stay inside it (openat2 with RESOLVE_IN_ROOT)."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
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
    _mount(
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
    _mount(b"overlay", target.encode(), b"overlay", flags, options, f"mount overlay on {target}")


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
        _populate_dev()


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


def _populate_dev() -> None:
    for name, major, minor in DEVICES:
        os.mknod(f"/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    for name, target in DEV_LINKS:
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/pts", 0o755)
    os.mkdir("/dev/shm", 0o1777)
    _mount(
        b"devpts",
        b"/dev/pts",
        b"devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
        "mount devpts",
    )
    _mount(
        b"shm",
        b"/dev/shm",
        b"tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "mode=1777,size=65536k",
        "mount /dev/shm",
    )


def _make_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, 0o755, exist_ok=True)
    except OSError as err:
        raise SetupError(f"cannot create workdir {workdir}: {err.strerror}") from err


def resolve_user(user: str) -> tuple[int, int, list[int]]:
    """uid, gid and supplementary groups of `user` from the root's /etc/passwd and /etc/group."""
    name, _, group = user.partition(":")
    passwd = read_db("/etc/passwd")
    if not name or name.isdigit():
        uid = int(name or 0)
        entry = next((e for e in passwd if e[2] == str(uid)), None)
    else:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None:
            raise SetupError(f"unable to find user {name}: no matching entries in passwd file")
        uid = _number(entry[2], "uid", name)
    gid = _number(entry[3], "gid", name) if entry else 0
    login = entry[0] if entry else None
    groups_db = read_db("/etc/group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = next((e for e in groups_db if e[0] == group), None)
            if found is None:
                raise SetupError(f"unable to find group {group}: no matching entries in group file")
            gid = _number(found[2], "gid", group)
        return uid, gid, [gid]
    extra = [int(e[2]) for e in groups_db if login and login in e[3].split(",") and e[2].isdigit()]
    return uid, gid, list(dict.fromkeys([gid, *extra]))


def home_of(uid: int) -> str:
    entry = next((e for e in read_db("/etc/passwd") if len(e) > 5 and e[2] == str(uid)), None)
    return entry[5] if entry and entry[5] else "/"


def read_db(path: str) -> list[list[str]]:
    """The rows of a passwd/group style file (at least 4 fields each); [] if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    rows = [line.split(":") for line in lines if line and not line.startswith("#")]
    return [(row + [""] * 4)[: max(4, len(row))] for row in rows if len(row) >= 3]


def _number(text: str, what: str, name: str) -> int:
    if not text.isdigit() or int(text) >= 2**32 - 1:
        raise SetupError(f"invalid {what} {text!r} for {name}")
    return int(text)


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


def _mount(
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


def describe(err: BaseException) -> str:
    """A one-line reason for `err`: a SetupError as is, anything else with its type name."""
    if isinstance(err, SetupError | ConfineError):
        return str(err)
    return f"{type(err).__name__}: {err}"
