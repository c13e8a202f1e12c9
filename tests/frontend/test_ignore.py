""".dockerignore matching, with cases from moby/patternmatcher's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildgraph.errors import InputError
from buildgraph.frontend.ignore import compile_patterns, load_dockerignore, read_patterns

# (pattern, path, matches-or-a-parent-matches) from patternmatcher TestMatches.
SINGLE_CASES = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**/**", "dir/file", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/dir2/file", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\\\", "a\\", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    # Go filepath.Match cases, through MatchesOrParentMatches
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "ab/c", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[^e-g]", "abc", True),
    ("a?b", "a☺b", True),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), SINGLE_CASES)
def test_single_pattern(pattern: str, path: str, expected: bool) -> None:
    assert compile_patterns([pattern]).matches(path) is expected


MULTI_CASES = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["*.go"], ".", False),
    ([], "any/path/there", False),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), MULTI_CASES)
def test_pattern_order(patterns: list[str], path: str, expected: bool) -> None:
    assert compile_patterns(patterns).matches(path) is expected


def test_bad_patterns() -> None:
    with pytest.raises(InputError):
        compile_patterns(["!"])
    with pytest.raises(InputError):
        compile_patterns(["["])


def test_read_patterns_cleans_lines() -> None:
    text = "\ufeff# comment\n\n  node_modules/  \n/build\n!  /build/keep\n./a/../b//c\n #not\n"
    assert read_patterns(text) == ["node_modules", "build", "!build/keep", "b/c", "#not"]


@pytest.mark.parametrize(
    ("patterns", "directory", "expected"),
    [
        (["node_modules"], "node_modules", True),
        (["node_modules"], "src", False),
        (["docs", "!docs/README.md"], "docs", False),
        (["docs", "!docs/README.md"], "other", False),
        (["*", "!src"], "build", True),
        (["*", "!src/main.py"], "src", False),
        (["*", "!**/keep"], "build", False),
        (["build", "!src/*.py"], "build", True),
        (["build", "!build/*.txt"], "build", False),
    ],
)
def test_can_skip_dir(patterns: list[str], directory: str, expected: bool) -> None:
    assert compile_patterns(patterns).can_skip_dir(directory) is expected


def test_load_dockerignore(tmp_path: Path) -> None:
    assert load_dockerignore(tmp_path).empty
    (tmp_path / ".dockerignore").write_text("*.log\n!keep.log\n")
    matcher = load_dockerignore(tmp_path)
    assert matcher.matches("a.log") and not matcher.matches("keep.log")
    dockerfile = tmp_path / "app.Dockerfile"
    (tmp_path / "app.Dockerfile.dockerignore").write_text("secrets\n")
    beside = load_dockerignore(tmp_path, dockerfile)
    assert beside.matches("secrets/key") and not beside.matches("a.log")


@given(st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), min_size=1, max_size=4))
def test_excluded_dir_excludes_everything_below(parts: list[str]) -> None:
    matcher = compile_patterns([parts[0]])
    assert matcher.matches("/".join(parts))
    assert matcher.can_skip_dir(parts[0])
