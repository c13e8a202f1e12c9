"""The chroot isolation's metadata walk: what a step changed in a materialized root, as the
layer overlayfs would have given (worker/rootfs.py), on real files."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from buildgraph.image.layer import write_layer
from buildgraph.worker.treediff import changes, scan, write_upper


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_text("tool")
    os.link(root / "bin" / "tool", root / "bin" / "tool-alias")
    (root / "old").mkdir()
    (root / "old" / "a").write_text("a")
    (root / "swap").mkdir()
    (root / "keep").write_text("same")
    os.symlink("keep", root / "link")
    return root


def diff_layer(tree: Path, before, tmp_path: Path) -> dict[str, tarfile.TarInfo]:
    after = scan(tree)
    written, deleted = changes(before, after)
    upper = tmp_path / "upper"
    upper.mkdir()
    whiteouts = write_upper(tree, upper, after, written, deleted)
    out = io.BytesIO()
    write_layer(upper, out, compression="none", whiteouts="overlay", whiteout_names=whiteouts)
    out.seek(0)
    with tarfile.open(fileobj=out) as layer:
        return {member.name: member for member in layer.getmembers()}


def test_nothing_changed_gives_an_empty_diff(tree: Path, tmp_path: Path) -> None:
    before = scan(tree)
    assert changes(before, scan(tree)) == ([], [])


def test_changes_become_the_layer_overlayfs_would_give(tree: Path, tmp_path: Path) -> None:
    before = scan(tree)
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/\n")
    (tree / "new").write_text("new")
    (tree / "old" / "a").unlink()
    (tree / "old").rmdir()  # a deleted dir: one whiteout, none for its children
    (tree / "swap").rmdir()
    (tree / "swap").write_text("a file where a dir was")
    os.chmod(tree / "keep", 0o600)  # mode only
    os.unlink(tree / "link")
    os.symlink("elsewhere", tree / "link")  # a link retargeted
    members = diff_layer(tree, before, tmp_path)
    assert sorted(members) == [
        ".wh.old",
        "etc",
        "etc/passwd",
        "keep",
        "link",
        "new",
        "swap",
    ]
    assert members[".wh.old"].size == 0
    assert members["link"].linkname == "elsewhere"
    assert members["keep"].mode == 0o600
    assert members["swap"].isfile()


def test_a_new_name_for_a_file_carries_its_link_group(tree: Path, tmp_path: Path) -> None:
    before = scan(tree)
    os.link(tree / "bin" / "tool", tree / "bin" / "tool-third")
    members = diff_layer(tree, before, tmp_path)
    names = {name for name in members if name.startswith("bin/")}
    assert names == {"bin/tool", "bin/tool-alias", "bin/tool-third"}
    links = [m for m in members.values() if m.islnk()]
    assert len(links) == 2 and {m.linkname for m in links} == {"bin/tool"}


def test_a_scan_given_the_last_manifest_still_sees_a_retargeted_link(tree: Path) -> None:
    before = scan(tree)
    os.unlink(tree / "link")
    os.symlink("elsewhere", tree / "link")  # the freed inode number may well be reused
    after = scan(tree, before)  # unchanged links keep the target recorded in `before`
    assert after["link"].link == "elsewhere"
    assert changes(before, after) == (["link"], [])
    assert scan(tree, after) == scan(tree)


def test_a_file_changed_in_place_is_seen(tree: Path, tmp_path: Path) -> None:
    before = scan(tree)
    with open(tree / "keep", "a") as handle:
        handle.write("more")
    assert changes(before, scan(tree)) == (["keep"], [])


def test_deleted_children_of_a_replaced_dir_need_no_whiteouts(tree: Path) -> None:
    before = scan(tree)
    (tree / "old" / "a").unlink()
    (tree / "old").rmdir()
    (tree / "old").write_text("now a file")
    assert changes(before, scan(tree)) == (["old"], [])


# --- the pool: roots of a chain copied from a template (RootPool) ------------------------


def _store_record(tmp_path: Path, tree: Path):
    """A LocalStore holding `tree` as one layer, and the StepRecord of an image of it."""
    from buildgraph.cache.local import LocalStore
    from buildgraph.cache.steps import LayerRef, StepRecord
    from buildgraph.image.oci import Descriptor

    store = LocalStore(tmp_path / "store").ensure()
    with store.ingest() as writer:
        blob = write_layer(tree, writer, compression="gzip", whiteouts="none")
    descriptor = Descriptor(blob.media_type, blob.digest, blob.size)
    return store, StepRecord((LayerRef(descriptor, blob.diff_id),), ())


def _shape(manifest) -> dict:
    """A manifest without inode numbers: what two copies of one tree share."""
    return {
        path: (e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.link) for path, e in manifest.items()
    }


def test_a_forked_chain_is_copied_from_a_template_no_step_changes(
    tree: Path, tmp_path: Path
) -> None:
    from buildgraph.worker.rootfs import RootPool

    os.utime(tree / "bin", ns=(1_000_000_000, 1_000_000_000))
    store, record = _store_record(tmp_path, tree)
    pool = RootPool(tmp_path / "work", store)
    try:
        first = pool.take(record)  # laid out once: unpacked, no template yet
        second = pool.take(record)  # the fork: the template is made, and copied
        assert len(pool._templates) == 1
        third = pool.take(record)  # copied from the template, not unpacked again
        assert len(pool._templates) == 1
        for root in (second, third):
            assert _shape(root.manifest) == _shape(first.manifest)
            assert root.manifest == scan(root.tree)
            stat_tool = os.stat(root.tree / "bin" / "tool")
            assert stat_tool.st_nlink == 2  # the hard link inside the tree is kept
            assert stat_tool.st_ino == os.stat(root.tree / "bin" / "tool-alias").st_ino
        # A step writes in place into its root: the template and the other copies keep theirs.
        with open(second.tree / "etc" / "passwd", "r+") as handle:
            handle.write("changed")
        os.chmod(second.tree / "keep", 0o600)
        fourth = pool.take(record)
        assert (fourth.tree / "etc" / "passwd").read_text().startswith("root:x:0:0")
        assert _shape(fourth.manifest) == _shape(first.manifest)
        assert (third.tree / "etc" / "passwd").read_text().startswith("root:x:0:0")
        for root in (first, second, third, fourth):
            root.discard()
    finally:
        pool.close()
    assert list((tmp_path / "work").iterdir()) == []  # templates are removed with the pool


def test_a_reader_shares_the_template_and_never_changes_it(tree: Path, tmp_path: Path) -> None:
    from buildgraph.worker.rootfs import RootPool

    store, record = _store_record(tmp_path, tree)
    pool = RootPool(tmp_path / "work", store)
    try:
        taken = [pool.take(record), pool.take(record)]  # the second made the template
        with pool.borrowed(record) as one, pool.borrowed(record) as other:
            assert one is other  # both read the template: no copy for a COPY --from source
            assert (one.tree / "keep").read_text() == "same"
        assert pool._idle == []  # a template is not an idle root a step could take and change
        for root in taken:
            root.discard()
    finally:
        pool.close()


def test_idle_roots_are_kept_up_to_a_byte_budget(tree: Path, tmp_path: Path) -> None:
    from buildgraph.worker.rootfs import RootPool

    store, record = _store_record(tmp_path, tree)
    size = sum(len(p.read_bytes()) for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    pool = RootPool(tmp_path / "work", store, keep_bytes=2 * size, templates=0)
    try:
        roots = [pool.take(record) for _ in range(4)]
        assert roots[0].size == size  # every name of a file counts (a bound, not du)
        for root in roots:
            pool.give(root, record)
        kept = pool._idle
        assert kept == roots[::-1][: len(kept)]  # most recently given first
        assert sum(root.size for root in kept) <= 2 * size + roots[0].size
        assert 1 <= len(kept) < 4
        for root in roots:
            if root not in kept:
                assert not root.holder.exists()  # evicted: removed from disk
    finally:
        pool.close()


def test_spare_copies_of_a_fork_are_made_ahead_and_removed_with_the_pool(
    tree: Path, tmp_path: Path
) -> None:
    import time

    from buildgraph.worker.rootfs import SPARES, RootPool

    store, record = _store_record(tmp_path, tree)
    pool = RootPool(tmp_path / "work", store)

    def spares() -> list:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with pool._lock:
                (template,) = pool._templates.values()
                if len(template.spares) == SPARES and not template.filling:
                    return list(template.spares)
            time.sleep(0.01)
        raise AssertionError("the spare copies were never made")

    try:
        first, second = pool.take(record), pool.take(record)  # the fork: a template, spares
        ready = spares()
        third = pool.take(record)
        assert third in ready  # taken ready-made, not copied on the spot
        assert _shape(third.manifest) == _shape(first.manifest) == _shape(scan(third.tree))
        assert third not in spares()  # and another made in its place
        for root in (first, second, third):
            root.discard()
    finally:
        pool.close()
    assert list((tmp_path / "work").iterdir()) == []  # spares go with the pool


# --- what the plan tells the pool (worker/root_demand.py) --------------------------------


def _with_layer(store, record, tmp_path: Path, name: str):
    """`record` with one more layer on top: a file NAME at the top of the tree."""
    from buildgraph.cache.steps import LayerRef, StepRecord
    from buildgraph.image.oci import Descriptor

    upper = tmp_path / f"layer-{name}"
    upper.mkdir()
    (upper / name).write_text(name)
    with store.ingest() as writer:
        blob = write_layer(upper, writer, compression="none", whiteouts="none")
    layer = LayerRef(Descriptor(blob.media_type, blob.digest, blob.size), blob.diff_id)
    return StepRecord((*record.layers, layer), ())


def _chain(record) -> tuple[str, ...]:
    return tuple(layer.diff_id for layer in record.layers)


def _idle_filler(pool) -> None:
    import time

    deadline = time.monotonic() + 30
    while any(t.filling for t in pool._templates.values()) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_chain_the_plan_needs_twice_is_a_template_at_its_first_take(
    tree: Path, tmp_path: Path
) -> None:
    from buildgraph.worker.rootfs import RootPool

    store, record = _store_record(tmp_path, tree)
    pool = RootPool(tmp_path / "work", store, demand=lambda chain: 2)
    try:
        first = pool.take(record)  # unpacked once, as the template; the step gets a copy
        assert list(pool._templates) == [_chain(record)]
        assert first.origin == _chain(record) and first.pristine == first.manifest
        first.discard()
    finally:
        pool.close()


def test_a_stage_root_others_need_becomes_their_template(tree: Path, tmp_path: Path) -> None:
    from buildgraph.worker.rootfs import RootPool

    store, record = _store_record(tmp_path, tree)
    demand = {"now": 0}
    pool = RootPool(tmp_path / "work", store, demand=lambda chain: demand["now"])
    try:
        own = pool.take(record)  # the stage's root: no one else needs it yet
        assert pool._templates == {}
        pool.give(own, record)
        demand["now"] = 2  # two steps still to run need these layers
        copy = pool.take(record)
        (template,) = pool._templates.values()
        assert template.root is own  # not unpacked again
        assert copy.holder != own.holder and _shape(copy.manifest) == _shape(own.manifest)
        copy.discard()
    finally:
        pool.close()


def _two_chains(tree: Path, tmp_path: Path, demand: dict):
    """A record, the same with one more layer, and a pool whose demand is read from DEMAND
    (filled in by the caller; chains missing count as needed by no step)."""
    from buildgraph.worker.rootfs import RootPool

    store, record = _store_record(tmp_path, tree)
    longer = _with_layer(store, record, tmp_path, "service")
    pool = RootPool(tmp_path / "work", store, demand=lambda chain: demand.get(chain, 0))
    return record, longer, pool


def test_a_root_no_step_needs_is_put_back_and_served_again(tree: Path, tmp_path: Path) -> None:
    demand: dict = {}
    record, longer, pool = _two_chains(tree, tmp_path, demand)
    demand.update({_chain(record): 2, _chain(longer): 1})
    try:
        used = pool.take(record)
        (template,) = pool._templates.values()
        demand[_chain(record)] = 0  # no spare copies from here on: this test takes its own
        _idle_filler(pool)
        for spare in template.spares:
            spare.discard()
        template.spares.clear()
        (used.tree / "service").write_text("what a service step added")
        os.chmod(used.tree / "etc", 0o700)
        manifest = scan(used.tree)
        pool.give(used, longer, manifest)
        assert pool._reverted(template) is None  # a step still needs it
        demand[_chain(longer)] = 0
        again = pool._reverted(template)
        assert again is used  # the same dir, put back
        assert again.chain == _chain(record) and again.manifest == scan(again.tree)
        assert _shape(again.manifest) == _shape(template.root.manifest)
        assert not (again.tree / "service").exists()
        again.discard()
    finally:
        pool.close()


def test_a_chain_past_a_template_is_laid_out_from_it(tree: Path, tmp_path: Path) -> None:
    demand: dict = {}
    record, longer, pool = _two_chains(tree, tmp_path, demand)
    demand[_chain(record)] = 2
    try:
        pool.take(record).discard()  # makes the template of the shorter chain
        root = pool.take(longer)  # a copy of that template, and the one layer unpacked
        assert root.origin == _chain(record) and root.chain == _chain(longer)
        assert (root.tree / "service").read_text() == "service"
        assert (root.tree / "etc" / "passwd").read_text().startswith("root:")
        assert root.manifest == scan(root.tree)
        root.discard()
    finally:
        pool.close()


# --- templates kept from one build to the next (worker/kept_templates.py) ---------------------


def test_a_template_is_kept_for_the_next_build_and_copied_from_there(
    tree: Path, tmp_path: Path
) -> None:
    from buildgraph.worker.kept_templates import KeptTemplates
    from buildgraph.worker.rootfs import RootPool

    store, record = _store_record(tmp_path, tree)
    kept = KeptTemplates(tmp_path / "kept")
    first = RootPool(tmp_path / "work", store, demand=lambda chain: 2, kept=kept)
    first.take(record).discard()  # a template, unpacked
    first.close()
    assert kept.has(_chain(record))
    assert list((tmp_path / "work").iterdir()) == []  # moved to the kept dir, not left behind

    second = RootPool(tmp_path / "work", store, demand=lambda chain: 1, kept=kept)
    try:
        root = second.take(record)  # one step needs it: a copy of the kept template
        (template,) = second._templates.values()
        assert template.from_disk and template.root.holder.parent == tmp_path / "kept"
        assert root.origin == _chain(record)
        assert _shape(root.manifest) == _shape(template.root.manifest)
        (root.tree / "etc" / "passwd").write_text("changed in the copy")
        root.discard()
    finally:
        second.close()
    assert kept.has(_chain(record))  # left where it was, unchanged
    reopened = kept.open(_chain(record))
    assert reopened is not None
    assert (reopened[0] / "tree" / "etc" / "passwd").read_text().startswith("root:x:0:0")
    reopened[2].close()


@pytest.mark.parametrize("tamper", ["in place", "added", "mode"])
def test_a_kept_template_changed_on_disk_is_removed_not_used(
    tree: Path, tmp_path: Path, tamper: str
) -> None:
    from buildgraph.worker.kept_templates import KeptTemplates
    from buildgraph.worker.rootfs import RootPool

    store, record = _store_record(tmp_path, tree)
    kept = KeptTemplates(tmp_path / "kept")
    first = RootPool(tmp_path / "work", store, demand=lambda chain: 2, kept=kept)
    first.take(record).discard()
    first.close()
    (place,) = (tmp_path / "kept").iterdir()
    passwd = place / "tree" / "etc" / "passwd"
    if tamper == "in place":  # same size, mtime put back: only the ctime tells
        before = os.stat(passwd)
        passwd.write_text("evil:x:0:0::/root:/bin/sh\n"[: before.st_size].ljust(before.st_size))
        os.utime(passwd, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif tamper == "added":
        (place / "tree" / "etc" / "backdoor").write_text("x")
    else:
        os.chmod(place / "tree", 0o777)

    assert kept.open(_chain(record)) is None
    assert not place.exists()  # removed, so the next build unpacks a clean one
    second = RootPool(tmp_path / "work", store, demand=lambda chain: 2, kept=kept)
    try:
        root = second.take(record)
        assert (root.tree / "etc" / "passwd").read_text().startswith("root:x:0:0")
        root.discard()
    finally:
        second.close()


def test_kept_templates_are_trimmed_to_the_most_recently_used(tree: Path, tmp_path: Path) -> None:
    from buildgraph.worker.kept_templates import KeptTemplates
    from buildgraph.worker.rootfs import RootPool

    store, record = _store_record(tmp_path, tree)
    records = [record] + [
        _with_layer(store, record, tmp_path, f"extra{index}") for index in range(3)
    ]
    kept = KeptTemplates(tmp_path / "kept", keep=2)
    for one in records:
        pool = RootPool(tmp_path / "work", store, demand=lambda chain: 2, kept=kept)
        pool.take(one).discard()
        pool.close()
    assert [kept.has(_chain(one)) for one in records] == [False, False, True, True]


def test_a_stage_root_kept_as_a_template_is_found_by_the_next_build(
    tree: Path, tmp_path: Path
) -> None:
    from buildgraph.worker.kept_templates import KeptTemplates
    from buildgraph.worker.rootfs import RootPool

    store, record = _store_record(tmp_path, tree)
    kept = KeptTemplates(tmp_path / "kept")
    demand = {"now": 0}
    pool = RootPool(tmp_path / "work", store, demand=lambda chain: demand["now"], kept=kept)
    own = pool.take(record)
    pool.give(own, record, scan(own.tree))
    # What a commit does after its scan: the layer's files are linked into the upper dir and
    # unlinked with it, which moves their ctimes.
    os.link(own.tree / "keep", tmp_path / "upper-link")
    os.unlink(tmp_path / "upper-link")
    demand["now"] = 2
    pool.take(record).discard()  # the idle stage root becomes the template
    pool.close()
    assert kept.has(_chain(record))
    second = RootPool(tmp_path / "work", store, demand=lambda chain: 1, kept=kept)
    try:
        second.take(record).discard()
        (template,) = second._templates.values()
        assert template.from_disk  # it passed the check: not thrown away and unpacked again
    finally:
        second.close()
