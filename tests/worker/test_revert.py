"""Putting a used root of the chroot isolation back to its template (worker/revert.py), on real
trees: whatever a step did, the result is the template's tree or nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from buildgraph.worker.revert import revert
from buildgraph.worker.treediff import Manifest, scan


@pytest.fixture
def template(tmp_path: Path) -> Path:
    root = tmp_path / "template"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "bin").mkdir()
    (root / "bin" / "busybox").write_bytes(b"\x7fELF" + b"x" * 1000)
    for name in ("sh", "ls", "cat"):
        os.symlink("busybox", root / "bin" / name)
    (root / "opt" / "lib").mkdir(parents=True)
    (root / "opt" / "lib" / "a.so").write_text("a")
    os.chmod(root / "opt", 0o750)
    os.chown(root / "opt" / "lib" / "a.so", 123, 456)
    for path in [*root.rglob("*"), root]:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000), follow_symlinks=False)
    return root


def copy_of(template: Path, dest: Path) -> tuple[Path, Manifest]:
    subprocess.run(["cp", "-a", "-T", str(template), str(dest)], check=True)
    return dest, scan(dest)


def contents(tree: Path) -> dict[str, tuple]:
    """What a layer of the tree would hold: every entry's type, mode, owner, mtime and bytes."""
    found = {}
    for path in sorted([tree, *tree.rglob("*")]):
        info = os.lstat(path)
        data = b""
        if path.is_symlink():
            data = os.readlink(path).encode()
        elif path.is_file():
            data = path.read_bytes()
        relative = str(path.relative_to(tree))
        found[relative] = (info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns, data)
    return found


def test_what_a_step_did_is_undone(template: Path, tmp_path: Path) -> None:
    tree, pristine = copy_of(template, tmp_path / "tree")
    # what a service's build stage does: new dirs and files, and its own touches of the base
    (tree / "build" / "src").mkdir(parents=True)
    (tree / "build" / "src" / "main.c").write_text("int main;")
    (tree / "build" / "out").write_bytes(os.urandom(4096))
    (tree / "opt" / "lib" / "b.so").write_text("b")
    os.unlink(tree / "bin" / "ls")
    os.unlink(tree / "bin" / "cat")
    os.symlink("/elsewhere", tree / "bin" / "cat")  # retargeted
    os.chmod(tree / "opt", 0o755)
    os.chown(tree / "etc" / "group", 1000, 1000)
    os.link(tree / "bin" / "busybox", tree / "busybox-alias")  # a new name for a base file
    # In place, same size, the mtime put back: only the ctime tells.
    with open(tree / "etc" / "passwd", "r+") as handle:
        handle.write("ROOT")
    os.utime(tree / "etc" / "passwd", ns=(1_000_000_000, 1_000_000_000))
    (tree / "etc" / "group").rename(tree / "etc" / "group-")  # moved away
    (tree / "etc" / "group-").rename(tree / "etc" / "group")
    os.setxattr(tree / "bin" / "busybox", "user.mark", b"1")
    os.chmod(tree, 0o700)  # the top of the tree itself
    assert contents(tree) != contents(template)

    after = revert(tree, pristine, template, scan(template))

    assert after is not None
    assert contents(tree) == contents(template)
    assert after == scan(tree)
    assert os.listxattr(tree / "bin" / "busybox") == []
    assert os.stat(tree / "bin" / "busybox").st_nlink == 1


def test_an_untouched_tree_is_left_as_it_is(template: Path, tmp_path: Path) -> None:
    tree, pristine = copy_of(template, tmp_path / "tree")
    inodes = {path: os.lstat(path).st_ino for path in tree.rglob("*")}
    after = revert(tree, pristine, template, scan(template))
    assert after is not None
    assert {path: os.lstat(path).st_ino for path in tree.rglob("*")} == inodes  # nothing copied


def test_dirs_and_files_that_swapped_kinds_are_put_back(template: Path, tmp_path: Path) -> None:
    tree, pristine = copy_of(template, tmp_path / "tree")
    subprocess.run(["rm", "-rf", str(tree / "opt")], check=True)
    (tree / "opt").write_text("a file where a dir was")
    os.unlink(tree / "etc" / "passwd")
    (tree / "etc" / "passwd").mkdir()
    (tree / "etc" / "passwd" / "inside").write_text("x")
    after = revert(tree, pristine, template, scan(template))
    assert after is not None
    assert contents(tree) == contents(template)


def test_a_planted_symlink_is_removed_never_followed(template: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("host file")
    tree, pristine = copy_of(template, tmp_path / "tree")
    subprocess.run(["rm", "-rf", str(tree / "etc")], check=True)
    os.symlink(str(outside), tree / "etc")  # a step turns /etc into a way out
    after = revert(tree, pristine, template, scan(template))
    assert after is not None
    assert (outside / "passwd").read_text() == "host file"
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
    assert contents(tree) == contents(template)


def test_a_touched_hard_link_group_is_not_put_back(template: Path, tmp_path: Path) -> None:
    os.link(template / "bin" / "busybox", template / "bin" / "busybox-too")
    tree, pristine = copy_of(template, tmp_path / "tree")
    with open(tree / "bin" / "busybox", "ab") as handle:  # both names change
        handle.write(b"patched")
    # Restoring one name would split a group the template has: the tree is not reused.
    assert revert(tree, pristine, template, scan(template)) is None


def test_an_xattr_on_a_kept_dir_is_not_put_back(template: Path, tmp_path: Path) -> None:
    tree, pristine = copy_of(template, tmp_path / "tree")
    os.setxattr(tree / "etc", "user.mark", b"1")
    assert revert(tree, pristine, template, scan(template)) is None
