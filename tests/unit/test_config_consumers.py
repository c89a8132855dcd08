"""Consumer files (``consumer:`` and ``consumers:``): every rule, every message (file:line:col
and key path), keys hashed at load and never shown; loading 10,000 consumers stays fast."""

from __future__ import annotations

import gc
import hashlib
import time
from pathlib import Path

import pytest

from aigw.config import (
    ConfigError,
    ConfigIssue,
    ConsumerConfig,
    ConsumerFile,
    KeyCredential,
    load_dir,
    parse_conf_file,
    parse_route_file,
)
from aigw.consumers.index import credential_id, key_digest

KEY = "sk-team-search-0123456789"  # a key that must never appear in a message
KEY_HASH = "sha256:" + hashlib.sha256(b"other-key").hexdigest()

CONSUMER = """\
consumer:
  username: team-search
  custom_id: c-42
  keyauth_credentials:
    - key: ${TEAM_KEY}
    - key_hash: HASH
  acls:
    - group: chat
    - group: embed
    - group: chat
""".replace("HASH", KEY_HASH)
ENV = {"TEAM_KEY": KEY}


def parse(text: str, env: dict[str, str] | None = None) -> object:
    return parse_conf_file("c.yaml", text.encode(), ENV if env is None else env)


def issues_of(text: str, env: dict[str, str] | None = None) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    for issue in caught.value.issues:
        assert KEY not in str(issue)
    return caught.value.issues


def credential(digest: bytes) -> KeyCredential:
    return KeyCredential(digest=digest, id=credential_id(digest))


def test_consumer_file_loads_with_keys_only_as_digests() -> None:
    """The plain key is hashed at load; key_hash is taken as the digest it states."""
    loaded = parse(CONSUMER)
    assert loaded == ConsumerFile(
        source="c.yaml",
        digest=hashlib.sha256(CONSUMER.encode()).hexdigest(),
        consumers=(
            ConsumerConfig(
                username="team-search",
                keyauth_credentials=(
                    credential(key_digest(KEY)),
                    credential(hashlib.sha256(b"other-key").digest()),
                ),
                acls=("chat", "embed"),
                custom_id="c-42",
            ),
        ),
    )
    assert KEY not in repr(loaded)


def test_key_hash_hex_is_case_insensitive() -> None:
    upper = parse(CONSUMER.replace(KEY_HASH, "sha256:" + KEY_HASH[7:].upper()))
    lower = parse(CONSUMER)
    assert isinstance(upper, ConsumerFile) and isinstance(lower, ConsumerFile)
    assert upper.consumers == lower.consumers


def test_minimal_consumer_and_consumers_list() -> None:
    one = parse("consumer: {username: a, keyauth_credentials: [{key: k1}]}\n")
    many = parse(
        "consumers:\n"
        "  - {username: a, keyauth_credentials: [{key: k1}]}\n"
        "  - {username: b@x.io, keyauth_credentials: [{key: k2}], acls: [{group: g}]}\n"
    )
    assert isinstance(one, ConsumerFile) and isinstance(many, ConsumerFile)
    assert one.consumers == (ConsumerConfig("a", (credential(key_digest("k1")),)),)
    assert [c.username for c in many.consumers] == ["a", "b@x.io"]
    assert many.consumers[1].acls == ("g",)


def test_parse_route_file_refuses_a_consumer_file() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_route_file("c.yaml", CONSUMER.encode(), ENV)
    assert (
        str(caught.value) == "c.yaml: not a route file: this is a consumer file (it has no `route`)"
    )


ONE = "consumer: {username: a, keyauth_credentials: [{key: k1}], FIELD}\n"

CONSUMER_ERRORS = [
    # username
    ("consumer: {keyauth_credentials: [{key: k}]}", "consumer.username", "missing required key"),
    ("consumer: {username: '', keyauth_credentials: [{key: k}]}", "consumer.username", "empty"),
    (
        "consumer: {username: team search, keyauth_credentials: [{key: k}]}",
        "consumer.username",
        "must contain only letters, digits, `.`, `_`, `@` and `-` (it is a log field and a "
        'metrics label); got "team search"',
    ),
    (
        f"consumer: {{username: {'a' * 129}, keyauth_credentials: [{{key: k}}]}}",
        "consumer.username",
        "must be at most 128 characters (it is a log field and a metrics label); got 129",
    ),
    ("consumer: {username: 7, keyauth_credentials: [{key: k}]}", "consumer.username", "a string"),
    # credentials
    ("consumer: {username: a}", "consumer.keyauth_credentials", "missing required key"),
    ("consumer: {username: a, keyauth_credentials: []}", "consumer.keyauth_credentials", "one"),
    (
        "consumer: {username: a, keyauth_credentials: {key: k}}",
        "consumer.keyauth_credentials",
        "expected a list; got a mapping",
    ),
    (
        "consumer: {username: a, keyauth_credentials: [{}]}",
        "consumer.keyauth_credentials[0]",
        "set exactly one of `key` and `key_hash`",
    ),
    (
        f"consumer: {{username: a, keyauth_credentials: [{{key: k, key_hash: '{KEY_HASH}'}}]}}",
        "consumer.keyauth_credentials[0].key_hash",
        "set exactly one of `key` and `key_hash`",
    ),
    (
        "consumer: {username: a, keyauth_credentials: [{key: ''}]}",
        "consumer.keyauth_credentials[0].key",
        "must not be empty",
    ),
    (
        "consumer: {username: a, keyauth_credentials: [{key: 'a b'}]}",
        "consumer.keyauth_credentials[0].key",
        "must not contain whitespace or control characters (a trailing newline?)",
    ),
    (
        "consumer: {username: a, keyauth_credentials: [{key: 12345}]}",
        "consumer.keyauth_credentials[0].key",
        "expected a string; got an integer; put the value in quotes",
    ),
    (
        "consumer: {username: a, keyauth_credentials: [{key_hash: 'sha256:abc'}]}",
        "consumer.keyauth_credentials[0].key_hash",
        "must be `sha256:` followed by 64 hex digits",
    ),
    (
        f"consumer: {{username: a, keyauth_credentials: [{{key_hash: '{KEY_HASH[7:]}'}}]}}",
        "consumer.keyauth_credentials[0].key_hash",
        "must be `sha256:` followed by 64 hex digits",
    ),
    (
        "consumer: {username: a, keyauth_credentials: [{key: k, ttl: 60}]}",
        "consumer.keyauth_credentials[0].ttl",
        "`ttl` is not supported: to rotate a key, add the new one, then remove the old one",
    ),
    (
        "consumer: {username: a, keyauth_credentials: [{kye: k}]}",
        "consumer.keyauth_credentials[0].kye",
        "did you mean `key`?",
    ),
    # acls
    (ONE.replace("FIELD", "acls: [chat]"), "consumer.acls[0]", "such as `{group: chat}`"),
    (ONE.replace("FIELD", "acls: [{group: ''}]"), "consumer.acls[0].group", "must not be empty"),
    (ONE.replace("FIELD", "acls: [{}]"), "consumer.acls[0].group", "missing required key"),
    (ONE.replace("FIELD", "acls: [{group: g, tags: [t]}]"), "consumer.acls[0].tags", "Kong"),
    (ONE.replace("FIELD", 'acls: [{group: "a\\nb"}]'), "consumer.acls[0].group", "control"),
    (ONE.replace("FIELD", "acls: chat"), "consumer.acls", "expected a list; got a string"),
    # other fields
    (ONE.replace("FIELD", "custom_id: ''"), "consumer.custom_id", "must not be empty"),
    (ONE.replace("FIELD", "usrname: b"), "consumer.usrname", "did you mean `username`?"),
    (ONE.replace("FIELD", "id: x"), "consumer.id", "is a Kong setting that aigw does not support"),
    (ONE.replace("FIELD", "tags: [t]"), "consumer.tags", "is a Kong setting"),
    (ONE.replace("FIELD", "consumer_groups: [g]"), "consumer.consumer_groups", "`acls` groups"),
    (
        ONE.replace("FIELD", "jwt_secrets: []"),
        "consumer.jwt_secrets",
        "`jwt_secrets` is not supported: aigw's consumers authenticate with `keyauth_credentials`",
    ),
    (
        ONE.replace("FIELD", "basicauth_credentials: []"),
        "consumer.basicauth_credentials",
        "authenticate with `keyauth_credentials`",
    ),
    # the root
    ("consumer: a", "consumer", "expected a mapping; got a string"),
    ("consumers: []", "consumers", "must list at least one consumer"),
    ("consumers: {username: a}", "consumers", "expected a list; got a mapping"),
    (
        ONE + "route: {name: r}\n",
        "route",
        "`route` does not belong in a consumer file: put the route in a file of its own",
    ),
    (ONE + "plugins: []\n", "plugins", "does not belong in a consumer file"),
    (ONE + "consumers: []\n", "consumers", "either `consumer` (one) or `consumers` (a list)"),
    (ONE + "_format_version: '3.0'\n", "_format_version", "is a Kong setting"),
]


@pytest.mark.parametrize(("text", "key_path", "reason"), CONSUMER_ERRORS)
def test_consumer_errors(text: str, key_path: str, reason: str) -> None:
    text = text.replace(", FIELD", "")
    issues = [i for i in issues_of(text + "\n") if reason in i.reason]
    assert [i.key_path for i in issues] == [key_path], issues_of(text)
    assert issues[0].line is not None and issues[0].column is not None


def test_duplicates_within_a_file_name_the_entries_never_the_key() -> None:
    text = f"""\
consumers:
  - username: a
    keyauth_credentials:
      - key: ${{TEAM_KEY}}
  - username: b
    keyauth_credentials:
      - key: other
      - key: {KEY}
  - username: a
    keyauth_credentials: [{{key: third}}, {{key: third}}]
"""
    assert [str(i) for i in issues_of(text)] == [
        "c.yaml:8:9: consumers[1].keyauth_credentials[1]: "
        "the same key as `consumers[0].keyauth_credentials[0]`",
        "c.yaml:9:15: consumers[2].username: username `a` is already used by `consumers[0]`",
        "c.yaml:10:41: consumers[2].keyauth_credentials[1]: "
        "the same key as `consumers[2].keyauth_credentials[0]`",
    ]


def test_a_key_and_its_own_hash_are_the_same_key() -> None:
    """Duplicate detection works on digests, so `key` and `key_hash` of it collide."""
    own_hash = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    credentials = f"[{{key: '{KEY}'}}, {{key_hash: '{own_hash}'}}]"
    text = f"consumer: {{username: a, keyauth_credentials: {credentials}}}\n"
    (issue,) = issues_of(text)
    assert issue.key_path == "consumer.keyauth_credentials[1]"
    assert issue.reason == "the same key as `consumer.keyauth_credentials[0]`"
    assert own_hash[7:] not in str(issue)


@pytest.mark.parametrize(
    "credential_entry",
    [
        f"{{key: '{KEY} '}}",
        f'{{key: "{KEY}\\n"}}',
        "{key: '${TEAM_KEY} x'}",
        '{key: "${TEAM_KEY}\\t"}',
        f"{{key: '{KEY}', key_hash: '{KEY}'}}",
        f"{{key_hash: '{KEY}'}}",
        f"{{key: [{KEY}]}}",
        f"{{kye: '{KEY}'}}",
    ],
)
def test_a_key_is_never_in_a_message(credential_entry: str) -> None:
    """issues_of asserts it on every message; an env key is named by its variable."""
    issues = issues_of(f"consumer: {{username: a, keyauth_credentials: [{credential_entry}]}}\n")
    assert issues
    if "TEAM_KEY" in credential_entry:
        assert any(i.reason.endswith("; value from `${TEAM_KEY}`") for i in issues)


def test_an_unset_key_variable_is_reported_once() -> None:
    (issue,) = issues_of(CONSUMER, {})
    assert issue.key_path == "consumer.keyauth_credentials[0].key"
    assert issue.reason.startswith("environment variable `TEAM_KEY` is not set")


# -- load_dir and the root dispatch ---------------------------------------------------------


def test_load_dir_returns_every_kind(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONSUMER)
    (tmp_path / "g.yaml").write_text("plugins:\n  - name: key-auth\n")
    (tmp_path / "bad.yaml").write_text("consumer: {username: a}\n")
    loaded = load_dir(tmp_path, ENV)
    assert [Path(f.source).name for f in loaded.consumers] == ["c.yaml"]
    assert [Path(f.source).name for f in loaded.global_plugins] == ["g.yaml"]
    assert loaded.accepted == ()
    assert [Path(e.source).name for e in loaded.rejected] == ["bad.yaml"]


# -- 10,000 consumers -------------------------------------------------------------------------

MANY = 10_000
# Generous for a loaded 2-core CI machine; measured figures are in the commit/report.
MANY_BUDGET_S = 3.0


def many_consumers(count: int) -> bytes:
    lines = ["consumers:"]
    for n in range(count):
        lines.append(f"  - username: team-{n}")
        lines.append(f"    keyauth_credentials: [{{key: key-{n}-0123456789abcdef}}]")
        lines.append("    acls: [{group: chat}]")
    return ("\n".join(lines) + "\n").encode()


def test_no_garbage_collection_runs_while_a_large_file_is_parsed() -> None:
    """The cyclic collector would walk every live node again and again (3x the parse time
    for 10,000 consumers); the loader pauses it for large files, and restores it."""
    data = many_consumers(2_000)
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        parse_conf_file("many.yaml", data, {})
    finally:
        gc.callbacks.remove(count)
    # Without the pause: about 180 collections for this file; one may start at the edges.
    assert len(collections) <= 2 and gc.isenabled(), collections


def test_ten_thousand_consumers_in_one_file_load_fast() -> None:
    data = many_consumers(MANY)
    started = time.perf_counter()
    loaded = parse_conf_file("many.yaml", data, {})
    elapsed = time.perf_counter() - started
    assert isinstance(loaded, ConsumerFile) and len(loaded.consumers) == MANY
    assert elapsed < MANY_BUDGET_S, f"{MANY} consumers in one file took {elapsed:.2f} s"


def test_ten_thousand_consumer_files_parse_fast() -> None:
    files = [
        (
            f"conf.d/team-{n}.yaml",
            (
                f"consumer:\n  username: team-{n}\n  keyauth_credentials:\n"
                f"    - key: key-{n}-0123456789abcdef\n  acls:\n    - group: chat\n"
            ).encode(),
        )
        for n in range(MANY)
    ]
    started = time.perf_counter()
    loaded = [parse_conf_file(source, data, {}) for source, data in files]
    elapsed = time.perf_counter() - started
    assert all(isinstance(f, ConsumerFile) for f in loaded)
    assert elapsed < MANY_BUDGET_S * 3, f"{MANY} consumer files took {elapsed:.2f} s"
