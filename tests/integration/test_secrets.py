"""Client credentials never reach Azure; no credential ever reaches a log."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import openai

from tests.integration.harness import GatewayProcess, MockProcess, wait_until
from tests.integration.test_errors import raw_post
from tests.integration.test_sdk import QUESTION, sync_client

CANARY = "client-canary-7f3a9b"


def test_client_credentials_are_replaced_by_the_route_key(
    gateway: GatewayProcess, mock: MockProcess
) -> None:
    client = sync_client(gateway)
    # openai < 2.34 sends the key as both api-key and Authorization: cover both.
    client.chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,
        extra_headers={"api-key": CANARY, "Authorization": f"Bearer {CANARY}"},
    )
    (upstream,) = mock.requests()
    assert upstream["headers"]["api-key"] == MockProcess.api_key
    assert "authorization" not in upstream["headers"]
    assert CANARY not in json.dumps(upstream)


def test_hop_by_hop_and_unknown_headers_are_not_forwarded(
    gateway: GatewayProcess, mock: MockProcess
) -> None:
    sync_client(gateway).chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,
        extra_headers={
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "1",
            "Proxy-Authorization": "Basic abc",
            "Cookie": "session=1",
            "X-Forwarded-Host": "evil.example",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    headers = mock.requests()[0]["headers"]
    for name in ("x-hop", "proxy-authorization", "cookie", "x-forwarded-host"):
        assert name not in headers
    assert headers["traceparent"].startswith("00-0af7")
    assert headers["x-stainless-lang"] == "python"


def test_query_param_auth(gateway: GatewayProcess, mock: MockProcess) -> None:
    client = sync_client(gateway, max_retries=0)
    # Azure itself only takes the key as a header; what matters is what was sent.
    with contextlib.suppress(openai.APIStatusError):
        client.chat.completions.create(model="queryauth", messages=QUESTION)
    (upstream,) = mock.requests()
    assert upstream["query"]["subscription-key"] == MockProcess.api_key
    assert upstream["query"]["api-version"] == "2025-01-01-preview"
    assert "api-key" not in upstream["headers"]


def test_allow_override_keeps_the_client_key(gateway: GatewayProcess, mock: MockProcess) -> None:
    client = sync_client(gateway, max_retries=0)
    # The mock rejects the canary key; what matters is what was sent.
    with contextlib.suppress(openai.AuthenticationError):
        client.chat.completions.create(
            model="override", messages=QUESTION, extra_headers={"api-key": CANARY}
        )
    assert mock.requests()[0]["headers"]["api-key"] == CANARY


def test_no_secret_in_any_log_line(gateway: GatewayProcess, mock: MockProcess) -> None:
    client = sync_client(gateway, max_retries=0)
    client.chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,
        extra_headers={"api-key": CANARY, "Authorization": f"Bearer {CANARY}"},
    )
    list(client.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True))
    with contextlib.suppress(openai.InternalServerError):
        client.chat.completions.create(model="unreachable", messages=QUESTION)
    log = gateway.raw_log()
    assert MockProcess.api_key not in log
    assert CANARY not in log


def test_payloads_are_logged_only_where_configured(
    gateway: GatewayProcess, request_id: str
) -> None:
    client = sync_client(gateway)
    client.chat.completions.create(
        model="payloads", messages=QUESTION, extra_headers={"x-request-id": request_id}
    )
    line = gateway.access_log(request_id)
    assert "What model are you?" in line["request_body"]
    assert "gpt-4o-2024-11-20" in line["response_body"]
    other = request_id + "-plain"
    client.chat.completions.create(
        model="gpt-4o", messages=QUESTION, extra_headers={"x-request-id": other}
    )
    plain = gateway.access_log(other)
    assert "request_body" not in plain and "response_body" not in plain
    assert "What model are you?" not in json.dumps(plain)


def test_hop_by_hop_and_cookie_response_headers_are_not_relayed(
    gateway: GatewayProcess, mock: MockProcess
) -> None:
    mock.fault(
        "delay",
        latency_ms=0,
        headers={
            "Connection": "keep-alive, X-Upstream-Hop",
            "X-Upstream-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Set-Cookie": "ARRAffinity=abc",
            "Proxy-Authenticate": "Basic",
        },
    )
    raw = sync_client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=QUESTION
    )
    for name in ("x-upstream-hop", "keep-alive", "set-cookie", "proxy-authenticate"):
        assert name not in raw.headers
    assert raw.headers["apim-request-id"]


def test_a_key_the_client_puts_in_the_path_or_request_id_is_redacted_from_the_log(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    """Log lines carry client-chosen text; a configured key in it must come out redacted.

    The route key (``MockProcess.api_key``) is sent where aigw does log what the client
    wrote: the path of a request that matches no route, and the request id.
    """
    key = MockProcess.api_key
    status, _, body = raw_post(
        gateway,
        f"/openai/deployments/{key}/chat/completions",
        json.dumps({"messages": QUESTION}).encode(),
        headers={"x-request-id": f"{request_id}-404-{key}"},
    )
    assert status == 404, body
    sync_client(gateway).chat.completions.create(
        model="gpt-4o", messages=QUESTION, extra_headers={"x-request-id": f"{request_id}-200-{key}"}
    )

    def lines() -> list[dict[str, Any]] | None:
        mine = [e for e in gateway.events() if str(e.get("request_id")).startswith(request_id)]
        return mine if len(mine) == 2 else None

    not_found, ok = wait_until(lines)
    assert not_found["request_id"] == f"{request_id}-404-[REDACTED]"
    assert not_found["path"] == "/openai/deployments/[REDACTED]/chat/completions"
    assert (ok["request_id"], ok["status"]) == (f"{request_id}-200-[REDACTED]", 200)
    assert key not in gateway.raw_log()
