"""Targets without keys: a real ``aigw serve`` gets Entra tokens from a local managed-identity
endpoint (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``) and the Azure mock accepts only those."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from aigw.testing.entra import TokenEndpoint, verify_token
from tests.integration.conftest import _closed_port, route_yaml
from tests.integration.harness import REPO, GatewayProcess, MockProcess, wait_until
from tests.integration.test_sdk import QUESTION, sync_client

SECRET = "entra-integration-signing-secret"
LIFETIME_S = 3.0
CHAT = "/openai/deployments/{}/chat/completions"


def _entra_route(name: str, client_id: str | None = None) -> str:
    client_line = f"\n            azure_client_id: {client_id}" if client_id else ""
    return route_yaml(
        name,
        CHAT.format(name),
        model=name,
        deployment="gpt-4o",
        auth=f"""
          auth:
            azure_use_managed_identity: true{client_line}""",
    )


class ThreadedEndpoint:
    """A :class:`TokenEndpoint` on its own event loop thread, so tests can script it directly."""

    def __init__(self, lifetime_s: float) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.endpoint = TokenEndpoint(SECRET, lifetime_s=lifetime_s)
        self._run(self.endpoint.start())

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def close(self) -> None:
        self._run(self.endpoint.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def tokens() -> Iterator[TokenEndpoint]:
    server = ThreadedEndpoint(LIFETIME_S)
    yield server.endpoint
    server.close()


@pytest.fixture(scope="module")
def entra_mock() -> Iterator[MockProcess]:
    process = MockProcess("--entra-secret", SECRET)
    yield process
    process.close()


@pytest.fixture(scope="module")
def entra_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("entra-conf")


@pytest.fixture(scope="module")
def entra_gateway(
    entra_conf: Path, tokens: TokenEndpoint, entra_mock: MockProcess
) -> Iterator[GatewayProcess]:
    conf = entra_conf
    (conf / "entra.yaml").write_text(_entra_route("entra"))
    (conf / "uami.yaml").write_text(
        _entra_route("uami", client_id="5f3c7a2e-1b4d-4c8e-9a6f-0d2b8e7c4a11")
    )
    env = {"AZURE_INSTANCE": "entraresource", **tokens.environ()}
    process = GatewayProcess(conf, "--azure-base-url", entra_mock.url, env=env)
    yield process
    process.close()


@pytest.fixture(autouse=True)
def _reset(entra_mock: MockProcess, tokens: TokenEndpoint) -> None:
    entra_mock.reset()
    tokens.mode = "ok"


def _bearer(record: dict[str, Any]) -> str:
    value: str = record["headers"].get("authorization", "")
    assert value.startswith("Bearer "), record["headers"].keys()
    return value[len("Bearer ") :]


def _ask(gateway: GatewayProcess, route: str) -> ChatCompletion:
    """One chat completion through *route* (its model name is the route's).

    No SDK retries: a 401 or 502 must reach the test as it reached the client.
    """
    client = sync_client(gateway, max_retries=0)
    return client.chat.completions.create(model=route, messages=QUESTION)


def test_entra_target_is_served_with_a_bearer_token(
    entra_gateway: GatewayProcess, entra_mock: MockProcess, tokens: TokenEndpoint
) -> None:
    for _ in range(3):
        assert _ask(entra_gateway, "entra").choices
    seen = entra_mock.requests()
    assert [r["status"] for r in seen] == [200, 200, 200]
    for record in seen:
        assert verify_token(_bearer(record), SECRET, record["started_at"])
        # The client's own credential goes nowhere: Entra replaces it.
        assert "api-key" not in record["headers"]
        assert "client-key-never-forwarded" not in json.dumps(record["headers"])
    # A user-assigned identity asks the endpoint for its own client id.
    _ask(entra_gateway, "uami")
    assert tokens.fetches_by_client["5f3c7a2e-1b4d-4c8e-9a6f-0d2b8e7c4a11"] >= 1
    # The token never reaches the gateway's logs.
    log = entra_gateway.raw_log()
    for record in entra_mock.requests():
        assert _bearer(record) not in log
    assert any(e.get("event") == "entra_token_fetched" for e in entra_gateway.events())


def test_token_refreshed_across_expiry_without_a_401(
    entra_gateway: GatewayProcess, entra_mock: MockProcess, tokens: TokenEndpoint
) -> None:
    deadline = time.monotonic() + 3 * LIFETIME_S
    while time.monotonic() < deadline:
        _ask(entra_gateway, "entra")
        time.sleep(0.05)
    seen = entra_mock.requests()
    # No expired token was ever sent: the mock refused none (a 401 retried by
    # the gateway would hide it from the client, not from here).
    assert {r["status"] for r in seen} == {200}
    used = {_bearer(r) for r in seen}
    assert len(used) >= 2, "the token was never refreshed"


def test_a_refused_token_is_replaced_and_the_request_retried_once(
    entra_gateway: GatewayProcess, entra_mock: MockProcess, tokens: TokenEndpoint
) -> None:
    # A cached token far from its refresh: with the module's 3 s tokens, a background
    # refresh could fall inside this test and count as a fetch of its own.
    tokens.lifetime_s = 60
    try:
        entra_mock.fail_next(1, 401)  # replaces the cached short-lived token
        _ask(entra_gateway, "entra")
        entra_mock.reset()
        fetches = tokens.fetches
        entra_mock.fail_next(1, 401)  # Azure refuses the token (revoked)
        assert _ask(entra_gateway, "entra").choices
        first, second = entra_mock.requests()
        assert (first["status"], second["status"]) == (401, 200)
        assert _bearer(first) != _bearer(second)
        assert tokens.fetches == fetches + 1
        # Only once: a second refusal reaches the client.
        entra_mock.reset()
        entra_mock.fail_next(2, 401)
        with pytest.raises(openai.AuthenticationError):
            _ask(entra_gateway, "entra")
        assert len(entra_mock.requests()) == 2
    finally:
        tokens.lifetime_s = LIFETIME_S


def test_token_kept_across_reloads_and_shared_by_routes(
    entra_gateway: GatewayProcess,
    entra_conf: Path,
    entra_mock: MockProcess,
    tokens: TokenEndpoint,
) -> None:
    tokens.lifetime_s = 60  # no natural refresh during this test
    try:
        entra_mock.fail_next(1, 401)  # replaces the cached short-lived token
        _ask(entra_gateway, "entra")
        fetches = tokens.fetches
        reloads = len([e for e in entra_gateway.events() if e.get("event") == "config_reload"])
        # Another file appears (a new route, same identity) and this one is rewritten unchanged.
        (entra_conf / "other.yaml").write_text(_entra_route("other"))
        (entra_conf / "entra.yaml").write_text(_entra_route("entra") + "# rewritten\n")
        wait_until(
            lambda: (
                len([e for e in entra_gateway.events() if e.get("event") == "config_reload"])
                > reloads
            )
        )
        wait_until(lambda: _served(entra_gateway, "other"))
        _ask(entra_gateway, "entra")
        assert tokens.fetches == fetches
        assert len({_bearer(r) for r in entra_mock.requests() if r["status"] == 200}) == 1
    finally:
        tokens.lifetime_s = LIFETIME_S
        (entra_conf / "other.yaml").unlink()


def _served(gateway: GatewayProcess, route: str) -> bool:
    try:
        _ask(gateway, route)
    except openai.NotFoundError:
        return False
    return True


def test_token_endpoint_down_is_a_prompt_502_naming_it(
    tmp_path: Path, entra_mock: MockProcess
) -> None:
    (tmp_path / "entra.yaml").write_text(_entra_route("entra"))
    down = f"http://127.0.0.1:{_closed_port()}/msi/token"
    env = {
        "AZURE_INSTANCE": "entraresource",
        "IDENTITY_ENDPOINT": down,
        "IDENTITY_HEADER": "h",
        "PYTHONWARNINGS": "always::ResourceWarning",
    }
    gateway = GatewayProcess(tmp_path, "--azure-base-url", entra_mock.url, env=env)
    try:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            _ask(gateway, "entra")
        assert time.monotonic() - started < 5.0
        assert caught.value.status_code == 502
        assert down in caught.value.message
        assert entra_mock.requests() == []
        failed = wait_until(
            lambda: [e for e in gateway.events() if e.get("event") == "entra_token_failed"]
        )
        assert failed[0]["reason"] == "connect_error"
        # azure-identity's aiohttp session is closed at shutdown.
        gateway.proc.terminate()
        assert gateway.proc.wait(15) == 0
        assert "Unclosed" not in gateway.raw_log()
    finally:
        gateway.close()


def test_standalone_endpoint_cli() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aigw.testing.entra",
            "--port",
            "0",
            "--secret",
            SECRET,
            "--lifetime",
            "60",
        ],
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        url = ready["IDENTITY_ENDPOINT"] + "?api-version=2019-08-01"
        request = urllib.request.Request(
            url + "&resource=https://cognitiveservices.azure.com",
            headers={"X-IDENTITY-HEADER": ready["IDENTITY_HEADER"]},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
        assert body["token_type"] == "Bearer"
        assert 55 <= int(body["expires_on"]) - time.time() <= 60
        assert verify_token(body["access_token"], SECRET, time.time())
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
