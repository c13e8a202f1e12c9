"""The words of one logical Dockerfile line: keyword and rest, JSON arrays, shell-like words
with quotes and escapes kept, heredoc openers (BuildKit's parser helpers)."""

from __future__ import annotations

import json
import re

from buildgraph.errors import InputError, Location
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.expand import expand_words, split_raw_words
from buildgraph.frontend.flags import split_flags

WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC = re.compile(r"^(\d{0,9})<<(-?)([^<]*)$")
_NOT_STRINGS = "when using JSON array syntax, arrays must be comprised of strings only"


def split_command(line: str) -> tuple[str, list[str], str]:
    """(KEYWORD, flags, arguments) of one logical line (buildkit splitCommand)."""
    parts = WHITESPACE.split(line.strip(), maxsplit=1)
    keyword = parts[0].upper()
    if len(parts) < 2:
        return keyword, [], ""
    flags, rest = split_flags(parts[1])
    return keyword, flags, rest.strip()


def parse_json_array(rest: str, where: Location) -> list[str] | None:
    """The strings of a JSON array, or None when `rest` is not one (then it is shell form)."""
    rest = rest.lstrip()
    if not rest.startswith("["):
        return None
    try:  # like Go's json.Decoder, anything after the array is ignored
        value, _ = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        return None
    if not all(isinstance(item, str) for item in value):
        raise InputError(_NOT_STRINGS, where)
    return value


def parse_words(rest: str, escape: str) -> list[str]:
    """Whitespace-split words, quotes and escapes kept for expansion later (parseWords).

    Linear in the line: runs of ordinary characters are taken in one step, and a word is a list
    of pieces joined once (a 1 MiB ENV value is one step, not a million string copies)."""
    specials = re.escape("'\"" + escape)
    plain = re.compile(f"[^\\s{specials}]+")
    quoted = {q: re.compile(f"[^{re.escape(q + escape)}]+") for q in "'\""}
    words: list[str] = []
    word: list[str] = []
    quote, blank_ok, in_word = "", False, False
    pos, size = 0, len(rest)
    while pos < size:
        if quote:
            pos, quote = _quoted_piece(rest, pos, quote, escape, quoted[quote], word)
            continue
        if in_word and (run := plain.match(rest, pos)):
            word.append(run[0])
            pos = run.end()
            continue
        ch = rest[pos]
        if ch.isspace():
            if in_word and (blank_ok or word):
                words.append("".join(word))
            word, blank_ok, in_word = [], False, False
            pos += 1
            continue
        in_word = True
        if ch == escape:
            pos = _escaped(rest, pos, word)
            continue
        if ch in "'\"":
            quote, blank_ok = ch, True
        word.append(ch)
        pos += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def _quoted_piece(
    rest: str, pos: int, quote: str, escape: str, run: re.Pattern[str], word: list[str]
) -> tuple[int, str]:
    """One step inside quotes: a run of plain characters, an escape (not in '...'), or the
    closing quote. Returns the next position and the quote still open ("" once closed)."""
    if found := run.match(rest, pos):
        word.append(found[0])
        return found.end(), quote
    ch = rest[pos]
    if ch == escape and quote != "'":
        return _escaped(rest, pos, word), quote
    word.append(ch)
    return pos + 1, "" if ch == quote else quote


def _escaped(rest: str, pos: int, word: list[str]) -> int:
    """At an escape character: keep it with the character it escapes (expansion reads both
    later); a trailing escape is dropped. Returns the position after them."""
    if pos + 1 == len(rest):
        return pos + 1
    word.append(rest[pos : pos + 2])
    return pos + 2


def parse_heredoc_word(word: str) -> ins.Heredoc | None:
    """A heredoc opener such as `<<EOF`, `<<-"EOF"` or `3<<EOF` (content filled in later)."""
    match = _HEREDOC.match(word)
    if not match or not match[3]:
        return None
    try:
        words = expand_words(match[3], {})
    except InputError:
        return None
    if len(words) != 1:
        return None
    # A quoted delimiter turns expansion off; compare quote counts with and without quotes.
    raw = split_raw_words(match[3])
    quotes = sum(raw[0].count(q) for q in "'\"") if raw else 0
    expand = quotes == sum(words[0].count(q) for q in "'\"")
    return ins.Heredoc(
        name=words[0],
        content="",
        expand=expand,
        chomp=match[2] == "-",
        fd=int(match[1]) if match[1] else None,
    )


def heredoc_openers(line: str) -> list[ins.Heredoc]:
    if "<<" not in line:  # the common case: no word to split
        return []
    return [doc for word in split_raw_words(line) if (doc := parse_heredoc_word(word))]


def can_have_heredocs(line: str, where: Location) -> bool:
    """RUN, COPY and ADD (also behind ONBUILD) in shell form may carry heredocs."""
    keyword, _, rest = split_command(line)
    if keyword == "ONBUILD":
        keyword, _, rest = split_command(rest)
    if keyword not in ("RUN", "COPY", "ADD"):
        return False
    return parse_json_array(rest, where) is None
