"""``${VAR}`` interpolation: syntax, defaults, escapes, errors."""

from __future__ import annotations

import pytest

from aigw.config.env import Expansion, expand, interpolate
from aigw.config.yaml_strict import NodePosition

ENV = {"A": "alpha", "B": "beta", "EMPTY": "", "INJECT": "${A}"}


@pytest.mark.parametrize(
    ("value", "text", "names"),
    [
        pytest.param("plain", "plain", (), id="no-reference"),
        pytest.param("${A}", "alpha", ("A",), id="whole"),
        pytest.param("x${A}y${B}z", "xalphaybetaz", ("A", "B"), id="several"),
        pytest.param("${A:-dflt}", "alpha", ("A",), id="set-ignores-default"),
        pytest.param("${UNSET:-dflt}", "dflt", ("UNSET",), id="unset-uses-default"),
        pytest.param("${EMPTY:-dflt}", "dflt", ("EMPTY",), id="empty-uses-default"),
        pytest.param("${UNSET:-}", "", ("UNSET",), id="empty-default"),
        pytest.param("${UNSET:-a:-b c}", "a:-b c", ("UNSET",), id="default-is-literal"),
        pytest.param("${EMPTY}", "", ("EMPTY",), id="set-but-empty"),
        pytest.param("$${A}", "${A}", (), id="escape"),
        pytest.param("$${", "${", (), id="escape-alone"),
        pytest.param("~/chat/completions$", "~/chat/completions$", (), id="regex-dollar"),
        pytest.param("$(uri_captures.d)", "$(uri_captures.d)", (), id="kong-template"),
        pytest.param("$A $$ $", "$A $$ $", (), id="other-dollars"),
        pytest.param("${INJECT}", "${A}", ("INJECT",), id="single-pass"),
        pytest.param("${_x1}", "${_x1}", ("_x1",), id="name-chars"),
    ],
)
def test_expand(value: str, text: str, names: tuple[str, ...]) -> None:
    """References expand once, from the given mapping only; other `$` are literal."""
    env = {**ENV, "_x1": "${_x1}"}
    assert expand(value, env) == Expansion(text, names, ())


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(
            "${UNSET}",
            "environment variable `UNSET` is not set (set it where aigw runs: `export UNSET=...` "
            "in a shell, a line `UNSET=...` in /etc/aigw/aigw.env for the systemd service; "
            "or write `${UNSET:-default}` to give a default)",
            id="unset",
        ),
        pytest.param("key-${A", "unterminated `${` (no closing `}`)", id="unterminated"),
        pytest.param(
            "${A:default}",
            "malformed variable reference to `A`; write `${NAME}` or `${NAME:-default}`",
            id="missing-dash",
        ),
        pytest.param("${1A}", "malformed variable reference; write", id="bad-name"),
        pytest.param("${}", "malformed variable reference; write", id="empty"),
        pytest.param("${A B}", "malformed variable reference to `A`;", id="space"),
    ],
)
def test_expand_problems(value: str, problem: str) -> None:
    """Bad references are problems that name at most the variable, never a value."""
    result = expand(value, ENV)
    assert len(result.problems) == 1
    assert result.problems[0].startswith(problem)
    assert "alpha" not in result.problems[0]


def test_every_unset_variable_in_a_value_is_reported() -> None:
    """Two unset variables in one string are two problems."""
    assert len(expand("${X}/${Y}", {}).problems) == 2


def test_interpolate_walks_values_not_keys() -> None:
    """Every string value is expanded, at any depth; keys and non-strings are untouched."""
    data = {"${A}": "${A}", "l": ["${B}", 1, True, None, {"k": "${A}-${B}"}]}
    result = interpolate(data, ENV, file="f.yaml", positions={})
    assert result.data == {"${A}": "alpha", "l": ["beta", 1, True, None, {"k": "alpha-beta"}]}
    assert result.sources == {'["${A}"]': ("A",), "l[0]": ("B",), "l[4].k": ("A", "B")}
    assert result.issues == () and result.unusable == frozenset()
    assert data["l"][0] == "${B}", "the input is not mutated"


def test_interpolate_reports_key_path_and_position() -> None:
    """An unset variable is an issue at the value's key path and position."""
    positions = {"route.name": NodePosition(2, 9, 2, 3)}
    result = interpolate({"route": {"name": "${NOPE}"}}, {}, file="f.yaml", positions=positions)
    (issue,) = result.issues
    assert (issue.file, issue.key_path, issue.line, issue.column) == ("f.yaml", "route.name", 2, 9)
    assert "`NOPE`" in issue.reason
    assert result.unusable == {"route.name"}
