"""The chroot isolation's metadata walk: what a step changed in a materialized root, as the
layer overlayfs would have given (worker/rootfs.py), on real files."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from buildgraph.image.layer import write_layer
from buildgraph.worker.rootfs import changes, scan, write_upper


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
