"""Shell patterns of ${VAR#…}/${VAR%…}/${VAR/…}: the NFA gives what moby's regex gives, in
linear time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildgraph.errors import InputError
from buildgraph.frontend import shellpattern
from buildgraph.frontend.expand import expand


def fail(message: str) -> InputError:
    return InputError(message)


def by_regex_prefix(pattern: str, value: str, greedy: bool) -> str:
    compiled = shellpattern.regex(shellpattern.tokens(pattern, fail), greedy=greedy, anchored=True)
    match = compiled.search(value)
    return value[match.end() :] if match else value


def by_regex_replace(pattern: str, value: str, replacement: str, every: bool) -> str:
    compiled = shellpattern.regex(shellpattern.tokens(pattern, fail), greedy=True, anchored=False)
    return compiled.sub(lambda _: replacement, value, count=0 if every else 1)


patterns = st.lists(st.sampled_from(["*", "*", "?", "a", "b", "ab", "\\*"]), max_size=6).map(
    "".join
)
values = st.text(alphabet="ab*", max_size=12)


@settings(max_examples=400, deadline=None)
@given(patterns, values, st.booleans())
def test_trimming_a_prefix_is_what_the_regex_gives(pattern: str, value: str, greedy: bool) -> None:
    got = shellpattern.trim_prefix(pattern, value, greedy=greedy, fail=fail)
    assert got == by_regex_prefix(pattern, value, greedy)


@settings(max_examples=400, deadline=None)
@given(patterns, values, st.sampled_from(["", "X", "XY"]), st.booleans())
def test_replacing_is_what_the_regex_gives(
    pattern: str, value: str, replacement: str, every: bool
) -> None:
    got = shellpattern.replace(pattern, value, replacement, every=every, fail=fail)
    assert got == by_regex_replace(pattern, value, replacement, every)


# Each took minutes with Python's backtracking regex (exponential in the stars, or quadratic
# in the value); the timeout is a hang guard, far above the milliseconds they take now.
@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A#*a*a*a*a*a*a*b}", "a" * 200),
        ("${A%%a*a*a*a*a*a*b}", "a" * 200),
        ("${A//a*b/x}", "a" * 200),
    ],
)
def test_hostile_patterns_take_linear_time(text: str, expected: str) -> None:
    assert expand(text, {"A": "a" * 200}) == expected
    long = "a" * 100_000
    assert expand(text.replace("A", "L"), {"L": long}) == long
