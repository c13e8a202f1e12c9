"""Word expansion, checked against moby's shell lexer test tables (envVarTest, wordsTest)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildgraph.errors import InputError, Location
from buildgraph.frontend.expand import (
    EXPANDING_INSTRUCTIONS,
    expand,
    expand_words,
    platform_args,
)

ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}
ERROR = object()

# From buildkit frontend/dockerfile/shell/envVarTest (the "A" and "U" rows).
ENV_VAR_CASES = [
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he'llo", ERROR),
    ("he\\'llo", "he'llo"),
    ("he\\\\'llo", ERROR),
    ("abc\\tdef", "abctdef"),
    ('"abc\\tdef"', "abc\\tdef"),
    ('"abc\\\\tdef"', "abc\\tdef"),
    ("'abc\\tdef'", "abc\\tdef"),
    ("hello\\", "hello"),
    ("hello\\\\", "hello\\"),
    ('"hello', ERROR),
    ('"hello\\"', ERROR),
    ('"hel\'lo"', "hel'lo"),
    ("'hello", ERROR),
    ("'hello\\'", "hello\\"),
    ("'hello\\there'", "hello\\there"),
    ("'hello\\\\there'", "hello\\\\there"),
    ("\"''\"", "''"),
    ("$.", "$."),
    ("he$1x", "hex"),
    ("he$.x", "he$.x"),
    ("he$pwd.", "he."),
    ("he$PWD", "he/home"),
    ("he\\$PWD", "he$PWD"),
    ("he\\\\$PWD", "he\\/home"),
    ('"he\\$PWD"', "he$PWD"),
    ('"he\\\\$PWD"', "he\\/home"),
    ("\\${}", "${}"),
    ("\\${}aaa", "${}aaa"),
    ("he\\${}", "he${}"),
    ("he\\${}xx", "he${}xx"),
    ("${}", ERROR),
    ("${}aaa", ERROR),
    ("he${}", ERROR),
    ("he${}xx", ERROR),
    ("he${hi}", "he"),
    ("he${hi}xx", "hexx"),
    ("he${PWD}", "he/home"),
    ("he${.}", ERROR),
    ("he${XXX:-000}xx", "he000xx"),
    ("he${PWD:-000}xx", "he/homexx"),
    ("he${XXX:-$PWD}xx", "he/homexx"),
    ("he${XXX:-${PWD:-yyy}}xx", "he/homexx"),
    ("he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
    ("he${XXX:YYY}", ERROR),
    ("he${XXX?}", ERROR),
    ("he${XXX:?}", ERROR),
    ("he${PWD?}", "he/home"),
    ("he${PWD:?}", "he/home"),
    ("he${NULL?}", "he"),
    ("he${NULL:?}", ERROR),
    ("he${XXX:+${PWD}}xx", "hexx"),
    ("he${PWD:+${XXX}}xx", "hexx"),
    ("he${PWD:+${SHELL}}xx", "hebashxx"),
    ("he${XXX:+000}xx", "hexx"),
    ("he${PWD:+000}xx", "he000xx"),
    ("'he${XX}'", "he${XX}"),
    ('"he${PWD}"', "he/home"),
    ("\"he'$PWD'\"", "he'/home'"),
    ('"$PWD"', "/home"),
    ("'$PWD'", "$PWD"),
    ("'\\$PWD'", "\\$PWD"),
    ("'\"hello\"'", '"hello"'),
    ("he\\$PWD", "he$PWD"),
    ("'he\\$PWD'", "he\\$PWD"),
    ("he${PWD", ERROR),
    ("he${PWD=000}xx", ERROR),
    ("he${PWD+${PWD}}xx", "he/homexx"),
    ("he${PWD+${SHELL}}xx", "hebashxx"),
    ("he${XXX+000}xx", "hexx"),
    ("he${PWD+000}xx", "he000xx"),
    ("he${XXX-000}xx", "he000xx"),
    ("he${PWD-000}xx", "he/homexx"),
    ("he${NULL-000}xx", "hexx"),
    ("he${NULL:-000}xx", "he000xx"),
    ("${KOREAN}", "한국어"),
    ("안녕${KOREAN}", "안녕한국어"),
    ("안녕$KOREAN", "안녕한국어"),
]


@pytest.mark.parametrize(("source", "expected"), ENV_VAR_CASES)
def test_env_var_table(source: str, expected: object) -> None:
    if expected is ERROR:
        with pytest.raises(InputError):
            expand(source, ENV)
    else:
        assert expand(source, ENV) == expected


# From buildkit TestProcessWithMatches: pattern trimming and substitution.
MODIFIER_CASES = [
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y"),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy"),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy"),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y"),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy."),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a"),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx"),
    ("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
     "/foo.*/*.txt - /foo..*.txt"),
    ("${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}", {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
     "/tmp/bar.txt - /bar.txt"),
    ("${FOO/$N/$R}", {"FOO": "http://google.de", "N": "http://", "R": "https://"},
     "https://google.de"),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt"),
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx  ccc"),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa  "),
    ("${BAR?bbb}", {"BAR": ""}, ""),
]  # fmt: skip


@pytest.mark.parametrize(("source", "env", "expected"), MODIFIER_CASES)
def test_modifiers(source: str, env: dict[str, str], expected: str) -> None:
    assert expand(source, env) == expected


@pytest.mark.parametrize("source", ["${FOO=aaa}", "${FOO=:aaa}", "${FOO//ww}", "${BAZ?ccc}"])
def test_modifier_errors(source: str) -> None:
    with pytest.raises(InputError):
        expand(source, {"FOO": "xxyy"})


def test_required_variable_message_and_location() -> None:
    where = Location("Dockerfile", 7)
    with pytest.raises(InputError, match="message herex") as caught:
        expand("${VAR:?message here$ARG}", {"VAR": "", "ARG": "x"}, where=where)
    assert caught.value.where == where
    assert expand("${VAR?message here$ARG}", {"VAR": "", "ARG": "x"}) == ""


# From buildkit frontend/dockerfile/shell/wordsTest.
WORDS_ENV = {"hi": "hi", "space": "abc  def", "leading": "  ab c", "trailing": "ab c   "}
WORDS_CASES = [
    ("hello", ["hello"]),
    ("hello${hi}bye", ["hellohibye"]),
    ("hello${space}bye", ["helloabc", "defbye"]),
    ('hello"${space}"bye', ["helloabc  defbye"]),
    ('hello "${space}"bye', ["hello", "abc  defbye"]),
    ("hello${leading}def", ["hello", "ab", "cdef"]),
    ('hello"${leading}" def', ["hello  ab c", "def"]),
    ('hello"${leading}"', ["hello  ab c"]),
    ("hello${leading}", ["hello", "ab", "c"]),
    ("hello${trailing}", ["helloab", "c"]),
    ("hello${trailing}d", ["helloab", "c", "d"]),
    ('hello"${trailing}"d', ["helloab c   d"]),
    ('hel"lo${trailing}"', ["helloab c   "]),
    ('hello" there  "', ["hello there  "]),
    ("hello there     ", ["hello", "there"]),
    ("hello\\ there", ["hello there"]),
    ('hello\\" there', ['hello"', "there"]),
    ('hello"\\\\there"', ["hello\\there"]),
    ('hello"\\there"', ["hello\\there"]),
    ("hello'\\\\there'", ["hello\\\\there"]),
    ("hello'\\there'", ["hello\\there"]),
    ("hello'$there'", ["hello$there"]),
]


@pytest.mark.parametrize(("source", "expected"), WORDS_CASES)
def test_words_table(source: str, expected: list[str]) -> None:
    assert expand_words(source, WORDS_ENV) == expected


def test_unterminated_quote_in_words() -> None:
    with pytest.raises(InputError):
        expand_words('hello" there', WORDS_ENV)


def test_backtick_escape() -> None:
    assert expand("C:`\\dir `$HOME", {"HOME": "/h"}, escape="`") == "C:\\dir $HOME"
    assert expand('"a`"b"', {}, escape="`") == 'a"b'


def test_heredoc_body_keeps_quotes() -> None:
    assert expand("echo \"$A\" '$A'\n", {"A": "1"}, quotes=False) == "echo \"1\" '1'\n"


@given(st.text(alphabet=st.characters(blacklist_characters="$'\"\\")))
def test_text_without_specials_is_unchanged(text: str) -> None:
    assert expand(text, ENV) == text


@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), st.text()))
def test_braced_variable_is_its_value(env: dict[str, str]) -> None:
    for name, value in env.items():
        assert expand("${" + name + "}", env) == value
        assert expand('"$' + name + '"', env) == value


def test_platform_args() -> None:
    args = platform_args("linux/arm64/v8", "linux/amd64")
    assert args["TARGETPLATFORM"] == "linux/arm64/v8"
    assert (args["TARGETOS"], args["TARGETARCH"], args["TARGETVARIANT"]) == ("linux", "arm64", "v8")
    assert (args["BUILDARCH"], args["BUILDVARIANT"]) == ("amd64", "")
    with pytest.raises(InputError):
        platform_args("linux", "linux/amd64")


def test_expanding_instructions_table() -> None:
    assert {"COPY", "ENV", "FROM", "WORKDIR"} <= EXPANDING_INSTRUCTIONS
    assert not {"RUN", "CMD", "ENTRYPOINT", "SHELL", "ONBUILD"} & EXPANDING_INSTRUCTIONS
