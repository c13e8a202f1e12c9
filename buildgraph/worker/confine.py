"""What a RUN command may do once it is in its root: user, capabilities, no_new_privs, seccomp.

`confine` is the last step before exec in every isolation: the namespaces sandbox calls it
after pivot_root, and an isolation without mount or unshare (issue 12) calls it after chroot.
It runs in the forked child: it imports nothing, allocates little and ends in the new user.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field

# Docker's default set (moby's oci/caps defaults), by capability number.
DEFAULT_CAPABILITIES = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_RAW": 13,
    "SYS_CHROOT": 18,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}
DEFAULT_MASK = sum(1 << number for number in DEFAULT_CAPABILITIES.values())  # 0xa80425fb
LAST_POSSIBLE_CAP = 63

PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
CAPABILITY_VERSION_3 = 0x20080522

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
LIBC.prctl.argtypes += [ctypes.c_ulong]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass(frozen=True, slots=True)
class Confinement:
    """None for `capabilities` keeps every capability (RUN --security=insecure)."""

    capabilities: int | None = DEFAULT_MASK
    no_new_privs: bool = True
    seccomp: bytes = field(default=b"", repr=False)  # BPF program; b"": no filter


class ConfineError(Exception):
    """A one-line reason the command could not be confined (it is then not run)."""


def default_confinement() -> Confinement:
    """Docker's default: its capability set, no_new_privs, its seccomp policy."""
    from buildgraph.worker.seccomp import default_filter

    return Confinement(DEFAULT_MASK, True, default_filter())


INSECURE = Confinement(capabilities=None, no_new_privs=False, seccomp=b"")


def confine(policy: Confinement, uid: int, gid: int, groups: list[int]) -> None:
    """Become uid:gid (with `groups`) under `policy`. Call as root, in the final root, last
    thing before exec. Order matters: the bounding set and capset need CAP_SETPCAP, so they
    come first; setuid away from 0 then clears permitted and effective (Docker does the same
    for a non-root USER); seccomp comes last so nothing above is filtered."""
    if policy.capabilities is not None:
        for number in range(LAST_POSSIBLE_CAP + 1):
            if not policy.capabilities >> number & 1:
                result = LIBC.prctl(PR_CAPBSET_DROP, number, 0, 0, 0)
                if result != 0 and ctypes.get_errno() != 22:  # EINVAL: beyond cap_last_cap
                    _fail("drop capability from the bounding set")
        _check(LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient")
        mask = policy.capabilities
        header = _CapHeader(CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)(
            _CapData(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, mask & 0xFFFFFFFF),
            _CapData(mask >> 32, mask >> 32, mask >> 32),
        )
        _check(
            LIBC.capset(ctypes.byref(header), data),
            "capset (RUN gets Docker's default capabilities: the container must have them all)",
        )
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    if policy.no_new_privs:
        _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if policy.seccomp:
        buffer = ctypes.create_string_buffer(policy.seccomp, len(policy.seccomp))
        program = _SockFprog(len(policy.seccomp) // 8, ctypes.addressof(buffer))
        address = ctypes.addressof(program)
        _check(LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, address, 0, 0), "seccomp")


def _check(result: int, what: str) -> None:
    if result != 0:
        _fail(what)


def _fail(what: str) -> None:
    raise ConfineError(f"{what}: {os.strerror(ctypes.get_errno())}")
