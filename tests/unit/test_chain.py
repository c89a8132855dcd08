"""Each chain stage on its own, with a recording terminal instead of the relay."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from aigw.chain.access_log import access_log
from aigw.chain.body import body_checks
from aigw.chain.credentials import credentials
from aigw.chain.errors import error_responses
from aigw.chain.exchange import Exchange, Handler
from aigw.chain.info import RouteInfo
from aigw.chain.request_id import request_id
from aigw.config.model import (
    AiProxyAdvancedConfig,
    AuthConfig,
    LoggingConfig,
    ModelConfig,
    ModelOptions,
    TargetConfig,
)
from aigw.errors import BadRequest, PayloadTooLarge
from aigw.metrics import Metrics
from aigw.upstream.pool import UpstreamPool

INFO = RouteInfo(
    name="r",
    source="r.yaml",
    provider="azure",
    model="gpt-4o",
    deployment="gpt-4o",
    route_type="llm/v1/chat",
)


METRICS = Metrics(CollectorRegistry())
ROUTE_METRICS = METRICS.for_route("r", "gpt-4o")


class _Payload:
    """Just enough of aiohttp's StreamReader for the body stage."""

    def __init__(self, body: bytes) -> None:
        self._chunks = [body[i : i + 4] for i in range(0, len(body), 4)]

    async def readany(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


def exchange(
    body: bytes = b"", headers: dict[str, str] | None = None, path: str = "/p"
) -> Exchange:
    hdrs = CIMultiDict(headers or {})
    if body:
        hdrs["Content-Length"] = str(len(body))
    payload: Any = _Payload(body)
    request = make_mocked_request("POST", path, headers=hdrs, payload=payload)
    return Exchange(request=request, path="/p", pool=_NO_POOL)


_NO_POOL: UpstreamPool = None  # type: ignore[assignment]


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Exchange] = []

    async def __call__(self, ex: Exchange) -> web.StreamResponse:
        self.seen.append(ex)
        return web.Response(status=200)


def target(route_type: str = "llm/v1/chat", **options: Any) -> TargetConfig:
    return TargetConfig(
        route_type=route_type,  # type: ignore[arg-type]
        auth=AuthConfig(header_name="api-key", header_value="route-secret"),
        model=ModelConfig(provider="azure", name="gpt-4o", options=ModelOptions(**options)),
        logging=LoggingConfig(),
    )


def proxy(t: TargetConfig, **kw: Any) -> AiProxyAdvancedConfig:
    return AiProxyAdvancedConfig(targets=(t,), **kw)


def body_stage(next_: Handler, t: TargetConfig | None = None, **kw: Any) -> Handler:
    t = t or target()
    return body_checks(proxy(t, **kw), t, next_)


CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


# request_id ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [("abc-123", True), ("x" * 129, False), ("bad\nid", False), ('{"a":1}', False)],
)
async def test_request_id_accepts_only_sane_ids(incoming: str, kept: bool) -> None:
    recorder = Recorder()
    ex = exchange(headers={"x-request-id": incoming})
    await request_id(recorder)(ex)
    assert (ex.request_id == incoming) is kept
    assert ex.request_id and len(ex.request_id) <= 128


# body_checks -----------------------------------------------------------------


async def test_body_passes_through_unchanged_when_nothing_to_add() -> None:
    recorder = Recorder()
    await body_stage(recorder)(ex := exchange(CHAT))
    assert ex.upstream_body is ex.client_body == CHAT
    assert not ex.stream


async def test_body_stream_gets_include_usage_and_hides_the_chunk() -> None:
    body = json.dumps({"messages": [{"role": "user"}], "stream": True}).encode()
    await body_stage(Recorder())(ex := exchange(body))
    assert ex.stream and ex.hide_usage_chunk
    assert json.loads(ex.upstream_body)["stream_options"] == {"include_usage": True}


async def test_body_stream_with_usage_asked_is_left_alone() -> None:
    body = json.dumps(
        {"messages": [1], "stream": True, "stream_options": {"include_usage": True}}
    ).encode()
    await body_stage(Recorder())(ex := exchange(body))
    assert ex.stream and not ex.hide_usage_chunk
    assert ex.upstream_body == body


async def test_body_defaults_fill_but_never_override() -> None:
    stage = body_stage(Recorder(), target(max_tokens=5, temperature=0.1))
    await stage(ex := exchange(json.dumps({"messages": [1], "temperature": 1.0}).encode()))
    sent = json.loads(ex.upstream_body)
    assert sent["max_tokens"] == 5 and sent["temperature"] == 1.0
    await stage(ex := exchange(json.dumps({"messages": [1], "max_completion_tokens": 9}).encode()))
    assert "max_tokens" not in json.loads(ex.upstream_body)


@pytest.mark.parametrize(
    ("route_type", "body", "code"),
    [
        ("llm/v1/chat", b"{", "invalid_json"),
        ("llm/v1/chat", b"{}", "invalid_request_body"),
        ("llm/v1/completions", b'{"prompt": ""}', "invalid_request_body"),
        ("llm/v1/embeddings", b'{"input": 3}', "invalid_request_body"),
        ("llm/v1/chat", b'{"messages": [1], "model": "other"}', "model_mismatch"),
    ],
)
async def test_body_rejections(route_type: str, body: bytes, code: str) -> None:
    recorder = Recorder()
    with pytest.raises(BadRequest) as info:
        await body_stage(recorder, target(route_type))(exchange(body))
    assert info.value.code == code
    assert recorder.seen == []


async def test_body_size_limit_counts_streamed_bytes() -> None:
    stage = body_stage(Recorder(), max_request_body_size=10)
    with pytest.raises(PayloadTooLarge):
        await stage(exchange(CHAT))


async def test_streaming_modes() -> None:
    stream_body = json.dumps({"messages": [1], "stream": True}).encode()
    with pytest.raises(BadRequest, match="disabled"):
        await body_stage(Recorder(), response_streaming="deny")(exchange(stream_body))
    await body_stage(Recorder(), response_streaming="always")(ex := exchange(CHAT))
    assert ex.stream and json.loads(ex.upstream_body)["stream"] is True


async def test_preserve_forwards_body_untouched() -> None:
    body = b'{"anything": true, "stream": true}'
    await body_stage(Recorder(), target("preserve"))(ex := exchange(body))
    assert ex.upstream_body == body and ex.stream


# credentials -----------------------------------------------------------------


async def test_credentials_header_injected_and_client_key_ignored() -> None:
    stage = credentials(AuthConfig(header_name="api-key", header_value="route-secret"), Recorder())
    await stage(ex := exchange(headers={"api-key": "client"}))
    assert ex.extra_headers == (("api-key", "route-secret"),)


async def test_credentials_allow_override_keeps_client_value() -> None:
    auth = AuthConfig(header_name="api-key", header_value="route-secret", allow_override=True)
    await credentials(auth, Recorder())(ex := exchange(headers={"api-key": "client"}))
    assert ex.extra_headers == (("api-key", "client"),)
    await credentials(auth, Recorder())(ex := exchange())
    assert ex.extra_headers == (("api-key", "route-secret"),)


async def test_credentials_query_and_body_params() -> None:
    query = AuthConfig(param_name="key", param_value="s3cret", param_location="query")
    await credentials(query, Recorder())(ex := exchange())
    assert ex.extra_query == (("key", "s3cret"),)
    body = AuthConfig(param_name="key", param_value="s3cret", param_location="body")
    ex = exchange(CHAT)
    ex.payload = json.loads(CHAT)
    await credentials(body, Recorder())(ex)
    assert json.loads(ex.upstream_body)["key"] == "s3cret"


# error_responses and access_log ----------------------------------------------


async def test_errors_become_openai_json() -> None:
    async def fail(ex: Exchange) -> web.StreamResponse:
        raise BadRequest("invalid_json", "nope", param="body")

    ex = exchange()
    ex.request_id = "rid"
    response = await error_responses(INFO, fail)(ex)
    assert isinstance(response, web.Response) and response.body is not None
    assert response.status == 400
    assert response.headers["x-request-id"] == "rid"
    assert json.loads(response.body) == {  # type: ignore[arg-type]
        "error": {
            "code": "invalid_json",
            "message": "nope",
            "param": "body",
            "type": "invalid_request_error",
        }
    }


async def test_unexpected_exception_is_a_500_without_details() -> None:
    async def crash(ex: Exchange) -> web.StreamResponse:
        raise RuntimeError("secret detail")

    with capture_logs() as logs:
        response = await error_responses(INFO, crash)(exchange())
    assert response.status == 500
    assert isinstance(response, web.Response)
    assert b"secret detail" not in (response.body or b"")  # type: ignore[operator]
    assert logs[0]["event"] == "unhandled_error"


async def test_access_log_one_line_per_request_with_fields() -> None:
    with capture_logs() as logs:
        await access_log(INFO, ROUTE_METRICS, Recorder())(exchange(CHAT))
    (line,) = logs
    assert line["event"] == "request"
    assert (line["route"], line["status"], line["model"]) == ("r", 200, "gpt-4o")
    assert line["latency_ms"] >= 0


async def test_access_log_records_client_disconnect() -> None:
    async def cancelled(ex: Exchange) -> web.StreamResponse:
        raise asyncio.CancelledError

    with capture_logs() as logs, pytest.raises(asyncio.CancelledError):
        await access_log(INFO, ROUTE_METRICS, cancelled)(exchange())
    assert (logs[0]["status"], logs[0]["outcome"]) == (499, "client_disconnect")


async def test_access_log_counts_requests_latency_and_tokens() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry).for_route("r", "gpt-4o")

    async def answered(ex: Exchange) -> web.StreamResponse:
        ex.usage = {"prompt_tokens": 7, "completion_tokens": 5}
        return web.Response(status=200)

    with capture_logs():
        await access_log(INFO, metrics, answered)(exchange(CHAT))
        await access_log(INFO, metrics, answered)(exchange(CHAT))
    labels = {"route": "r", "status": "200", "model": "gpt-4o"}
    assert registry.get_sample_value("aigw_requests_total", labels) == 2
    tokens = {"route": "r", "model": "gpt-4o", "kind": "completion"}
    assert registry.get_sample_value("aigw_tokens_total", tokens) == 10
    count = registry.get_sample_value("aigw_request_duration_seconds_count", {"route": "r"})
    assert count == 2
