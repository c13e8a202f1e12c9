"""What a container's /dev holds and which /proc and /sys paths it may not write or see
(docker's and runc's lists), and the calls that set them up in the new root."""

from __future__ import annotations

import os
import stat

from buildgraph.worker.kernel import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
)
from buildgraph.worker.kernel import mount_or_fail as _mount

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


def protect_kernel_files() -> None:
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


def populate_dev() -> None:
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
