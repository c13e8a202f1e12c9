"""The seccomp filter a RUN command runs under, compiled to BPF by libseccomp.

Docker's default profile is an allowlist; this one is the same policy written the other way
round: everything is allowed except the system calls Docker's profile refuses to a container
without extra capabilities (listed below, each refused with EPERM), `clone` with a namespace
flag, `personality` other than the values Docker allows, and `clone3` (ENOSYS, so that glibc
falls back to `clone`, whose flags the filter can see). System calls newer than the list are
allowed: a new one that needs privilege still needs the capabilities RUN does not have, and
an allowlist would have to answer ENOSYS for them anyway (as runc does) to keep new C
libraries working.

libseccomp (libseccomp2, which apt itself depends on, so every Debian has it) resolves names
per architecture and writes the program; it is called through ctypes here because its own
Python module is packaged only for Debian's system interpreter, not for a venv or PyPI. The
program is compiled once in the parent and loaded by the child with one prctl (see confine).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import os
import platform

EPERM = 1
ENOSYS = 38
ACT_ALLOW = 0x7FFF0000
CMP_MASKED_EQ = 7
MASK_64 = (1 << 64) - 1

# Docker's profile refuses these (without CAP_SYS_ADMIN and friends, which RUN never has):
DENIED = (
    # mounts and namespaces: the ways out of the root
    "mount", "umount", "umount2", "pivot_root", "unshare", "setns",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # kernel keyring, modules, kexec, BPF, perf, tracing of the kernel
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "lookup_dcookie",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module",
    # files by handle (the "shocker" escape), quotas, the kernel log, accounting
    "open_by_handle_at", "name_to_handle_at", "quotactl", "quotactl_fd", "syslog", "acct",
    # the machine: reboot, swap, clocks, raw I/O ports, old interfaces
    "reboot", "swapon", "swapoff", "settimeofday", "clock_settime", "stime", "iopl",
    "ioperm", "vm86", "vm86old", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl",
    "vhangup", "fanotify_init",
    # userfaultfd makes kernel races easy to win; io_uring bypasses this filter's view
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
)  # fmt: skip
NAMESPACE_FLAGS = (  # clone() with any of these is refused (CLONE_NEW*)
    0x00020000,  # NEWNS
    0x02000000,  # NEWCGROUP
    0x04000000,  # NEWUTS
    0x08000000,  # NEWIPC
    0x10000000,  # NEWUSER
    0x20000000,  # NEWPID
    0x40000000,  # NEWNET
)
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # LINUX, LINUX32, UNAME26, both, query
SUBARCHES = {  # what else a process of this machine may call in: 32-bit and x32 binaries
    "x86_64": (0x40000003, 0x4000003E),  # SCMP_ARCH_X86, SCMP_ARCH_X32
    "aarch64": (0x40000028,),  # SCMP_ARCH_ARM
}


class _Compare(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(Exception):
    """libseccomp is missing or refused the filter: RUN cannot be confined."""


@functools.cache  # one library handle per process
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as err:
        raise SeccompUnavailable(
            f"libseccomp not found ({err}): apt-get install libseccomp2"
        ) from err
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_Compare),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


# A RUN that shares the executor's pid namespace (the chroot isolation) must not reach into
# the other processes there, buildgraph's own among them: no tracing, no reading their memory.
SHARED_PID_NAMESPACE_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp")


@functools.cache  # the same program for every RUN of the process (~2 ms to compile)
def default_filter(extra_denied: tuple[str, ...] = ()) -> bytes:
    """The BPF program (struct sock_filter[]) of the default policy, for this machine, also
    refusing `extra_denied`."""
    lib = _library()
    context = lib.seccomp_init(ACT_ALLOW)
    if not context:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        for arch in SUBARCHES.get(platform.machine(), ()):
            _checked(lib.seccomp_arch_add(context, arch), f"add architecture {arch:#x}")
        for name in (*DENIED, *extra_denied):
            _rule(lib, context, _errno(EPERM), name)
        _rule(lib, context, _errno(ENOSYS), "clone3")
        for flag in NAMESPACE_FLAGS:
            _rule(lib, context, _errno(EPERM), "clone", (flag, flag))
        for low, size in _complement_blocks(PERSONALITIES):
            _rule(lib, context, _errno(EPERM), "personality", (MASK_64 & ~(size - 1), low))
        return _export(lib, context)
    finally:
        lib.seccomp_release(context)


def _errno(number: int) -> int:
    return 0x00050000 | number  # SCMP_ACT_ERRNO(number)


def _rule(
    lib: ctypes.CDLL, context: int, action: int, name: str, masked: tuple[int, int] | None = None
) -> None:
    """`action` for `name` (where this machine has it), if arg 0 & mask == value when given."""
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number == -1:  # unknown to libseccomp (a pseudo number < -1 is a 32-bit-only call)
        return
    compares = None
    if masked is not None:
        compares = (_Compare * 1)(_Compare(0, CMP_MASKED_EQ, masked[0], masked[1]))
    _checked(
        lib.seccomp_rule_add_array(context, action, number, 1 if compares else 0, compares),
        f"rule for {name}",
    )


def _complement_blocks(allowed: tuple[int, ...]) -> list[tuple[int, int]]:
    """Every 64-bit value but `allowed`, as aligned (start, size) blocks: one rule can compare
    an argument only once, but `arg & ~(size - 1) == start` matches a whole block."""
    blocks = []
    edges = [-1, *sorted(allowed), 1 << 64]
    for before, after in itertools.pairwise(edges):
        low, high = before + 1, after - 1
        while low <= high:
            size = low & -low if low else 1 << 64
            while size > high - low + 1:
                size //= 2
            blocks.append((low, size))
            low += size
    return blocks


def _export(lib: ctypes.CDLL, context: int) -> bytes:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        _checked(lib.seccomp_export_bpf(context, fd), "export")
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def _checked(result: int, what: str) -> None:
    if result != 0:
        raise SeccompUnavailable(f"libseccomp: {what}: {os.strerror(-result)}")
