"""A materialized root of the chroot isolation, and the ways one is made and removed: a copy of
another root (`cp -a`), layers unpacked onto it, and many removed at once."""

from __future__ import annotations

import contextlib
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import LayerRef
from buildgraph.errors import StepFailed
from buildgraph.fs import held_dir
from buildgraph.image.unpack import unpack_layer
from buildgraph.worker.treediff import Manifest, scan


@dataclass(eq=False)
class Root:
    """A materialized tree, held (flock'ed) by this process; `manifest` describes `tree`."""

    holder: Path  # the held dir: `tree`, plus `aside` for what a RUN moves out of the way
    manifest: Manifest
    chain: tuple[str, ...]  # the diff_ids the tree holds, bottom first
    _release: contextlib.ExitStack = field(repr=False)
    # A copy of a template: the template's chain, and the tree's manifest as copied (what a
    # revert puts back, see worker/revert.py). None for a root unpacked from its layers.
    origin: tuple[str, ...] | None = None
    pristine: Manifest | None = field(default=None, repr=False)
    _size: tuple[Manifest, int] | None = field(default=None, init=False, repr=False)

    @property
    def tree(self) -> Path:
        return self.holder / "tree"

    @property
    def aside(self) -> Path:
        return self.holder / "aside"

    @property
    def size(self) -> int:
        """Bytes of the regular files of `tree` (what keeping it idle costs on disk)."""
        if self._size is None or self._size[0] is not self.manifest:
            total = sum(entry.size for entry in self.manifest.values() if stat.S_ISREG(entry.mode))
            self._size = (self.manifest, total)
        return self._size[1]

    def discard(self) -> None:
        self._release.close()  # removes the dir, then drops the lock


def empty_root(work_dir: Path) -> Root:
    """A held dir with an empty `tree` (and `aside`), holding no layer yet."""
    release = contextlib.ExitStack()
    try:
        holder = release.enter_context(held_dir(work_dir, "root-"))
        (holder / "tree").mkdir(0o755)
        (holder / "aside").mkdir(0o700)
        return Root(holder, {}, (), release)
    except BaseException:
        release.close()
        raise


def copy_root(cp: str, source: Root, work_dir: Path) -> Root:
    """A copy of `source`'s tree (a template): a root whose `origin` is the source's chain."""
    release = contextlib.ExitStack()
    try:
        holder = release.enter_context(held_dir(work_dir, "root-"))
        (holder / "aside").mkdir(0o700)
        # -a keeps owners, modes, times, links (hard ones too), device nodes and xattrs;
        # -T makes `tree` the copy itself rather than a dir in it.
        copied = subprocess.run(
            [cp, "-a", "-T", "--", str(source.tree), str(holder / "tree")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if copied.returncode != 0:
            message = copied.stderr.decode(errors="replace").strip().splitlines()
            raise StepFailed(
                "cannot lay out a root for the chroot isolation: "
                + (message[-1] if message else f"cp exited with {copied.returncode}")
            )
        manifest = scan(holder / "tree")
        chain = source.chain
        return Root(holder, manifest, chain, release, origin=chain, pristine=manifest)
    except BaseException:
        release.close()
        raise


def unpack_onto(root: Root, layers: Sequence[LayerRef], store: LocalStore) -> None:
    """Unpack `layers` (blobs of `store`) onto `root`'s tree; its manifest is scanned anew."""
    try:
        for layer in layers:
            with store.open_blob(layer.descriptor.digest) as blob:
                unpack_layer(blob, layer.descriptor.media_type, root.tree, whiteouts="apply")
    except PermissionError as err:  # a container without CHOWN, MKNOD, FOWNER...
        raise StepFailed(
            f"cannot lay out a root for the chroot isolation: {err.strerror}: "
            f"{err.filename or 'a layer entry'} (it needs Docker's default capabilities)"
        ) from err
    root.manifest = scan(root.tree, root.manifest)


def remove_all(roots: Sequence[Root]) -> None:
    """Remove the roots' dirs (and drop their locks)."""
    remover = shutil.which("rm")
    if remover is not None and roots:
        # One C process unlinks every tree ~4x faster than rmtree in this process, and
        # this is on the wall time of every build (after its last step). Each dir is
        # still held meanwhile, so no other process reclaims it under our feet.
        subprocess.run(
            [remover, "-rf", "--", *(str(root.tree) for root in roots)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    for root in roots:
        root.discard()  # what rm left (its holder dir, or everything if rm failed)
