"""Consumer and global plugins files, hot-reloaded while a real ``aigw serve`` serves.

Each test runs its own gateway over its own conf.d (`ReloadGateway` from the reload tests) in
front of the session's Azure mock, and calls it with the real openai SDK holding a consumer key
(``AzureOpenAI(api_key=...)`` sends it as ``api-key``, the route's key-auth ``key_names``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import AzureOpenAI

from tests.integration.conftest import GATEWAY_ENV, _chat
from tests.integration.harness import MockProcess, run_check
from tests.integration.test_reload import OLD, ReloadGateway, digest
from tests.integration.test_sdk import API_VERSION, OPEN_CLIENTS, QUESTION

KEY_AUTH = "  - name: key-auth\n    config: {key_names: [api-key]}\n"
KEYS = ("team-key-one-5f1c", "team-key-two-8a2e", "team-key-three-c41d")


def guarded(name: str) -> str:
    """A chat route for deployment *name* with its own key-auth."""
    return _chat(name).replace("plugins:\n", "plugins:\n" + KEY_AUTH, 1)


def consumer(username: str, *keys: str) -> str:
    credentials = "".join(f"\n    - key: {key}" for key in keys)
    return f"consumer:\n  username: {username}\n  keyauth_credentials:{credentials}\n"


@pytest.fixture
def gw(tmp_path: Path, mock: MockProcess) -> Iterator[ReloadGateway]:
    gateway = ReloadGateway(tmp_path, mock)
    yield gateway
    gateway.stop()


def chat_as(gw: ReloadGateway, key: str, model: str = "alpha") -> str | None:
    """The upstream model answering with consumer key *key*, or None when refused 401."""
    client = AzureOpenAI(
        api_key=key, azure_endpoint=gw.proc.url, api_version=API_VERSION, max_retries=0
    )
    OPEN_CLIENTS.append(client)
    try:
        return client.chat.completions.create(model=model, messages=QUESTION).model
    except openai.AuthenticationError as exc:
        assert exc.code == "invalid_api_key"
        return None


def test_consumer_file_added_rotated_broken_and_deleted_while_serving(gw: ReloadGateway) -> None:
    one, two, three = KEYS
    gw.write("alpha.yaml", guarded("alpha"))
    gw.start()
    assert chat_as(gw, one) is None
    assert gw.status()["consumers"] == 0

    added = consumer("team", one)
    gw.write("team.yaml", added)
    status = gw.wait_active("team.yaml", added)
    assert status["consumers"] == 1
    assert status["files"]["team.yaml"]["kind"] == "consumer"
    assert status["files"]["team.yaml"]["consumers"] == 1
    assert status["files"]["alpha.yaml"]["kind"] == "route"
    assert chat_as(gw, one) == OLD
    assert gw.events("config_reload")[-1]["consumers"] == 1

    # Rotation: the new key next to the old, then the old one goes.
    both = consumer("team", one, two)
    gw.write("team.yaml", both)
    gw.wait_active("team.yaml", both)
    assert (chat_as(gw, one), chat_as(gw, two)) == (OLD, OLD)
    rotated = consumer("team", two)
    gw.write("team.yaml", rotated)
    gw.wait_active("team.yaml", rotated)
    assert (chat_as(gw, one), chat_as(gw, two)) == (None, OLD)

    # A broken version: refused, the last known good keeps serving.
    gw.write("team.yaml", consumer("team", three).replace("- key:", "- kye:"))
    status = gw.wait_file("team.yaml", "lkg", rotated)
    assert status["degraded"] is True and status["consumers"] == 1
    assert any("kye" in issue for issue in status["files"]["team.yaml"]["error"])
    assert (chat_as(gw, two), chat_as(gw, three)) == (OLD, None)
    assert gw.rejections("team.yaml")[-1]["serving"] == "last known good"

    (gw.conf / "team.yaml").unlink()
    status = gw.wait_status(lambda s: "team.yaml" not in s["files"])
    assert status["consumers"] == 0 and status["degraded"] is False
    assert chat_as(gw, two) is None
    assert gw.events("config_reload")[-1]["consumers"] == 0
    # No key was ever written to a log line.
    log = gw.proc.raw_log()
    assert not any(key in log for key in KEYS)


def test_global_key_auth_file_guards_every_route_while_it_exists(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", _chat("alpha"))
    gw.write("team.yaml", consumer("team", KEYS[0]))
    gw.start()
    assert chat_as(gw, "any-key-at-all") == OLD  # no key-auth: any client key passes
    text = "plugins:\n" + KEY_AUTH
    gw.write("global.yaml", text)
    status = gw.wait_active("global.yaml", text)
    assert status["files"]["global.yaml"]["kind"] == "plugins"
    assert status["files"]["global.yaml"]["plugins"] == ["key-auth"]
    assert (chat_as(gw, "any-key-at-all"), chat_as(gw, KEYS[0])) == (None, OLD)
    (gw.conf / "global.yaml").unlink()
    gw.wait_status(lambda s: "global.yaml" not in s["files"])
    assert chat_as(gw, "any-key-at-all") == OLD


def test_consumer_file_taking_an_active_username_is_refused(gw: ReloadGateway) -> None:
    gw.write("alpha.yaml", guarded("alpha"))
    gw.write("team.yaml", consumer("team", KEYS[0]))
    gw.start()
    gw.write("0-copy.yaml", consumer("team", KEYS[1]))
    status = gw.wait_status(lambda s: "0-copy.yaml" in s["files"])
    copy = status["files"]["0-copy.yaml"]
    assert copy["state"] == "rejected" and copy["kind"] == "consumer"
    assert "username `team` is already used by" in copy["error"][0]
    assert status["files"]["team.yaml"]["digest"] == digest(consumer("team", KEYS[0]))
    assert (chat_as(gw, KEYS[0]), chat_as(gw, KEYS[1])) == (OLD, None)


def test_check_prints_consumers_global_plugins_and_warnings(tmp_path: Path) -> None:
    (tmp_path / "team.yaml").write_text(consumer("team", KEYS[0]))
    (tmp_path / "many.yaml").write_text(
        "consumers:\n"
        + "".join(
            f"  - username: user{i}\n    keyauth_credentials: [{{key: k{i}}}]\n" for i in (1, 2)
        )
    )
    (tmp_path / "global.yaml").write_text(
        "plugins:\n  - name: ai-rate-limiting-advanced\n    config:\n"
        "      llm_providers: [{name: azure, limit: [1000], window_size: [60]}]\n"
    )
    (tmp_path / "alpha.yaml").write_text(
        _chat("alpha").replace(
            "plugins:\n", "plugins:\n  - name: acl\n    config: {allow: [chat]}\n"
        )
    )
    (tmp_path / "bravo.yaml").write_text(guarded("bravo"))
    result = run_check(tmp_path, {**os.environ, **GATEWAY_ENV})
    assert result.returncode == 0, result.stderr
    out, err = result.stdout, result.stderr
    assert "  consumers: 3\n" in out
    assert "many.yaml: 2 consumer(s)" in out and "team.yaml: 1 consumer(s)" in out
    assert "global plugins: ai-rate-limiting-advanced (global.yaml)" in out
    assert "acl > body_checks > token_limit > credentials" in out
    assert "key_auth > body_checks > token_limit > credentials" in out
    assert "strategy: local, counted per worker process" in err
    assert "route alpha" in err and "every request is refused 401" in err
    assert "identifier: consumer without key-auth" in err and "counted per client IP" in err
    # bravo has key-auth: nothing to warn about it but the global limit (said once).
    assert "route bravo" not in err and err.count("per worker process") == 1
    # Without consumers, key-auth refuses everyone.
    for name in ("team.yaml", "many.yaml"):
        (tmp_path / name).unlink()
    result = run_check(tmp_path, {**os.environ, **GATEWAY_ENV})
    assert "  consumers: 0\n" in result.stdout
    assert "route bravo" in result.stderr and "no consumer file" in result.stderr
