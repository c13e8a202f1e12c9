"""Facts: asked of the live sources once, kept frozen, answered from the table only."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildgraph.errors import InputError, Location
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.graph.context import StatCache, context_digest
from buildgraph.graph.facts import FactTable, LiveFacts, RecordingFacts
from buildgraph.graph.plans import BaseImage
from buildgraph.image.config import ImageConfig
from buildgraph.image.oci import Platform

NOTHING = IgnoreMatcher(())


def live(asked: list[str]) -> LiveFacts:
    def resolver_for(platform: Platform):
        def resolve(reference: str, where: Location | None) -> BaseImage:
            asked.append(f"{reference}@{platform}")
            return BaseImage(reference, "sha256:" + "a" * 64, ImageConfig())

        return resolve

    return LiveFacts(resolver_for=resolver_for, fetch_url=None, stat_cache=StatCache())


def test_each_question_is_asked_once_and_the_answers_are_kept(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    asked: list[str] = []
    recorder = RecordingFacts(live(asked))
    for _ in range(2):
        recorder.base("busybox", Platform(), None)
        found = recorder.context(tmp_path, ("*.txt",), NOTHING, True, None)
    assert asked == [f"busybox@{Platform()}"]
    assert found.selected == ("a.txt",)
    assert found.digest == context_digest(tmp_path, ("a.txt",), NOTHING, StatCache())
    facts = recorder.facts()
    (tmp_path / "a.txt").write_text("changed")  # the table answers what was gathered
    table = FactTable(facts)
    assert table.context(tmp_path, ("*.txt",), NOTHING, True, None) == found
    assert table.base("busybox", Platform(), None).digest == "sha256:" + "a" * 64


def test_the_table_knows_only_what_was_gathered(tmp_path: Path) -> None:
    table = FactTable(RecordingFacts(live([])).facts())
    with pytest.raises(KeyError):
        table.base("busybox", Platform(), None)
    with pytest.raises(KeyError):
        table.context(tmp_path, ("a.txt",), NOTHING, False, None)


def test_facts_are_frozen() -> None:
    facts = RecordingFacts(live([])).facts()
    with pytest.raises(TypeError):
        facts.bases["x", Platform()] = BaseImage("x", "", ImageConfig())  # type: ignore[index]


def test_an_add_url_without_a_downloader_is_an_input_error() -> None:
    with pytest.raises(InputError, match="ADD of a URL is not available here"):
        live([]).url("https://example.test/a", None, Location(Path("Dockerfile"), 3))
