"""Run one COPY/ADD on overlayfs in a private mount namespace; the upper dir becomes its diff.

A forked child unshares a mount namespace, mounts the destination overlay (and, for
`COPY --from`, the source stage read-only), opens the source root as a dir fd and chroots into
the destination view. There `copy_tree` reads sources only through that fd, one O_NOFOLLOW
component at a time, and resolves destination paths inside the image, as Docker resolves them.
The child exits when done, taking its mounts with it. Rules without side effects live in
`copy_plan`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildgraph.errors import InputError, StepFailed, UnsafeArchiveError
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.worker import nsinit
from buildgraph.worker.copy_plan import CopyJob, check_job
from buildgraph.worker.copy_tree import Copier
from buildgraph.worker.rootfd import DIR_FLAGS
from buildgraph.worker.sandbox import MAX_LOWERS

__all__ = ["CopyJob", "copy_in_overlay", "copy_in_root"]

ERRORS = {cls.__name__: cls for cls in (InputError, UnsafeArchiveError, StepFailed)}


@dataclass(frozen=True, slots=True)
class _Plan:
    job: CopyJob
    chmod: int | None
    lowers: tuple[str, ...]  # absolute, topmost first
    upper: str
    work: str  # an empty dir on the upper's filesystem
    context: str  # "" unless the sources come from the build context
    ignore: IgnoreMatcher
    source_lowers: tuple[str, ...]


def copy_in_overlay(
    job: CopyJob,
    lowers: Sequence[Path],
    upper: Path,
    *,
    context: Path | None = None,
    ignore: IgnoreMatcher | None = None,
    source_lowers: Sequence[Path] = (),
) -> None:
    """Apply `job` on lowers (topmost first, may be empty) + `upper`, which then holds its diff.

    Sources come from `context` (skipping what `ignore` excludes) or from a stage's
    `source_lowers`. Raises InputError (bad flags, missing or unsafe source) or StepFailed."""
    chmod = check_job(job)
    if job.sources and (context is None) == (not source_lowers):
        raise StepFailed("COPY needs exactly one source: a build context or a stage's snapshots")
    if max(len(lowers), len(source_lowers)) > MAX_LOWERS:
        raise StepFailed(f"overlayfs stacks at most {MAX_LOWERS} layers")
    upper = Path(upper).absolute()
    paths = [*lowers, *source_lowers, upper, *([context] if context is not None else [])]
    for path in paths:
        if Path(path).absolute().is_relative_to("/dev"):  # the child hides /dev (see nsinit)
            raise StepFailed(f"COPY dir {path} must not be under /dev")
    scratch = Path(tempfile.mkdtemp(prefix=".copy-", dir=upper.parent))
    try:
        plan = _Plan(
            job=job,
            chmod=chmod,
            lowers=tuple(str(Path(lower).absolute()) for lower in lowers),
            upper=str(upper),
            work=str(scratch),
            context=str(Path(context).absolute()) if context is not None else "",
            ignore=ignore or IgnoreMatcher(()),
            source_lowers=tuple(str(Path(lower).absolute()) for lower in source_lowers),
        )
        _run(plan)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def copy_in_root(
    job: CopyJob,
    tree: Path,
    *,
    context: Path | None = None,
    ignore: IgnoreMatcher | None = None,
    source_tree: Path | None = None,
) -> None:
    """Apply `job` to a materialized root `tree` in place (the chroot isolation: no mount
    needed), reading from `context` or from another stage's materialized `source_tree`."""
    chmod = check_job(job)
    if job.sources and (context is None) == (source_tree is None):
        raise StepFailed("COPY needs exactly one source: a build context or a stage's tree")
    source = str(Path(context if context is not None else source_tree or tree).absolute())
    from_context = context is not None
    matcher = ignore or IgnoreMatcher(())

    def child(message_fd: int, parent: int) -> None:
        code = nsinit.SETUP_FAILED
        try:
            nsinit.arrange_fds(os.open("/dev/null", os.O_RDWR), message_fd)
            nsinit.die_with_parent(parent)
            flags = DIR_FLAGS & ~os.O_NOFOLLOW if from_context else DIR_FLAGS
            source_fd = os.open(source, flags) if job.sources else -1
            os.chroot(str(tree))
            os.chdir("/")
            os.umask(0)
            Copier(job, chmod, source_fd, from_context=from_context, ignore=matcher).run()
            code = 0
        except BaseException as err:
            nsinit.report(_describe(err))
        finally:
            os._exit(code)

    _run_child(child)


def _run(plan: _Plan) -> None:
    _run_child(lambda message_fd, parent: _child_main(plan, message_fd, parent))


def _run_child(child: Callable[[int, int], None]) -> None:
    """Fork `child(message_fd, parent_pid)` (it must end in os._exit), collect what it
    reports, and raise the first error it named."""
    message_read, message_write = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        child(message_write, parent)
    os.close(message_write)
    reaped = False
    try:
        chunks = []
        while chunk := os.read(message_read, 65536):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        reaped = True
    finally:
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(message_read)
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        kind, _, message = line.partition("\t")
        if kind in ERRORS:
            raise ERRORS[kind](message)
    if code := os.waitstatus_to_exitcode(status):
        raise StepFailed(f"COPY failed (exit status {code})")


def _child_main(plan: _Plan, message_fd: int, parent: int) -> None:
    """Namespace, mounts, chroot, copy; ends in os._exit (never unwinds into the caller)."""
    code = nsinit.SETUP_FAILED
    try:
        nsinit.arrange_fds(os.open("/dev/null", os.O_RDWR), message_fd)
        nsinit.die_with_parent(parent)
        nsinit.check(nsinit.LIBC.unshare(nsinit.CLONE_NEWNS), "unshare")
        private = nsinit.MS_REC | nsinit.MS_PRIVATE
        nsinit.check(nsinit.LIBC.mount(b"none", b"/", None, private, None), "make / private")
        source_fd = os.open(plan.context, DIR_FLAGS & ~os.O_NOFOLLOW) if plan.context else -1
        nsinit.mount_scratch()
        os.mkdir("e", 0o755)  # an empty bottom lower: overlayfs needs one, FROM scratch has none
        os.mkdir("r", 0o755)
        os.symlink(plan.upper, "u")
        os.symlink(plan.work, "w")
        nsinit.mount_overlay("r", [*nsinit.link_names(plan.lowers, "d"), "e"], "u", "w")
        if plan.source_lowers:  # read-only overlay: the kernel hides whiteouts and opaque dirs
            os.mkdir("s", 0o755)
            nsinit.mount_overlay("s", [*nsinit.link_names(plan.source_lowers, "s"), "e"])
            source_fd = os.open("s", DIR_FLAGS)
        os.chroot("r")
        os.chdir("/")
        os.umask(0)
        copier = Copier(
            plan.job, plan.chmod, source_fd, from_context=bool(plan.context), ignore=plan.ignore
        )
        copier.run()
        code = 0
    except BaseException as err:
        nsinit.report(_describe(err))
    finally:
        os._exit(code)


def _describe(err: BaseException) -> str:
    if type(err).__name__ in ERRORS:
        return f"{type(err).__name__}\t{err}"
    if isinstance(err, OSError) and err.filename is not None:
        return f"StepFailed\tCOPY failed: {err.strerror}: {err.filename}"
    return f"StepFailed\tCOPY failed: {nsinit.describe(err)}"
