"""The shell patterns of ${VAR#…}, ${VAR%…} and ${VAR/…/…}, matched in linear time.

moby turns a pattern into a Go regexp (RE2: linear). The same regex in Python backtracks:
`${A#*a*a*a*a*a*a*b}` over 100 a's took minutes. So a pattern with a `*` runs here as an NFA over
its tokens, O(len(value) x len(pattern)), giving what the regex gives: for an anchored prefix,
the shortest (`#`, `.*?`) or longest (`##`, `.*`) match; for a search, the leftmost match, and of
those the longest (a greedy `.*` regex finds that one: each star as long as the rest allows).
A pattern without `*` matches a fixed length and stays a regex."""

from __future__ import annotations

import re
from collections.abc import Callable

from buildgraph.errors import InputError

STAR, ANY = -1, -2  # tokens besides literal characters
Token = int | str
Fail = Callable[[str], InputError]


def tokens(pattern: str, fail: Fail) -> list[Token]:
    """`*` and `?` wildcards, `\\` escapes, no brackets (moby convertShellPatternToRegex)."""
    out: list[Token] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(STAR)
        elif ch == "?":
            out.append(ANY)
        elif ch == "\\":
            following = pattern[i] if i < len(pattern) else ""
            if following in ("}", "/"):  # escaped separators of ${...} are not part of it
                continue
            if following not in ("*", "?", "\\"):
                raise fail(f"invalid pattern ({pattern}) in substitution")
            out.append(following)
            i += 1
        else:
            out.append(ch)
    return out


def regex(pattern: list[Token], *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """The regex moby would build (used as is when the pattern has no `*`)."""
    parts = ["^"] if anchored else []
    for token in pattern:
        if token == STAR:
            parts.append(".*" if greedy else ".*?")
        elif token == ANY:
            parts.append(".")
        else:
            parts.append(re.escape(str(token)))
    return re.compile("".join(parts), re.DOTALL)


def trim_prefix(pattern: str, value: str, *, greedy: bool, fail: Fail) -> str:
    """${VAR#pattern} (greedy: ##)."""
    parsed = tokens(pattern, fail)
    if STAR not in parsed:
        match = regex(parsed, greedy=greedy, anchored=True).search(value)
        return value[match.end() :] if match else value
    ends = _prefix_ends(parsed, value, stop_at_first=not greedy)
    return value[ends[-1] :] if ends else value


def trim_suffix(pattern: str, value: str, *, greedy: bool, fail: Fail) -> str:
    """${VAR%pattern} (greedy: %%): a prefix of the reversed value, as moby does it."""
    reversed_pattern = "".join(reversed(_escaped_units(pattern)))
    return trim_prefix(reversed_pattern, value[::-1], greedy=greedy, fail=fail)[::-1]


def replace(pattern: str, value: str, replacement: str, *, every: bool, fail: Fail) -> str:
    """${VAR/pattern/replacement} (every: //), with what re.sub does with empty matches."""
    parsed = tokens(pattern, fail)
    if STAR not in parsed:
        compiled = regex(parsed, greedy=True, anchored=False)
        return compiled.sub(lambda _: replacement, value, count=0 if every else 1)
    out: list[str] = []
    done = pos = 0
    must_advance = False  # after an empty match, the next one must not be empty at that spot
    while pos <= len(value):
        found = _search(parsed, value, pos, must_advance)
        if found is None:
            break
        start, end = found
        out += [value[done:start], replacement]
        done = end
        if not every:
            break
        must_advance, pos = start == end, end
    out.append(value[done:])
    return "".join(out)


def _escaped_units(pattern: str) -> list[str]:
    """The pattern's characters, a `\\x` escape kept as one unit."""
    units: list[str] = []
    i = 0
    while i < len(pattern):
        step = 2 if pattern[i] == "\\" and i + 1 < len(pattern) else 1
        units.append(pattern[i : i + step])
        i += step
    return units


def _close(pattern: list[Token], states: dict[int, int], state: int, start: int) -> None:
    """Add `state` (and what a `*` lets it skip to) to `states`, keeping the leftmost start."""
    while True:
        known = states.get(state)
        if known is not None and known <= start:
            return
        states[state] = start
        if state < len(pattern) and pattern[state] == STAR:
            state += 1
        else:
            return


def _step(pattern: list[Token], states: dict[int, int], ch: str) -> dict[int, int]:
    following: dict[int, int] = {}
    for state, start in states.items():
        if state == len(pattern):
            continue
        token = pattern[state]
        if token == STAR:
            _close(pattern, following, state, start)
        elif token in (ANY, ch):
            _close(pattern, following, state + 1, start)
    return following


def _prefix_ends(pattern: list[Token], value: str, *, stop_at_first: bool) -> list[int]:
    """Where matches anchored at 0 end, in order (only the first with `stop_at_first`)."""
    states: dict[int, int] = {}
    _close(pattern, states, 0, 0)
    ends: list[int] = []
    for pos in range(len(value) + 1):
        if len(pattern) in states:
            ends.append(pos)
            if stop_at_first:
                break
        if pos == len(value) or not states:
            break
        states = _step(pattern, states, value[pos])
    return ends


def _search(
    pattern: list[Token], value: str, pos: int, must_advance: bool
) -> tuple[int, int] | None:
    """The leftmost match at or after `pos`, the longest of those (empty at `pos` refused when
    `must_advance`)."""
    states: dict[int, int] = {}
    best: tuple[int, int] | None = None
    here = pos
    while True:
        if best is None:  # a match may still start here
            _close(pattern, states, 0, here)
        start = states.get(len(pattern))
        empty_again = must_advance and start == here == pos
        if (
            start is not None
            and not empty_again
            and (best is None or (start, -here) < (best[0], -best[1]))
        ):
            best = (start, here)
        if best is not None:  # only an earlier start or a longer match can still win
            states = {state: begun for state, begun in states.items() if begun <= best[0]}
        if here == len(value) or not states:
            return best
        states = _step(pattern, states, value[here])
        here += 1
