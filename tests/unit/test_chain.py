"""Each chain stage on its own, with a recording terminal instead of the relay."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from aigw.chain.access_log import access_log
from aigw.chain.body import body_checks
from aigw.chain.body_budget import BodyBudget
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
from aigw.errors import (
    BadRequest,
    ExpectationFailed,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
)
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.logs import scrubber
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


class _Protocol:
    """Just enough of aiohttp's BaseProtocol for a real StreamReader."""

    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def body_stream(*chunks: bytes, eof: bool = True) -> StreamReader:
    """A request body stream as aiohttp's parser fills it: *chunks*, then the end (if *eof*)."""
    protocol: Any = _Protocol()
    stream = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        stream.feed_data(chunk)
    if eof:
        stream.feed_eof()
    return stream


def exchange(
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    path: str = "/p",
    *,
    payload: StreamReader | None = None,
    version: HttpVersion = HttpVersion11,
    budget: BodyBudget | None = None,
) -> Exchange:
    """An exchange whose request carries *body* (with its Content-Length) or *payload*."""
    hdrs = CIMultiDict(headers or {})
    if body:
        hdrs["Content-Length"] = str(len(body))
        payload = body_stream(body)
    request = make_mocked_request(
        "POST", path, headers=hdrs, payload=payload or EMPTY_PAYLOAD, version=version
    )
    return Exchange(
        request=request, path="/p", pool=_NO_POOL, body_budget=budget or BodyBudget(64 * MiB)
    )


_NO_POOL: UpstreamPool = None  # type: ignore[assignment]
MiB = 1024 * 1024


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


def body_stage(
    next_: Handler, t: TargetConfig | None = None, limits: Limits = DEFAULT_LIMITS, **kw: Any
) -> Handler:
    t = t or target()
    return body_checks(proxy(t, **kw), t, limits, next_)


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


async def test_body_size_limit_refuses_a_declared_length_unread() -> None:
    stage = body_stage(Recorder(), max_request_body_size=10)
    ex = exchange(CHAT)
    with pytest.raises(PayloadTooLarge):
        await stage(ex)
    assert ex.request.content.read_nowait(-1) == CHAT  # not a byte was read


@pytest.mark.parametrize("arrived", [True, False], ids=["buffered", "in-flight"])
async def test_body_size_limit_counts_streamed_bytes(arrived: bool) -> None:
    # Chunked: no Content-Length to refuse up front, so the bytes are counted.
    chunked = {"Transfer-Encoding": "chunked"}
    stream = body_stream(*(CHAT[i : i + 8] for i in range(0, len(CHAT), 8)), eof=arrived)
    stage = body_stage(Recorder(), max_request_body_size=len(CHAT) - 1)
    with pytest.raises(PayloadTooLarge):
        await stage(exchange(headers=chunked, payload=stream))
    exact = body_stage(recorder := Recorder(), max_request_body_size=len(CHAT))
    stream = body_stream(*(CHAT[i : i + 8] for i in range(0, len(CHAT), 8)), eof=arrived)
    if not arrived:
        asyncio.get_running_loop().call_later(0.01, stream.feed_eof)
    await exact(exchange(headers=chunked, payload=stream))
    assert recorder.seen[0].client_body == CHAT


FAST = Limits(client_body_timeout=0.1, client_body_total_timeout=0.5)
"""Body deadlines short enough for unit tests."""


def feed_later(stream: StreamReader, chunks: list[bytes], every: float, end: bool) -> None:
    """Feeds *chunks* to *stream* one every *every* seconds, then the end if *end*."""

    async def feed() -> None:
        for chunk in chunks:
            await asyncio.sleep(every)
            stream.feed_data(chunk)
        if end:
            stream.feed_eof()

    _FEEDERS.add(task := asyncio.ensure_future(feed()))
    task.add_done_callback(_FEEDERS.discard)


_FEEDERS: set[asyncio.Future[None]] = set()


async def test_body_idle_deadline_answers_408_and_marks_the_outcome() -> None:
    headers = {"Content-Length": "100"}
    stage = body_stage(recorder := Recorder(), limits=FAST)
    ex = exchange(headers=headers, payload=body_stream(b'{"mess', eof=False))
    started = asyncio.get_running_loop().time()
    with pytest.raises(RequestTimeout) as info:
        await stage(ex)
    waited = asyncio.get_running_loop().time() - started
    assert 0.09 < waited < 0.4
    assert info.value.status == 408 and info.value.close_connection
    assert (
        info.value.message
        == "the request body stalled: no data for 0.1 s (6 of 100 bytes received)"
    )
    assert ex.outcome == "client_body_timeout" and recorder.seen == []


async def test_body_total_deadline_ends_a_trickle() -> None:
    stream = body_stream(eof=False)
    feed_later(stream, [b"x"] * 100, every=0.03, end=True)  # never idle 0.1 s, 3 s in all
    stage = body_stage(Recorder(), target("preserve"), limits=FAST)
    started = asyncio.get_running_loop().time()
    with pytest.raises(RequestTimeout, match=r"did not complete within 0\.5 s") as info:
        await stage(ex := exchange(headers={"Transfer-Encoding": "chunked"}, payload=stream))
    assert 0.45 < asyncio.get_running_loop().time() - started < 1.0
    assert "bytes received)" in info.value.message
    assert ex.outcome == "client_body_timeout"


async def test_body_in_time_uses_one_timer_and_none_when_already_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting_call_at(
        when: float, callback: Any, *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        if getattr(callback, "__qualname__", "").startswith("_BodyDeadline."):
            armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    await body_stage(Recorder(), limits=FAST)(exchange(CHAT))
    assert armed == []  # the whole body was already buffered

    # 40 reads 10 ms apart: never idle for 0.1 s, 0.4 s in all, so it passes;
    # the timer re-arms about once per idle period, not once per read.
    stream = body_stream(eof=False)
    chunks = [CHAT[i : i + 2] for i in range(0, len(CHAT), 2)][:40]
    rest = CHAT[2 * len(chunks) :]
    feed_later(stream, [*chunks, rest], every=0.01, end=True)
    await body_stage(recorder := Recorder(), limits=FAST)(
        exchange(headers={"Transfer-Encoding": "chunked"}, payload=stream)
    )
    assert recorder.seen[0].client_body == CHAT
    assert 1 <= len(armed) <= 8, armed


async def test_expect_other_than_100_continue_is_417() -> None:
    stage = body_stage(Recorder())
    with pytest.raises(ExpectationFailed) as info:
        await stage(exchange(CHAT, headers={"Expect": "something-else"}))
    assert (info.value.status, info.value.code, info.value.close_connection) == (
        417,
        "expectation_failed",
        True,
    )
    # HTTP/1.0 has no expectations: the header is ignored (RFC 9110 §10.1.1).
    await body_stage(Recorder())(
        exchange(CHAT, headers={"Expect": "something-else"}, version=HttpVersion10)
    )


async def test_declared_too_large_with_expect_closes_the_connection() -> None:
    stage = body_stage(Recorder(), max_request_body_size=10)
    with pytest.raises(PayloadTooLarge) as info:
        await stage(exchange(CHAT, headers={"Expect": "100-continue"}))
    assert info.value.close_connection
    with pytest.raises(PayloadTooLarge) as info:
        await stage(exchange(CHAT))
    assert not info.value.close_connection


@pytest.mark.parametrize("route_type", ["llm/v1/chat", "preserve"])
async def test_body_bytes_are_held_in_the_budget_until_the_request_ends(route_type: str) -> None:
    budget = BodyBudget(64 * MiB)
    held_while_forwarding: list[int] = []

    async def forward(ex: Exchange) -> web.StreamResponse:
        held_while_forwarding.append(budget.held)
        return web.Response()

    await body_stage(forward, target(route_type))(exchange(CHAT, budget=budget))
    assert held_while_forwarding == [len(CHAT)]
    assert budget.held == 0

    async def crash(ex: Exchange) -> web.StreamResponse:
        raise RuntimeError("relay failed")

    with pytest.raises(RuntimeError):
        await body_stage(crash, target(route_type))(exchange(CHAT, budget=budget))
    assert budget.held == 0
    if route_type != "preserve":
        with pytest.raises(BadRequest):
            await body_stage(forward, target(route_type))(exchange(b"{", budget=budget))
        assert budget.held == 0


async def test_a_stalled_body_is_evicted_for_one_that_arrived_whole() -> None:
    budget = BodyBudget(len(CHAT) + 10)
    stalled = exchange(
        headers={"Content-Length": str(len(CHAT))},
        payload=body_stream(CHAT[:20], eof=False),
        budget=budget,
    )
    # Deadlines long enough not to fire first, short enough to end a broken run.
    limits = Limits(client_body_timeout=2, client_body_total_timeout=3)
    waiting = asyncio.ensure_future(body_stage(Recorder(), limits=limits)(stalled))
    await asyncio.sleep(0.05)  # it has read its 20 bytes and stalls
    assert budget.held == 20
    await body_stage(recorder := Recorder())(exchange(CHAT, budget=budget))
    assert recorder.seen and budget.held == 0
    with pytest.raises(ServiceUnavailable) as info:
        await waiting
    assert (info.value.status, info.value.code) == (503, "server_busy")
    assert info.value.close_connection and info.value.headers == {"Retry-After": "1"}
    assert stalled.outcome == "body_buffer_full"
    assert budget.held == 0 and budget.evictions.value == 1


async def test_a_body_that_does_not_fit_is_refused_itself() -> None:
    budget = BodyBudget(len(CHAT) + 10)
    budget.reserve(len(CHAT) - 10)  # a request in progress, its body whole
    stream = body_stream(eof=False)
    feed_later(stream, [CHAT[:10], CHAT[10:30]], every=0.02, end=False)
    ex = exchange(headers={"Content-Length": str(len(CHAT))}, payload=stream, budget=budget)
    with pytest.raises(ServiceUnavailable, match="buffer for request bodies is full"):
        await body_stage(Recorder(), limits=FAST)(ex)
    assert ex.outcome == "body_buffer_full"
    assert budget.held == len(CHAT) - 10


async def test_a_body_larger_than_the_whole_budget_is_413() -> None:
    budget = BodyBudget(len(CHAT) - 1)
    with pytest.raises(PayloadTooLarge, match=r"can buffer for all requests together \(\d+ bytes"):
        await body_stage(Recorder())(exchange(CHAT, budget=budget))
    chunked = {"Transfer-Encoding": "chunked"}
    stream = body_stream(eof=False)
    feed_later(stream, [CHAT[:20], CHAT[20:]], every=0.01, end=True)
    with pytest.raises(PayloadTooLarge):
        await body_stage(Recorder())(exchange(headers=chunked, payload=stream, budget=budget))
    assert budget.held == 0 and budget.evictions.value == 0


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


async def test_access_log_user_agent_and_retry_count() -> None:
    headers = {"User-Agent": "AzureOpenAI/Python 1.99.0", "x-stainless-retry-count": "2"}
    with capture_logs() as logs:
        await access_log(INFO, ROUTE_METRICS, Recorder())(exchange(CHAT, headers))
    assert (logs[0]["user_agent"], logs[0]["retry_count"]) == ("AzureOpenAI/Python 1.99.0", 2)
    with capture_logs() as logs:
        await access_log(INFO, ROUTE_METRICS, Recorder())(exchange(CHAT))
    assert (logs[0]["user_agent"], logs[0]["retry_count"]) == (None, None)


@pytest.mark.parametrize("count", ["-1", "x", "1e3", "²", "9" * 40])
async def test_access_log_ignores_a_malformed_retry_count(count: str) -> None:
    with capture_logs() as logs:
        headers = {"x-stainless-retry-count": count}
        await access_log(INFO, ROUTE_METRICS, Recorder())(exchange(CHAT, headers))
    assert logs[0]["retry_count"] is None


async def test_access_log_user_agent_is_cut_and_a_secret_in_it_still_scrubbed() -> None:
    secret = "sk-route-secret-0123456789"
    scrubber.replace([secret])
    try:
        # The cut at 200 characters falls inside the secret: its first half
        # must not survive as plain text.
        agent = "a" * 190 + secret
        with capture_logs() as logs:
            await access_log(INFO, ROUTE_METRICS, Recorder())(exchange(CHAT, {"User-Agent": agent}))
        logged = logs[0]["user_agent"]
        assert len(logged) == 200 and secret[:10] not in logged
        assert logged.startswith("a" * 190 + "[REDACTED]"[:10])
        # A short one is scrubbed whole by the line renderer.
        line = scrubber(None, "info", {"user_agent": f"curl {secret}"})
        assert secret not in line and "[REDACTED]" in line
    finally:
        scrubber.replace([])


async def test_access_log_levels_by_status_and_fault() -> None:
    async def answer(status: int) -> Handler:
        async def handler(ex: Exchange) -> web.StreamResponse:
            return web.Response(status=status)

        return handler

    async def crash(ex: Exchange) -> web.StreamResponse:
        raise RuntimeError("bug")

    levels = []
    for status in (200, 404, 502):
        with capture_logs() as logs:
            await access_log(INFO, ROUTE_METRICS, await answer(status))(exchange(CHAT))
        levels.append(logs[0]["log_level"])
    with capture_logs() as logs:
        await access_log(INFO, ROUTE_METRICS, error_responses(INFO, crash))(exchange(CHAT))
    (line,) = (e for e in logs if e["event"] == "request")
    levels.append(line["log_level"])
    assert levels == ["info", "info", "warning", "error"]


async def test_access_log_counts_a_declared_body_never_read() -> None:
    async def refuse(ex: Exchange) -> web.StreamResponse:
        return web.Response(status=404)

    ex = exchange(headers={"Content-Length": "1234"})
    with capture_logs() as logs:
        await access_log(INFO, ROUTE_METRICS, refuse)(ex)
    assert logs[0]["bytes_in"] == 1234


@pytest.mark.parametrize(
    ("query", "configured", "asked"),
    [
        ("?api-version=2024-02-01", None, False),
        ("?api-version=2024-06-01", None, False),
        ("?api-version=2024-08-01-preview", None, False),
        ("?api-version=2024-09-01-preview", None, True),
        ("?api-version=2024-10-21", None, True),
        ("?api-version=2025-04-01-preview", None, True),
        ("?api-version=v1", None, True),
        ("", None, True),  # aigw's default, 2024-10-21
        ("", "2023-07-01-preview", False),  # the route's own default is too old
        ("?api-version=2024-10-21", "2023-07-01-preview", True),  # the client's wins
    ],
)
async def test_body_asks_for_usage_only_where_the_api_version_knows_stream_options(
    query: str, configured: str | None, asked: bool
) -> None:
    body = json.dumps({"messages": [{"role": "user"}], "stream": True}).encode()
    t = target(azure_api_version=configured)
    await body_stage(Recorder(), t)(ex := exchange(body, path=f"/p{query}"))
    assert ex.stream
    assert ("stream_options" in json.loads(ex.upstream_body)) is asked
    assert ex.hide_usage_chunk is asked
    assert ex.usage_unavailable == (None if asked else "api_version")
    if not asked:
        assert ex.upstream_body == body  # relayed as it came


def aliased_target(*aliases: str) -> TargetConfig:
    t = target()
    return dataclasses.replace(t, model=dataclasses.replace(t.model, model_alias=aliases))


def chat_for(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()


async def test_body_model_alias_is_accepted_and_forwarded_as_sent() -> None:
    t = aliased_target("gpt-4o-2024-11-20", "gpt-4o-mini-alias")
    body = chat_for("gpt-4o-2024-11-20")
    await body_stage(Recorder(), t)(ex := exchange(body))
    assert ex.requested_model == "gpt-4o-2024-11-20"
    assert ex.upstream_body == body
    with pytest.raises(BadRequest) as refused:
        await body_stage(Recorder(), t)(exchange(chat_for("gpt-4.1-mini")))
    assert refused.value.code == "model_mismatch"


async def test_ignore_body_model_accepts_any_name() -> None:
    await body_stage(Recorder(), ignore_body_model=True)(ex := exchange(chat_for("anything")))
    assert ex.requested_model == "anything"


async def test_model_mismatch_says_how_to_allow_the_name() -> None:
    with pytest.raises(BadRequest) as refused:
        await body_stage(Recorder())(exchange(chat_for("text-embedding-ada-002")))
    message = refused.value.message
    assert "'text-embedding-ada-002'" in message and "'gpt-4o'" in message
    assert "`model.model_alias`" in message and "`ignore_body_model: true`" in message
