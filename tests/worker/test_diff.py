"""relink_copied_up: a copied-up file keeps its other hardlink names, with the new content."""

from __future__ import annotations

import os
from pathlib import Path

from buildgraph.worker.diff import relink_copied_up


def test_other_names_of_a_copied_up_file_come_back_as_links(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "x").mkdir(parents=True)
    (lower / "x/one").write_text("old\n")
    os.link(lower / "x/one", lower / "x/two")
    os.link(lower / "x/one", lower / "elsewhere")
    (upper / "x").mkdir(parents=True)
    (upper / "x/one").write_text("new\n")  # what overlayfs leaves after a write to x/one
    assert relink_copied_up(upper, [lower]) == 2
    assert (upper / "x/two").read_text() == "new\n"
    assert (upper / "x/two").stat().st_ino == (upper / "x/one").stat().st_ino
    assert (upper / "elsewhere").stat().st_ino == (upper / "x/one").stat().st_ino


def test_names_written_or_replaced_elsewhere_are_left_alone(tmp_path: Path) -> None:
    bottom, top, upper = tmp_path / "bottom", tmp_path / "top", tmp_path / "upper"
    for directory in (bottom, top, upper):
        directory.mkdir()
    (bottom / "a").write_text("old\n")
    os.link(bottom / "a", bottom / "b")
    os.link(bottom / "a", bottom / "c")
    (top / "c").write_text("replaced in a later layer\n")
    (upper / "a").write_text("new\n")
    (upper / "b").write_text("the command wrote b itself\n")
    assert relink_copied_up(upper, [top, bottom]) == 0
    assert (upper / "b").read_text() == "the command wrote b itself\n"
    assert not (upper / "c").exists()


def test_new_files_cost_nothing(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    (upper / "fresh").write_text("x")
    assert relink_copied_up(upper, [lower]) == 0
