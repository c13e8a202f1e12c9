"""Whole root filesystems on disk, for the chroot isolation (where mount(2) and unshare(2) are
not allowed, as in an ordinary Docker container): a step's tree is materialized from its
layers once, kept between the steps of a stage, and what a step changes is found by a metadata
walk against the tree's previous manifest, as Kaniko's snapshotter finds it (treediff.py).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import StepRecord
from buildgraph.worker.kept_templates import KeptTemplates
from buildgraph.worker.revert import revert
from buildgraph.worker.roots import Root, copy_root, empty_root, remove_all, unpack_onto
from buildgraph.worker.treediff import Manifest

SPARES = 2  # copies of a forked chain made ahead (see RootPool)
KEEP_BYTES = 2 << 30  # idle roots kept on disk, in file bytes (see RootPool)


@dataclass(eq=False)
class _Template:
    """A pristine root of one chain that roots are copied from; `ready` is held while the
    first user unpacks it."""

    ready: threading.Lock
    root: Root | None = None
    users: int = 0  # clones under way: eviction waits for none
    spares: list[Root] = field(default_factory=list)  # copies made ahead, ready to take
    filling: bool = False  # the background thread is making spares
    from_disk: bool = False  # a template kept by an earlier build (worker/kept_templates.py)


class RootPool:
    """Idle roots by the layers they hold: a stage's next step takes the root its previous
    step left, so a tree is materialized once per stage rather than once per step. A root is
    used by one step at a time; a second user of the same layers gets a root of its own.

    Unpacking layers costs about 15x a plain copy of the tree they make (`cp -a`: one C
    process instead of a tar read, gunzip and safe-path walk per entry in Python). So the
    second time a chain of layers must be laid out (FROM base in every service: the fork of
    a monorepo), it is unpacked once more into a template that no step ever changes, and this
    and every later root of that chain is a copy of the template. A copy is a few ms of CPU
    but creates every entry of the tree, and on a disk busy with the build's own RUNs and
    commits that waited 0.1-0.5 s per copy: so SPARES copies of a forked chain are made ahead,
    in a background thread, and a step that needs one takes it ready.

    And a copy whose steps are done with it (`demand` says no step still to run needs its
    layers) is put back to the template's tree (worker/revert.py) and used as the next copy:
    removing what a finished service added costs far fewer entries than a new copy."""

    def __init__(
        self,
        work_dir: Path,
        store: LocalStore,
        keep_bytes: int = KEEP_BYTES,
        templates: int = 8,
        demand: Callable[[tuple[str, ...]], int] | None = None,
        kept: KeptTemplates | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.store = store
        # How many steps still to run need a root of these layers (worker/root_demand.py);
        # without it (-1: not known), every root may be needed again.
        self.demand = demand or (lambda _chain: -1)
        self.kept = kept  # templates kept from one build to the next, if any
        self.keep_bytes = keep_bytes  # idle roots kept, most recently used first, while their
        # files add up to no more (each is a whole tree on disk; a stage forked by many, FROM
        # base in every service, needs one per branch, and a COPY --from reads a stage's last)
        self.keep_templates = templates  # forked chains whose pristine tree stays on disk
        self._idle: list[Root] = []
        self._templates: dict[tuple[str, ...], _Template] = {}  # least recently used first
        self._laid_out: set[tuple[str, ...]] = set()  # chains materialized at least once
        self._lock = threading.Lock()
        self._copy = shutil.which("cp")  # GNU cp (coreutils): absent, every root is unpacked
        self._closed = False
        self._background: ThreadPoolExecutor | None = None  # makes the spare copies

    def take(self, record: StepRecord) -> Root:
        """A root of `record` for one step to change."""
        chain = tuple(layer.diff_id for layer in record.layers)
        with self._lock:
            # A template pays off from the second root of a chain: known from the plan when
            # the build started (this step and another still to run), else seen when it comes.
            shared = self.demand(chain) >= 2 and chain not in self._templates
            idle = self._take_idle(chain)
            if idle is not None and not (shared and self._copy is not None):
                return idle
            if idle is not None:  # the stage's own root becomes the template the others copy
                self._templates[chain] = _Template(threading.Lock(), idle)
            forked = chain in self._laid_out or shared or chain in self._templates
            self._laid_out.add(chain)
        forked = forked or (self.kept is not None and self.kept.has(chain))
        if forked and self._copy is not None:
            template = self._template(record, chain)
            try:
                with self._lock:
                    spare = template.spares.pop() if template.spares else None
                root = spare or self._reverted(template) or self._clone(template)
            finally:
                with self._lock:
                    template.users -= 1
                self._evict()
            self._replenish(template)
            return root
        return self._materialize(record, chain)

    def _replenish(self, template: _Template) -> None:
        """Make the template's spare copies in the background, up to SPARES."""
        with self._lock:
            if self._closed or template.filling or len(template.spares) >= self._spares(template):
                return
            template.filling = True
            template.users += 1  # not evicted while copies are made of it
            if self._background is None:
                self._background = ThreadPoolExecutor(1, thread_name_prefix="root-spares")
            background = self._background
        background.submit(self._fill, template)

    def _spares(self, template: _Template) -> int:
        """How many copies to have ready: SPARES, or fewer if fewer steps still need one."""
        assert template.root is not None  # caller holds the lock
        pending = self.demand(template.root.chain)
        return SPARES if pending < 0 else min(SPARES, pending)

    def _fill(self, template: _Template) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed or len(template.spares) >= self._spares(template):
                        return
                try:
                    spare = self._reverted(template) or self._clone(template)
                except BaseException:  # a step that needs a copy makes it, and says why
                    return
                with self._lock:
                    if not self._closed:
                        template.spares.append(spare)
                        continue
                spare.discard()
                return
        finally:
            with self._lock:
                template.filling = False
                template.users -= 1

    def give(self, root: Root, record: StepRecord, manifest: Manifest | None = None) -> None:
        """Put `root` back as the tree of `record` (after a step changed it: its new manifest)."""
        root.chain = tuple(layer.diff_id for layer in record.layers)
        if manifest is not None:
            root.manifest = manifest
        with self._lock:
            self._laid_out.add(root.chain)
            self._idle.insert(0, root)
            surplus = []
            kept = 0
            for index, idle in enumerate(self._idle):
                kept += idle.size
                if index > 0 and kept > self.keep_bytes:
                    surplus = self._idle[index:]
                    del self._idle[index:]
                    break
        for extra in surplus:
            extra.discard()

    def _take_idle(self, chain: tuple[str, ...]) -> Root | None:
        for index, root in enumerate(self._idle):  # caller holds the lock
            if root.chain == chain:
                return self._idle.pop(index)
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            background, self._background = self._background, None
        if background is not None:
            background.shutdown(wait=True)  # a copy under way ends, and is discarded
        with self._lock:
            idle, self._idle = self._idle, []
            templates, self._templates = list(self._templates.values()), {}
        for template in templates:
            with template.ready:
                if template.root is not None and not self._keep(template):
                    idle.append(template.root)
            idle.extend(template.spares)
            template.spares.clear()
        remove_all(idle)

    def _keep(self, template: _Template) -> bool:
        """Keep `template` for the next build (or leave the kept one it came from there)."""
        root = template.root
        assert root is not None
        if template.from_disk or (
            self.kept is not None and self.kept.keep_tree(root.holder, root.chain, root.manifest)
        ):
            root.discard()  # drops the lock (the dir is elsewhere now, or not ours to remove)
            return True
        return False

    def _template(self, record: StepRecord, chain: tuple[str, ...]) -> _Template:
        """The template of `chain`, unpacked by the first thread that needs it (the others
        wait for it), with one more user counted, so eviction leaves it alone meanwhile."""
        with self._lock:
            template = self._templates.pop(chain, None) or _Template(threading.Lock())
            self._templates[chain] = template  # now the most recently used
            template.users += 1
        with template.ready:
            if template.root is None and self.kept is not None:
                opened = self.kept.open(chain)
                if opened is not None:
                    place, manifest, release = opened
                    template.root = Root(place, manifest, chain, release)
                    template.from_disk = True
            if template.root is None:
                try:
                    template.root = self._materialize(record, chain)
                except BaseException:
                    with self._lock:
                        template.users -= 1
                        if self._templates.get(chain) is template:
                            del self._templates[chain]
                    raise
        return template

    def _evict(self) -> None:
        with self._lock:
            surplus = len(self._templates) - self.keep_templates
            unused = [chain for chain, t in self._templates.items() if t.users == 0]
            evicted = [self._templates.pop(chain) for chain in unused[: max(surplus, 0)]]
        for template in evicted:
            for spare in template.spares:
                spare.discard()
            template.spares.clear()
            if template.root is not None:
                template.root.discard()

    def _reverted(self, template: _Template) -> Root | None:
        """An idle copy of `template` that no step still needs, put back to the template's
        tree; None if there is none (or it could not be put back: it is then thrown away)."""
        assert template.root is not None
        with self._lock:
            found = next(
                (
                    index
                    for index, idle in enumerate(self._idle)
                    if idle.origin == template.root.chain
                    and idle.pristine is not None
                    and self.demand(idle.chain) == 0
                ),
                None,
            )
            root = self._idle.pop(found) if found is not None else None
        if root is None:
            return None
        assert root.pristine is not None
        try:
            after = revert(root.tree, root.pristine, template.root.tree, template.root.manifest)
        except OSError:
            after = None
        if after is None:
            root.discard()
            return None
        root.chain, root.manifest, root.pristine = template.root.chain, after, after
        return root

    def _clone(self, template: _Template) -> Root:
        assert template.root is not None and self._copy is not None
        return copy_root(self._copy, template.root, self.work_dir)

    def _materialize(self, record: StepRecord, chain: tuple[str, ...]) -> Root:
        """A root of `chain`: a copy of the template of its longest prefix that has one, with
        the layers past it unpacked on top; else every layer unpacked."""
        base = self._prefix_template(chain)
        try:
            root = self._clone(base) if base is not None else empty_root(self.work_dir)
        finally:
            if base is not None:
                with self._lock:
                    base.users -= 1
        try:
            if len(root.chain) < len(chain):
                unpack_onto(root, record.layers[len(root.chain) :], self.store)
            root.chain = chain
            return root
        except BaseException:
            root.discard()
            raise

    def _prefix_template(self, chain: tuple[str, ...]) -> _Template | None:
        """The unpacked template of the longest proper prefix of `chain`, with a user counted."""
        with self._lock:
            found = [
                template
                for prefix, template in self._templates.items()
                if template.root is not None
                and len(prefix) < len(chain)
                and chain[: len(prefix)] == prefix
            ]
            if not found or self._copy is None:
                return None
            best = max(found, key=lambda template: len(template.root.chain))
            best.users += 1
            return best

    @contextlib.contextmanager
    def borrowed(self, record: StepRecord) -> Iterator[Root]:
        """A root of `record` to read (a COPY --from source), never changed: an idle root,
        put back after; else the chain's template, which readers share; else a new root."""
        chain = tuple(layer.diff_id for layer in record.layers)
        with self._lock:
            root = self._take_idle(chain)
            template = self._templates.get(chain) if root is None else None
            if template is not None:
                template.users += 1
        if template is not None:
            try:
                with template.ready:  # unpacked by then (or its unpacking failed)
                    shared = template.root
                if shared is not None:
                    yield shared
                    return
            finally:
                with self._lock:
                    template.users -= 1
        if root is None:
            root = self._materialize(record, chain)
        try:
            yield root
        except BaseException:
            root.discard()
            raise
        self.give(root, record)
