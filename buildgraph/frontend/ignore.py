""".dockerignore matching with Docker's semantics (moby/patternmatcher + ignorefile)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from buildgraph.errors import InputError, Location

_WILDCARDS = re.compile(r"[*?\[\\]")
_ESCAPED = frozenset(".+()|{}$^")  # regex specials with no meaning in filepath.Match


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str  # cleaned, without the leading "!"
    exception: bool  # a "!pattern" that re-includes
    regex: re.Pattern[str]
    literal_dirs: tuple[str, ...]  # leading path parts without wildcards (for pruning)
    wild: bool  # any wildcard at all

    def matches(self, path: str) -> bool:
        return self.regex.match(path) is not None


@dataclass(frozen=True, slots=True)
class IgnoreMatcher:
    patterns: tuple[Pattern, ...]

    def matches(self, relative_path: str) -> bool:
        """True when the path (or a parent dir) is excluded and no later exception re-includes it.

        Same as patternmatcher.MatchesOrParentMatches: the last pattern that matches wins."""
        if not self.patterns:
            return False  # no .dockerignore: asked once per context file, so answer at once
        path = _clean(relative_path)
        if path in (".", ""):
            return False  # the context root itself is never excluded
        parents = _parents(path)
        matched = False
        for pattern in self.patterns:
            if pattern.exception != matched:
                continue  # only exceptions can change a match, only exclusions a non-match
            if pattern.matches(path) or any(pattern.matches(parent) for parent in parents):
                matched = not pattern.exception
        return matched

    def can_skip_dir(self, relative_dir: str) -> bool:
        """True when the dir is excluded and no exception could re-include anything below it."""
        if not self.matches(relative_dir):
            return False
        parts = tuple(_clean(relative_dir).split("/"))
        for pattern in self.patterns:
            if not pattern.exception:
                continue
            literal = pattern.literal_dirs
            shared = min(len(literal), len(parts))
            if literal[:shared] != parts[:shared]:
                continue  # the exception lives in another subtree
            if len(literal) > len(parts) or pattern.wild:
                return False  # it names something below this dir, or may
        return True

    @property
    def empty(self) -> bool:
        return not self.patterns


def load_dockerignore(context: Path, dockerfile: Path | None = None) -> IgnoreMatcher:
    """`<Dockerfile name>.dockerignore` beside the Dockerfile if any, else the context's."""
    candidates = [context / ".dockerignore"]
    if dockerfile is not None:
        candidates.insert(0, dockerfile.with_name(dockerfile.name + ".dockerignore"))
    for candidate in candidates:
        try:
            text = candidate.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read ignore file: {err}", Location(candidate)) from err
        return compile_patterns(read_patterns(text), source=candidate)
    return IgnoreMatcher(())


def read_patterns(text: str) -> list[str]:
    """The patterns of an ignore file: comments and blank lines dropped, paths cleaned."""
    patterns = []
    for line in text.removeprefix("\ufeff").split("\n"):
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        exception = pattern.startswith("!")
        if exception:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = _clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]  # "/foo" means "foo" at the context root
        patterns.append("!" + pattern if exception else pattern)
    return patterns


def compile_patterns(
    patterns: Iterable[str], *, source: Path | str = ".dockerignore"
) -> IgnoreMatcher:
    compiled = []
    for raw in patterns:
        text = raw.strip()
        if not text:
            continue
        text = _clean(text)
        exception = text.startswith("!")
        if exception:
            if len(text) == 1:
                raise InputError('illegal exclusion pattern: "!"', Location(source))
            text = text[1:]
        try:
            regex = re.compile(_to_regex(text))
        except re.error as err:
            raise InputError(f"bad ignore pattern {raw!r}: {err}", Location(source)) from err
        parts = text.split("/")
        literal: list[str] = []
        for part in parts:
            if _WILDCARDS.search(part):
                break
            literal.append(part)
        compiled.append(Pattern(text, exception, regex, tuple(literal), len(literal) < len(parts)))
    return IgnoreMatcher(tuple(compiled))


def _to_regex(pattern: str) -> str:
    """patternmatcher's Pattern.compile; its exact/prefix/suffix shortcuts become regexes too."""
    suffix = pattern[2:]
    if pattern.startswith("**") and not _WILDCARDS.search(suffix) and "]" not in suffix:
        # Go's "suffix match": "**foo" is any path ending in "foo", "**/foo" any ".../foo".
        if suffix.startswith("/"):
            return "^(.*/)?" + re.escape(suffix[1:]) + "$"
        return "^.*" + re.escape(suffix) + "$"
    out = ["^"]
    i = 0
    in_class = False
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if in_class:  # inside [...] characters pass through, as Go's regexp reads them
            if ch == "\\" and i < len(pattern):
                out.append("\\" + pattern[i])
                i += 1
                continue
            in_class = ch != "]"
            out.append(ch)
        elif ch == "[":
            in_class = True
            out.append(ch)
        elif ch == "*" and pattern[i : i + 1] == "*":
            i += 1
            if pattern[i : i + 1] == "/":
                i += 1  # "**/" is the same as "**"
            out.append(".*" if i == len(pattern) else "(.*/)?")
        elif ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch in _ESCAPED:
            out.append("\\" + ch)
        elif ch == "\\":
            out.append(re.escape(pattern[i]) if i < len(pattern) else "\\\\")
            i += 1
        else:
            out.append(re.escape(ch))
    return "".join(out) + "$"


def _clean(path: str) -> str:
    """Go's filepath.Clean for slash paths."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned.startswith("//"):
        cleaned = cleaned[1:]  # normpath keeps a leading "//", Clean does not
    return cleaned


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
