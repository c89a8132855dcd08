"""Strict YAML reading: duplicates, syntax errors, aliases, tags, encodings, positions."""

from __future__ import annotations

import pytest

from aigw.config import ConfigError, ConfigIssue, parse_route_file
from aigw.config.yaml_strict import NodePosition, read_yaml
from tests.unit.test_config import CANONICAL, ENV, edit


def issues_of(data: bytes) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_route_file("f.yaml", data, ENV)
    return [str(issue) for issue in caught.value.issues]


def test_duplicate_key_is_an_issue_with_both_lines() -> None:
    """PyYAML keeps the last duplicate silently; we name both places."""
    text = edit(("  methods: [POST]", "  name: other\n  methods: [POST]"))
    assert issues_of(text.encode()) == [
        "f.yaml:4:3: route.name: duplicate key `name` (first defined at line 2)"
    ]


def test_nested_duplicate_key_keeps_validating_the_first_value() -> None:
    """The first value is still validated, so one pass reports everything."""
    text = edit(
        ("azure_deployment_id: gpt-4o", "azure_deployment_id: gpt-4o\n              top_p: 2"),
        ("              azure_instance:", "              top_p: 7\n              azure_instance:"),
    )
    issues = issues_of(text.encode())
    prefix = "f.yaml:17:22: plugins[0].config.targets[0].model.options.top_p:"
    assert issues == [
        "f.yaml:17:22: plugins[0].config.targets[0].model.options.top_p: "
        "must be between 0 and 1; got 7",
        "f.yaml:20:15: plugins[0].config.targets[0].model.options.top_p: "
        "duplicate key `top_p` (first defined at line 17)",
    ]
    assert issues[0].startswith(prefix)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "route:\n  name: a: b\n",
            "f.yaml:2:10: invalid YAML: mapping values are not allowed in this context",
            id="mapping-in-scalar",
        ),
        pytest.param(
            "route:\n  paths: [/a\nplugins: []\n",
            "f.yaml:3:8: invalid YAML: did not find expected ',' or ']' "
            "(while parsing a flow sequence, line 2)",
            id="unclosed-flow",
        ),
        pytest.param(
            "route:\n\tname: x\n",
            "f.yaml:2:1: invalid YAML: found character that cannot start any token "
            "(while scanning for the next token, line 2)",
            id="tab-indent",
        ),
        pytest.param(
            'route:\n  name: "abc\n',
            "f.yaml:3:1: invalid YAML: found unexpected end of stream "
            "(while scanning a quoted scalar, line 2)",
            id="unterminated-quote",
        ),
        pytest.param(
            "route: {}\n---\nroute: {}\n",
            "f.yaml:2:1: invalid YAML: but found another document "
            "(expected a single document in the stream, line 1)",
            id="two-documents",
        ),
    ],
)
def test_syntax_error_has_line_and_column(text: str, expected: str) -> None:
    """Syntax errors point at the spot, and nothing else is reported for the file."""
    assert issues_of(text.encode()) == [expected]


@pytest.mark.parametrize(
    ("text", "key_path", "reason"),
    [
        pytest.param(
            "x: &a 1\nroute: *a\n", "route", "YAML aliases (*name) and merge keys", id="alias"
        ),
        pytest.param(
            "route:\n  <<: {name: a}\n", "route", "merge keys (<<) are not supported", id="merge"
        ),
        pytest.param(
            "route: !!python/object:os.system {}\n",
            "route",
            "unsupported YAML tag !!python/object:os.system",
            id="python-tag",
        ),
        pytest.param("route: !!binary aGk=\n", "route", "unsupported YAML tag !!binary", id="bin"),
        pytest.param("route: !!set {a}\n", "route", "unsupported YAML tag !!set", id="set"),
        pytest.param("route: !custom x\n", "route", "unsupported YAML tag !custom", id="local"),
        pytest.param(
            "route: 2024-02-30\n", "route", "as !!timestamp but cannot convert it", id="bad-date"
        ),
        pytest.param("route:\n  [a]: 1\n", "route", "mapping keys must be scalars", id="key"),
        pytest.param(
            "route: " + "[" * 40 + "]" * 40 + "\n",
            "route" + "[0]" * 32,
            "nesting deeper than 32 levels",
            id="deep",
        ),
    ],
)
def test_unsupported_yaml_features(text: str, key_path: str, reason: str) -> None:
    """Aliases, merge keys, exotic tags and absurd nesting are rejected with a position."""
    doc = read_yaml(text, "f.yaml")
    matching = [i for i in doc.issues if i.key_path == key_path and reason in i.reason]
    assert matching, doc.issues
    assert matching[0].line is not None
    with pytest.raises(ConfigError) as caught:
        parse_route_file("f.yaml", text.encode(), ENV)
    # The unreadable value is not also reported as "expected a mapping" or "missing".
    assert not any(
        i.key_path.startswith(key_path) and i not in doc.issues for i in caught.value.issues
    )


def test_billion_laughs_is_stopped_at_the_first_alias() -> None:
    """Aliases are refused where they appear, so expansion never happens."""
    text = 'a: &a ["lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b]\n'
    doc = read_yaml(text, "f.yaml")
    assert len(doc.issues) == 9 + 7
    assert doc.data == {"a": ["lol", "lol"], "b": [None] * 9, "c": [None] * 7}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", "f.yaml: file is empty; expected `route` and `plugins`", id="empty"),
        pytest.param(b"# only a comment\n\n", "f.yaml: file is empty", id="comment-only"),
        pytest.param(b"\xef\xbb\xbf", "f.yaml: file is empty", id="bom-only"),
        pytest.param(
            b"route:\n  name: caf\xe9\n",
            "f.yaml:2:12: file is not valid UTF-8 (byte 0xe9)",
            id="latin-1",
        ),
        pytest.param(
            "route:\n  name: é\u0007\n".encode(),
            "f.yaml:2:10: character U+0007 is not allowed in YAML",
            id="control-char",
        ),
        pytest.param(
            b"- route\n",
            "f.yaml:1:1: expected a mapping with keys `route` and `plugins`; got a list",
            id="top-level-list",
        ),
        pytest.param(
            b"hello\n",
            "f.yaml:1:1: expected a mapping with keys `route` and `plugins`; got a string",
            id="top-level-scalar",
        ),
    ],
)
def test_file_level_problems(data: bytes, expected: str) -> None:
    """Encoding, emptiness and the top-level shape are checked before the schema."""
    (issue,) = issues_of(data)
    assert issue.startswith(expected)


def test_utf8_bom_is_accepted() -> None:
    """Windows editors write a BOM; it is not content."""
    assert parse_route_file("f.yaml", b"\xef\xbb\xbf" + CANONICAL.encode(), ENV).route.name


def test_positions_record_value_and_key() -> None:
    """Each key path maps to its value's and its key's 1-based line and column."""
    doc = read_yaml("a:\n  b:   no\n  c: [x, 1]\n", "f.yaml")
    assert doc.data == {"a": {"b": False, "c": ["x", 1]}}
    assert doc.positions["a.b"] == NodePosition(2, 8, 2, 3, "no")
    assert doc.positions["a.c[1]"] == NodePosition(3, 10, None, None, "1")
    assert doc.positions["a.c[0]"].plain is None  # a string needs no explanation
    assert doc.positions[""] == NodePosition(1, 1)


def test_odd_keys_get_unambiguous_paths() -> None:
    """A key that is not a bare word is quoted in the path."""
    doc = read_yaml('route:\n  "a.b": 1\n  yes: 2\n', "f.yaml")
    assert set(doc.positions) == {"", "route", 'route["a.b"]', "route.yes"}
    issues = issues_of(b'route:\n  "a.b": 1\n')
    assert any('route["a.b"]: unknown key `a.b`' in i for i in issues)


def test_issue_objects_are_values() -> None:
    """ConfigIssue is a frozen value object: comparable and hashable."""
    issue = ConfigIssue("f", "k", "r", 1, 2)
    assert issue == ConfigIssue("f", "k", "r", 1, 2) and hash(issue) == hash(
        ConfigIssue("f", "k", "r", 1, 2)
    )


SCALARS = [
    "yes", "No", "on", "OFF", "y", "true", "False", "~", "null", "Null", "", "1", "-7", "+3",
    "0x1F", "0o17", "017", "0b101", "1_000", "190:20:30", "1e3", "1.5", "-.5", ".inf", "-.INF",
    ".nan", "6.8523015e+5", "2024-10-21", "2024-10-21T10:00:00Z", "2001-12-14 21:59:43.10 -5",
    "'yes'", '"1"', "gpt-4o", "${AZURE_INSTANCE}", "llm/v1/chat", "api-key", "~/x$", "!",
]  # fmt: skip


def test_tag_resolution_matches_pyyaml() -> None:
    """The streamlined resolver reads every scalar exactly as PyYAML's own resolver does."""
    import yaml

    text = "".join(f"k{index}: {scalar}\n" for index, scalar in enumerate(SCALARS))
    ours = read_yaml(text, "f.yaml")
    assert ours.issues == ()
    assert repr(ours.data) == repr(yaml.load(text, Loader=yaml.CSafeLoader))


def test_position_index_is_a_mapping() -> None:
    """The lazily built index behaves like a read-only dict of every readable node."""
    doc = read_yaml("a: {b: 1}\nc: [2]\n", "f.yaml")
    assert sorted(doc.positions) == ["", "a", "a.b", "c", "c[0]"]
    assert len(doc.positions) == 5 and "a.b" in doc.positions and "x" not in doc.positions
