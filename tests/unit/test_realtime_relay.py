"""The realtime relay in process: a route chain on aigw's own listener, a scripted upstream.

The chain is the one route.py builds for a realtime route (request_id,
access_log, error_responses, credentials, the relay), served by
``start_listener`` so the socket layer's guards (head deadline, send deadline,
reclaiming idle connections) act on upgraded connections as in production.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from aigw.chain.access_log import access_log
from aigw.chain.body_budget import BodyBudget
from aigw.chain.credentials import credentials
from aigw.chain.errors import error_responses
from aigw.chain.exchange import Exchange
from aigw.chain.info import RouteInfo
from aigw.chain.request_id import request_id
from aigw.config.model import AuthConfig
from aigw.errors import UpstreamUnavailable
from aigw.limits import Limits
from aigw.listener import Listener, ListenerSettings, start_listener
from aigw.metrics import Metrics
from aigw.realtime import relay as relay_module
from aigw.realtime.relay import make_realtime_relay
from aigw.route import compile_chain
from aigw.upstream.connection import Origin
from aigw.upstream.pool import UpstreamPool
from aigw.upstream.relay import CONNECT_PHASE_OUTCOMES, RetryableAnswer
from aigw.upstream.target import UpstreamTarget
from tests.integration.realtime_peer import USAGE, RealtimePeer

ROUTE_KEY = "route-secret-key"
CLIENT_KEY = "client-secret-key"
DEPLOYMENT = "gpt-realtime"
CLASSIC = f"/openai/realtime?api-version=2025-04-01-preview&deployment={DEPLOYMENT}"
MAX_FRAME = 64 * 1024

METRICS = Metrics(CollectorRegistry())
INFO = RouteInfo(
    name="rt",
    source="rt.yaml",
    provider="azure",
    model=DEPLOYMENT,
    deployment=DEPLOYMENT,
    route_type="realtime/v1/realtime",
)


@dataclass
class Gateway:
    listener: Listener
    url: str
    logs: list[MutableMapping[str, Any]]

    def lines(self) -> list[dict[str, Any]]:
        return [dict(line) for line in self.logs if line.get("event") == "request"]

    async def line(self) -> dict[str, Any]:
        """The (one) access-log line, once written."""
        deadline = time.monotonic() + 5
        while not self.lines():
            if time.monotonic() > deadline:
                raise AssertionError("no access-log line")
            await asyncio.sleep(0.01)
        [line] = self.lines()
        return line


@pytest.fixture
def peer() -> Iterator[RealtimePeer]:
    upstream = RealtimePeer()
    yield upstream
    upstream.close()


def _target(port: int, read_timeout: float = 30.0, connect_timeout: float = 2.0) -> UpstreamTarget:
    return UpstreamTarget(
        origin=Origin(scheme="http", host="127.0.0.1", port=port),
        fixed_path=None,
        default_api_version="2024-10-21",
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        write_timeout=5.0,
        deployment=DEPLOYMENT,
        label=f"azure/{DEPLOYMENT}",
    )


@contextlib.asynccontextmanager
async def gateway(
    port: int,
    *,
    read_timeout: float = 30.0,
    connect_timeout: float = 2.0,
    settings: ListenerSettings | None = None,
) -> AsyncIterator[Gateway]:
    pool = UpstreamPool()
    budget = BodyBudget(64 * 1024 * 1024)
    chain = compile_chain(
        [
            ("request_id", request_id),
            ("access_log", partial(access_log, INFO, METRICS.for_route("rt", DEPLOYMENT))),
            ("error_responses", partial(error_responses, INFO)),
            (
                "credentials",
                partial(credentials, AuthConfig(header_name="api-key", header_value=ROUTE_KEY)),
            ),
        ],
        make_realtime_relay(
            _target(port, read_timeout, connect_timeout), limits=Limits(max_event_size=MAX_FRAME)
        ),
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        ex = Exchange(request=request, path=request.path, pool=pool, body_budget=budget)
        return await chain(ex)

    with capture_logs() as logs:
        listener = await start_listener(
            handle, settings or ListenerSettings(port=0), metrics=METRICS
        )
        try:
            yield Gateway(listener, f"http://127.0.0.1:{listener.port}", logs)
        finally:
            await listener.stop()
            await pool.close()


def _connect(session: aiohttp.ClientSession, gw: Gateway, path: str = CLASSIC, **kw: Any) -> Any:
    return session.ws_connect(gw.url + path, headers={"api-key": CLIENT_KEY}, **kw)


async def _until(predicate: Any) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _respond(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Sends a text turn and reads events up to its ``response.done``."""
    await ws.send_json(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text"}]},
        }
    )
    await ws.send_json({"type": "response.create"})
    events = []
    while True:
        event = json.loads(await ws.receive_str(timeout=5))
        events.append(event)
        if event["type"] == "response.done":
            return events


async def test_a_session_relays_both_ways_and_logs_frames_tokens_and_close(
    peer: RealtimePeer,
) -> None:
    async with gateway(peer.port) as gw, aiohttp.ClientSession() as session:
        async with _connect(session, gw, protocols=("realtime",)) as ws:
            assert ws.protocol == "realtime"  # the upstream's choice, echoed
            request_id = ws._response.headers["x-request-id"]
            created = json.loads(await ws.receive_str(timeout=5))
            assert created["type"] == "session.created"
            first = await _respond(ws)
            second = await _respond(ws)
            await ws.send_bytes(b"\x00\x01binary")
            assert await ws.receive_bytes(timeout=5) == b"\x00\x01binary"
            await ws.close(code=1000)
        assert ws.close_code == 1000
        line = await gw.line()
    deltas = [e["delta"] for e in first if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "Hello from the realtime peer"
    assert second[-1]["response"]["usage"] == USAGE
    [upstream] = peer.wait_ended()
    assert upstream.close_code == 1000  # the client's code, passed through
    assert upstream.path == "/openai/realtime"
    assert upstream.query == {"api-version": "2025-04-01-preview", "deployment": DEPLOYMENT}
    assert upstream.headers["api-key"] == ROUTE_KEY
    assert CLIENT_KEY not in json.dumps(upstream.headers)
    assert line["status"] == 101
    assert line["request_id"] == request_id
    assert line["upstream_status"] == 101
    assert line["outcome"] == "ok"
    assert line["frames_in"] == 5  # two turns of two events, one binary frame
    # session.created, two turns (item created, response: created, 5 text deltas, an
    # audio delta, done), the echo
    assert line["frames_out"] == 1 + 2 * 9 + 1
    assert line["responses"] == 2
    assert line["prompt_tokens"] == 2 * USAGE["input_tokens"]
    assert line["completion_tokens"] == 2 * USAGE["output_tokens"]
    assert line["total_tokens"] == 2 * USAGE["total_tokens"]
    assert line["close_code"] == 1000
    assert line["closed_by"] == "client"
    assert line["latency_ms"] > 0
    assert line["bytes_out"] > 0 and line["bytes_in"] > 0
    assert CLIENT_KEY not in json.dumps(line) and ROUTE_KEY not in json.dumps(line)


async def test_the_v1_path_dials_v1_with_the_targets_deployment(peer: RealtimePeer) -> None:
    async with (
        gateway(peer.port) as gw,
        aiohttp.ClientSession() as session,
        _connect(session, gw, "/openai/v1/realtime?model=whatever") as ws,
    ):
        await ws.receive_str(timeout=5)
    [upstream] = peer.wait_ended()
    assert upstream.path == "/openai/v1/realtime"
    assert upstream.query == {"model": DEPLOYMENT}


async def test_classic_path_without_api_version_gets_one_that_knows_realtime(
    peer: RealtimePeer,
) -> None:
    async with (
        gateway(peer.port) as gw,
        aiohttp.ClientSession() as session,
        _connect(session, gw, f"/openai/realtime?deployment={DEPLOYMENT}") as ws,
    ):
        await ws.receive_str(timeout=5)
    [upstream] = peer.wait_ended()
    assert upstream.query["api-version"] == "2025-04-01-preview"


async def test_close_codes_pass_through_both_ways(peer: RealtimePeer) -> None:
    async with gateway(peer.port) as gw, aiohttp.ClientSession() as session:
        async with _connect(session, gw) as ws:
            await ws.receive_str(timeout=5)
            await ws.close(code=4000, message=b"client done")
        async with _connect(session, gw) as ws:
            await ws.receive_str(timeout=5)
            await ws.send_json({"type": "test.close", "code": 4001})
            message = await ws.receive(timeout=5)
            assert message.type is WSMsgType.CLOSE
            assert message.data == 4001
            assert message.extra == "peer closes"
        await _until(lambda: len(gw.lines()) == 2)
        by_client, by_upstream = gw.lines()
    first, _second = peer.wait_ended(2)
    assert first.close_code == 4000
    assert (by_client["close_code"], by_client["closed_by"]) == (4000, "client")
    assert (by_upstream["close_code"], by_upstream["closed_by"]) == (4001, "upstream")


async def test_an_upstream_that_vanishes_closes_the_client_with_1011(peer: RealtimePeer) -> None:
    async with gateway(peer.port) as gw, aiohttp.ClientSession() as session:
        async with _connect(session, gw) as ws:
            await ws.receive_str(timeout=5)
            await ws.send_json({"type": "test.drop"})
            message = await ws.receive(timeout=5)
            assert message.type is WSMsgType.CLOSE
            assert message.data == 1011
        line = await gw.line()
    assert line["closed_by"] == "upstream"
    assert line["close_code"] is None
    assert line["outcome"] == "upstream_reset"


async def test_a_client_that_vanishes_closes_the_upstream(peer: RealtimePeer) -> None:
    async with gateway(peer.port) as gw, aiohttp.ClientSession() as session:
        ws = await _connect(session, gw)
        await ws.receive_str(timeout=5)
        vanished = time.monotonic()
        transport = ws._response.connection.transport
        assert transport is not None
        transport.abort()  # no close frame: the TCP connection just drops
        [upstream] = await asyncio.to_thread(peer.wait_ended, 1, 5)
        line = await gw.line()
    assert upstream.ended_at is not None and upstream.ended_at - vanished < 4
    assert upstream.close_code == 1001
    assert line["closed_by"] == "client"
    assert line["outcome"] == "client_disconnect"


async def test_a_frame_over_the_bound_closes_with_1009_either_way(peer: RealtimePeer) -> None:
    async with gateway(peer.port) as gw, aiohttp.ClientSession() as session:
        async with _connect(session, gw) as ws:
            await ws.receive_str(timeout=5)
            await ws.send_str("x" * (MAX_FRAME + 1))
            message = await ws.receive(timeout=5)
            assert (message.type, message.data) == (WSMsgType.CLOSE, 1009)
        async with _connect(session, gw) as ws:
            await ws.receive_str(timeout=5)
            await ws.send_json({"type": "test.big", "size": MAX_FRAME - 100})
            assert len(await ws.receive_str(timeout=5)) == MAX_FRAME - 100  # at the bound: fine
            await ws.send_json({"type": "test.big", "size": MAX_FRAME + 1})
            message = await ws.receive(timeout=5)
            assert (message.type, message.data) == (WSMsgType.CLOSE, 1009)
        await _until(lambda: len(gw.lines()) == 2)
        from_client, from_upstream = gw.lines()
    peer.wait_ended(2)
    assert (from_client["close_code"], from_client["closed_by"]) == (1009, "gateway")
    assert (from_upstream["close_code"], from_upstream["closed_by"]) == (1009, "gateway")
    assert from_client["outcome"] == from_upstream["outcome"] == "frame_too_large"
    assert "from the client" in from_client["error"]
    assert "from the upstream" in from_upstream["error"]


async def test_a_plain_get_is_400_websocket_required(peer: RealtimePeer) -> None:
    async with gateway(peer.port) as gw, aiohttp.ClientSession() as session:
        async with session.get(gw.url + CLASSIC) as response:
            assert response.status == 400
            body = await response.json()
        line = await gw.line()
    assert body["error"]["code"] == "websocket_required"
    assert line["outcome"] == "websocket_required"
    assert peer.sessions == []


async def test_an_upstream_refusal_is_relayed_with_its_status_and_retry_after(
    peer: RealtimePeer,
) -> None:
    peer.refuse = (429, {"retry-after": "7", "x-ratelimit-remaining-requests": "0"})
    async with gateway(peer.port) as gw, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await _connect(session, gw)
        line = await gw.line()
    assert refused.value.status == 429
    assert refused.value.headers is not None
    assert refused.value.headers["retry-after"] == "7"
    assert line["status"] == 429
    assert line["upstream_status"] == 429
    assert line["outcome"] == "upstream_error"


async def test_an_upstream_redirect_is_never_followed(peer: RealtimePeer) -> None:
    elsewhere = RealtimePeer()
    try:
        peer.redirect_to = elsewhere.url + CLASSIC
        async with gateway(peer.port) as gw, aiohttp.ClientSession() as session:
            async with session.get(
                gw.url + CLASSIC,
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                },
            ) as response:
                assert response.status == 502
                body = await response.json()
            line = await gw.line()
    finally:
        elsewhere.close()
    assert body["error"]["code"] == "upstream_redirect"
    assert line["outcome"] == "upstream_redirect"
    assert elsewhere.sessions == []  # the route's key went nowhere else


async def test_an_unreachable_upstream_is_502_before_any_upgrade() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    async with gateway(closed_port) as gw, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await _connect(session, gw)
        line = await gw.line()
    assert refused.value.status == 502
    assert line["outcome"] == "upstream_unreachable"


async def test_an_upstream_that_never_answers_the_upgrade_is_504_in_connect_timeout() -> None:
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        async with gateway(port, connect_timeout=0.5) as gw, aiohttp.ClientSession() as session:
            started = time.monotonic()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await _connect(session, gw)
            waited = time.monotonic() - started
            line = await gw.line()
    assert refused.value.status == 504
    assert 0.4 < waited < 4
    assert line["outcome"] == "upstream_connect_timeout"


async def test_subprotocols_cross_except_a_key_in_disguise(peer: RealtimePeer) -> None:
    offered = ("realtime", f"openai-insecure-api-key.{CLIENT_KEY}", "openai-beta.realtime-v1")
    async with (
        gateway(peer.port) as gw,
        aiohttp.ClientSession() as session,
        _connect(session, gw, protocols=offered) as ws,
    ):
        await ws.receive_str(timeout=5)
        assert ws.protocol == "realtime"
    [upstream] = peer.wait_ended()
    assert upstream.protocols == ["realtime", "openai-beta.realtime-v1"]


async def test_a_silent_session_is_closed_after_the_read_timeout(peer: RealtimePeer) -> None:
    async with gateway(peer.port, read_timeout=0.6) as gw, aiohttp.ClientSession() as session:
        async with _connect(session, gw) as ws:
            started = time.monotonic()
            await ws.receive_str(timeout=5)
            message = await ws.receive(timeout=5)
            silent = time.monotonic() - started
            assert (message.type, message.data) == (WSMsgType.CLOSE, 1001)
        line = await gw.line()
    assert 0.5 < silent < 4
    assert line["outcome"] == "idle_timeout"
    assert line["closed_by"] == "gateway"
    [upstream] = peer.wait_ended()
    assert upstream.close_code == 1001


async def test_an_upgraded_session_outlives_the_head_and_keepalive_deadlines(
    peer: RealtimePeer,
) -> None:
    settings = ListenerSettings(port=0, header_timeout=0.3, keepalive_timeout=0.3)
    async with gateway(peer.port, settings=settings) as gw, aiohttp.ClientSession() as session:
        async with _connect(session, gw) as ws:
            await ws.receive_str(timeout=5)
            for _ in range(3):
                await asyncio.sleep(0.5)  # silence longer than either deadline
                events = await _respond(ws)
                assert events[-1]["type"] == "response.done"
        line = await gw.line()
    assert line["responses"] == 3
    assert line["closed_by"] == "client"


async def test_a_session_is_not_reclaimed_as_idle_at_the_connection_limit(
    peer: RealtimePeer,
) -> None:
    settings = ListenerSettings(port=0, max_connections=2)
    async with gateway(peer.port, settings=settings) as gw, aiohttp.ClientSession() as session:
        async with _connect(session, gw) as ws:
            await ws.receive_str(timeout=5)
            # Idle new connections fill the limit, and more keep coming: only
            # idle ones may be reclaimed for them, never the session.
            socks = [socket.create_connection(("127.0.0.1", gw.listener.port)) for _ in range(4)]
            try:
                await asyncio.sleep(0.5)
                events = await _respond(ws)
                assert events[-1]["type"] == "response.done"
            finally:
                for sock in socks:
                    sock.close()
        line = await gw.line()
    assert line["closed_by"] == "client"
    assert line["responses"] == 1


def _handshake(port: int, path: str) -> socket.socket:
    """A raw WebSocket client that completes the upgrade, then never reads again."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            f"api-key: {CLIENT_KEY}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: no frame is read past the head
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _masked_text(payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def test_a_client_that_stops_reading_is_cut_by_the_send_deadline(
    peer: RealtimePeer,
) -> None:
    settings = ListenerSettings(port=0, client_send_timeout=0.5)
    async with gateway(peer.port, settings=settings) as gw:
        sock = await asyncio.to_thread(_handshake, gw.listener.port, CLASSIC)
        try:
            flood = json.dumps({"type": "test.flood", "count": 2000, "size": 16000}).encode()
            sock.sendall(_masked_text(flood))
            [upstream] = await asyncio.to_thread(peer.wait_ended, 1, 15)
            line = await gw.line()
        finally:
            sock.close()
    assert line["outcome"] == "client_stalled"
    assert line["closed_by"] == "client"
    assert line["frames_out"] < 2000  # back-pressure: the flood was held, not buffered
    assert upstream.ended


async def test_a_client_that_stops_answering_pings_is_dropped_by_the_heartbeat(
    peer: RealtimePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "HEARTBEAT_S", 0.4)
    async with gateway(peer.port) as gw:
        # Completes the upgrade, then neither reads nor answers a ping.
        sock = await asyncio.to_thread(_handshake, gw.listener.port, CLASSIC)
        try:
            started = time.monotonic()
            [upstream] = await asyncio.to_thread(peer.wait_ended, 1, 8)
            line = await gw.line()
        finally:
            sock.close()
    assert upstream.ended_at is not None and upstream.ended_at - started < 5
    assert line["closed_by"] == "client"
    assert line["frames_in"] == 0


def _handshake_request(path: str) -> Any:
    return make_mocked_request(
        "GET",
        path,
        headers=CIMultiDict(
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            }
        ),
    )


async def test_a_balanced_attempt_refused_with_a_failover_status_is_left_to_the_balancer(
    peer: RealtimePeer,
) -> None:
    peer.refuse = (429, {"retry-after-ms": "1500"})
    pool = UpstreamPool()
    relay = make_realtime_relay(_target(peer.port))
    ex = Exchange(
        request=_handshake_request(CLASSIC),
        path="/openai/realtime",
        pool=pool,
        body_budget=BodyBudget(1 << 20),
    )
    ex.failover_statuses = frozenset({429})
    try:
        with pytest.raises(RetryableAnswer) as refused:
            await relay(ex)
    finally:
        await pool.close()
    assert (refused.value.status, refused.value.retry_after_s) == (429, 1.5)


async def test_a_connect_failure_is_a_connect_phase_outcome_the_balancer_fails_over_on() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    pool = UpstreamPool()
    ex = Exchange(
        request=_handshake_request(CLASSIC),
        path="/openai/realtime",
        pool=pool,
        body_budget=BodyBudget(1 << 20),
    )
    try:
        with pytest.raises(UpstreamUnavailable):
            await make_realtime_relay(_target(closed_port))(ex)
    finally:
        await pool.close()
    assert ex.outcome in CONNECT_PHASE_OUTCOMES


async def test_a_shutdown_tells_open_sessions_to_go_away_at_once(peer: RealtimePeer) -> None:
    # A session has no end of its own to drain to: waiting out the drain budget
    # would only delay the exit, then cut it anyway.
    settings = ListenerSettings(port=0, shutdown_timeout=10)
    async with aiohttp.ClientSession() as session:
        async with gateway(peer.port, settings=settings) as gw:
            ws = await _connect(session, gw)
            await ws.receive_str(timeout=5)
            started = time.monotonic()
            stopping = asyncio.create_task(gw.listener.stop())
            message = await ws.receive(timeout=10)
            await stopping
            stopped = time.monotonic() - started
            line = await gw.line()
        await ws.close()
    assert (message.type, message.data) == (WSMsgType.CLOSE, 1001)
    assert stopped < 5
    assert line["status"] == 101
    assert line["outcome"] == "shutdown"
    assert (line["closed_by"], line["close_code"]) == ("gateway", 1001)
    [upstream] = await asyncio.to_thread(peer.wait_ended)
    assert upstream.close_code == 1001
