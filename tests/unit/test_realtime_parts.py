"""The realtime relay's parts on their own: usage summing, the upstream handshake, pumps'
close codes and the opening-handshake check."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from aigw.chain.body_budget import BodyBudget
from aigw.chain.exchange import Exchange
from aigw.errors import BadRequest
from aigw.realtime.handshake import client_protocols, upstream_headers, upstream_url
from aigw.realtime.pump import sendable
from aigw.realtime.upgrade import is_websocket_handshake
from aigw.realtime.usage import SessionUsage
from aigw.upstream.connection import Origin
from aigw.upstream.pool import UpstreamPool
from aigw.upstream.target import UpstreamTarget

_NO_POOL: UpstreamPool = None  # type: ignore[assignment]


def _done(usage: Any = None, kind: str = "response.done") -> bytes:
    response: dict[str, Any] = {"id": "resp_1", "status": "completed"}
    if usage is not None:
        response["usage"] = usage
    return json.dumps({"type": kind, "event_id": "ev", "response": response}).encode()


def test_usage_is_summed_over_response_done_events_only() -> None:
    usage = SessionUsage()
    assert usage.usage is None  # no response yet: nothing to log or charge
    usage.observe(_done({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}))
    usage.observe(json.dumps({"type": "response.output_text.delta", "delta": "hi"}).encode())
    # The marker as a value inside another event counts nothing.
    usage.observe(json.dumps({"type": "conversation.item.created", "x": "response.done"}).encode())
    usage.observe(b'not json "response.done"')
    usage.observe(_done({"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}))
    assert usage.responses == 2
    assert usage.usage == {"prompt_tokens": 13, "completion_tokens": 9, "total_tokens": 22}


def test_a_response_without_usage_counts_as_a_response_with_no_tokens() -> None:
    usage = SessionUsage()
    usage.observe(_done())  # a cancelled response may carry no usage
    usage.observe(_done({"input_tokens": 2, "output_tokens": True, "total_tokens": "x"}))
    assert usage.responses == 2
    # Nonsense counts are not counted; a missing total is their sum, a broken one 0.
    assert usage.usage == {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 0}
    usage.observe(_done({"input_tokens": 1, "output_tokens": 1}))
    assert usage.usage == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 2}


def _target(scheme: str = "https", host: str = "res.openai.azure.com", **kw: Any) -> UpstreamTarget:
    fields: dict[str, Any] = {
        "origin": Origin(scheme=scheme, host=host, port=443 if scheme == "https" else 80),
        "fixed_path": None,
        "default_api_version": "2024-10-21",
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
        "write_timeout": 1.0,
        "deployment": "gpt realtime",
        "label": "azure/x",
        **kw,
    }
    return UpstreamTarget(**fields)


def _exchange(path_qs: str, headers: dict[str, str] | None = None) -> Exchange:
    request = make_mocked_request("GET", path_qs, headers=CIMultiDict(headers or {}))
    return Exchange(
        request=request, path=request.path, pool=_NO_POOL, body_budget=BodyBudget(1 << 20)
    )


@pytest.mark.parametrize(
    ("path_qs", "target", "expected"),
    [
        (
            "/openai/realtime?api-version=2025-08-28&deployment=mine",
            _target(),
            "wss://res.openai.azure.com:443/openai/realtime?api-version=2025-08-28"
            "&deployment=gpt%20realtime",
        ),
        # No api-version from the client nor the target: the first that knows realtime.
        (
            "/openai/realtime?deployment=mine",
            _target(scheme="http", host="127.0.0.1"),
            "ws://127.0.0.1:80/openai/realtime?api-version=2025-04-01-preview"
            "&deployment=gpt%20realtime",
        ),
        # The target's own api-version stands (compile_target sets both fields from it).
        (
            "/openai/realtime?deployment=mine",
            _target(default_api_version="2025-06-01", api_version="2025-06-01"),
            "wss://res.openai.azure.com:443/openai/realtime?api-version=2025-06-01"
            "&deployment=gpt%20realtime",
        ),
        (
            "/openai/v1/realtime?model=mine",
            _target(host="::1"),
            "wss://[::1]:443/openai/v1/realtime?model=gpt%20realtime",
        ),
        (
            "/openai/v1/realtime?model=mine&api-version=preview",
            _target(),
            "wss://res.openai.azure.com:443/openai/v1/realtime?model=gpt%20realtime"
            "&api-version=preview",
        ),
    ],
)
def test_upstream_url_keeps_the_style_and_names_the_targets_deployment(
    path_qs: str, target: UpstreamTarget, expected: str
) -> None:
    assert upstream_url(_exchange(path_qs), target) == expected


def test_upstream_url_adds_a_query_credential_and_refuses_a_bad_api_version() -> None:
    ex = _exchange("/openai/realtime?deployment=x")
    ex.extra_query = (("api-key", "k&1"),)
    assert upstream_url(ex, _target()).endswith("&api-key=k%261")
    with pytest.raises(BadRequest) as refused:
        upstream_url(_exchange("/openai/realtime?api-version=2024%0D%0A"), _target())
    assert refused.value.code == "invalid_api_version"


def test_upstream_headers_are_the_allowlist_and_the_routes_credential() -> None:
    ex = _exchange(
        "/openai/realtime",
        {
            "api-key": "client",
            "Authorization": "Bearer client",
            "OpenAI-Beta": "realtime=v1",
            "Cookie": "c=1",
            "x-ms-client-request-id": "id",
        },
    )
    ex.extra_headers = (("api-key", "route"),)
    assert upstream_headers(ex) == [
        ("OpenAI-Beta", "realtime=v1"),
        ("x-ms-client-request-id", "id"),
        ("api-key", "route"),
    ]


def test_client_protocols_drop_a_key_in_disguise() -> None:
    request = make_mocked_request(
        "GET",
        "/",
        headers=CIMultiDict(
            {"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.sk-1 ,openai-beta.x"}
        ),
    )
    assert client_protocols(request) == ["realtime", "openai-beta.x"]


@pytest.mark.parametrize(
    ("code", "sent"), [(1000, 1000), (4001, 4001), (1005, 1000), (1006, 1000), (999, 1000)]
)
def test_only_sendable_close_codes_are_passed_on(code: int, sent: int) -> None:
    assert sendable(code) == sent


KEY = base64.b64encode(b"0123456789abcdef").decode()
HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "keep-alive, Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": KEY,
}


@pytest.mark.parametrize(
    ("method", "changes", "valid"),
    [
        ("GET", {}, True),
        ("POST", {}, False),
        ("GET", {"Upgrade": "h2c"}, False),
        ("GET", {"Connection": "keep-alive"}, False),
        ("GET", {"Sec-WebSocket-Version": "12"}, False),
        ("GET", {"Sec-WebSocket-Key": "short"}, False),
        ("GET", {"Sec-WebSocket-Key": base64.b64encode(b"x" * 17).decode()}, False),
    ],
)
def test_the_opening_handshake_is_checked_before_dialling(
    method: str, changes: dict[str, str], valid: bool
) -> None:
    request = make_mocked_request(method, "/", headers=CIMultiDict({**HANDSHAKE, **changes}))
    assert is_websocket_handshake(request) is valid
