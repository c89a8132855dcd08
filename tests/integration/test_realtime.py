"""The Realtime API over WebSocket through a real ``aigw serve``: the openai SDK, sync and
async, in both URL styles, and what a session leaves in the access log.

The upstream is the scripted realtime peer (tests/integration/realtime_peer.py), the
gateway's ``--azure-base-url``; routes are path routes of ``route_type:
realtime/v1/realtime`` on the SDK's two realtime paths, plus one behind key-auth.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from openai import AsyncAzureOpenAI, AsyncOpenAI, AzureOpenAI, OpenAI
from openai.resources.realtime.realtime import RealtimeConnection

from tests.integration.harness import (
    GatewayProcess,
    MockProcess,
    model_route_file,
    serve_routes,
    wait_until,
)
from tests.integration.realtime_peer import USAGE, PeerSession, RealtimePeer
from tests.integration.realtime_turns import async_text_turn, text_turn

ROUTE_KEY = "route-key-for-the-upstream"
CLIENT_KEY = "client-key-never-forwarded"
CONSUMER_KEY = "sk-realtime-consumer-0123456789"
DEPLOYMENT = "gpt-realtime"
API_VERSION = "2025-04-01-preview"
MAX_FRAME = 64 * 1024

# openai 3.57's realtime client calls websockets' connect() without a context manager,
# which websockets 17.1+ deprecates; the SDK's problem, not the gateway's.
pytestmark = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)


def _route(name: str, paths: str, plugins: str = "") -> str:
    return f"""route:
  name: {name}
  paths: [{paths}]
  methods: [GET]
plugins:{plugins}
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: realtime/v1/realtime
          auth:
            header_name: api-key
            header_value: {ROUTE_KEY}
          model:
            provider: azure
            name: {DEPLOYMENT}
            options:
              azure_instance: testresource
              azure_deployment_id: {DEPLOYMENT}
"""


ROUTES = {
    "realtime.yaml": _route("realtime", "/openai/realtime, /openai/v1/realtime"),
    "keyed.yaml": _route(
        "keyed",
        "/keyed/realtime",
        "\n  - name: key-auth\n    config: {key_names: [api-key]}",
    ),
    # An HTTP route on a GET path: an upgrade there is refused, never relayed.
    "models.yaml": _route("models", "/openai/v1/models").replace(
        "route_type: realtime/v1/realtime", "route_type: preserve"
    ),
    "consumers.yaml": f"""consumers:
  - username: team-voice
    keyauth_credentials:
      - key: {CONSUMER_KEY}
""",
}


@pytest.fixture(scope="module")
def peer() -> Iterator[RealtimePeer]:
    upstream = RealtimePeer()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, peer: RealtimePeer
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("realtime-conf.d")
    options = ("--azure-base-url", peer.url, "--max-event-size", str(MAX_FRAME))
    with serve_routes(conf, ROUTES, *options) as process:
        yield process


@pytest.fixture(autouse=True)
def _fresh_peer(peer: RealtimePeer) -> None:
    peer.sessions.clear()
    peer.refuse = None


def _session_line(gateway: GatewayProcess, path: str, seen: int = 0) -> dict[str, Any]:
    """The access-log line of the (seen+1)-th session on *path*, once it has closed."""

    def find() -> dict[str, Any] | None:
        lines = [
            e
            for e in gateway.events()
            if e.get("event") == "request" and e.get("path") == path and "frames_in" in e
        ]
        return lines[seen] if len(lines) > seen else None

    line: dict[str, Any] = wait_until(find, timeout=10)
    return line


def _lines(gateway: GatewayProcess, path: str) -> int:
    return sum(
        1
        for e in gateway.events()
        if e.get("event") == "request" and e.get("path") == path and "frames_in" in e
    )


def _ws_url(gateway: GatewayProcess, path: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}{path}"


@contextlib.asynccontextmanager
async def _session(
    gateway: GatewayProcess, path: str, headers: dict[str, str]
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A raw WebSocket session through *gateway* on *path*, its first frame (the
    upstream's ``session.created``) already read."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(_ws_url(gateway, path), headers=headers) as ws,
    ):
        await ws.receive_str(timeout=5)
        yield ws


def _text_turn_sync(connection: RealtimeConnection) -> tuple[str, dict[str, int]]:
    """One text turn over an SDK connection: the deltas' text and the done event's usage."""
    text, usage = text_turn(connection)
    return text, {"input": usage.input_tokens or 0, "output": usage.output_tokens or 0}


def _client_options(gateway: GatewayProcess, style: str) -> dict[str, Any]:
    if style == "v1":
        return {"base_url": f"{gateway.url}/openai/v1/", "api_key": CLIENT_KEY}
    return {
        "azure_endpoint": gateway.url,
        "api_version": API_VERSION,
        "api_key": CLIENT_KEY,
        # AzureOpenAI dials wss:// unless told otherwise; aigw here is plain ws.
        "websocket_base_url": f"ws://127.0.0.1:{gateway.port}/openai",
    }


def _sync_client(gateway: GatewayProcess, style: str) -> OpenAI:
    options = _client_options(gateway, style)
    return OpenAI(**options) if style == "v1" else AzureOpenAI(**options)


def _async_client(gateway: GatewayProcess, style: str) -> AsyncOpenAI:
    options = _client_options(gateway, style)
    return AsyncOpenAI(**options) if style == "v1" else AsyncAzureOpenAI(**options)


# What reaches the upstream per style: the client's style kept, the target's deployment
# named whatever the client called it.
UPSTREAM = {
    "v1": ("/openai/v1/realtime", {"model": DEPLOYMENT}),
    "classic": ("/openai/realtime", {"api-version": API_VERSION, "deployment": DEPLOYMENT}),
}
CLIENT_PATH = {"v1": "/openai/v1/realtime", "classic": "/openai/realtime"}


def _assert_session_line(line: dict[str, Any], responses: int) -> None:
    assert line["status"] == 101
    assert line["route"] == "realtime"
    assert line["outcome"] == "ok"
    assert line["upstream_status"] == 101
    assert line["responses"] == responses
    assert line["prompt_tokens"] == responses * USAGE["input_tokens"]
    assert line["completion_tokens"] == responses * USAGE["output_tokens"]
    assert line["total_tokens"] == responses * USAGE["total_tokens"]
    # Each turn: item.create and response.create in; item created, response created,
    # five text deltas, an audio delta and response.done out; session.created first.
    assert line["frames_in"] == 2 * responses
    assert line["frames_out"] == 1 + 9 * responses
    assert (line["close_code"], line["closed_by"]) == (1000, "client")
    assert line["latency_ms"] > 0
    assert CLIENT_KEY not in json.dumps(line) and ROUTE_KEY not in json.dumps(line)


def _assert_upstream(upstream: PeerSession, style: str) -> None:
    assert (upstream.path, upstream.query) == UPSTREAM[style]
    assert upstream.headers["api-key"] == ROUTE_KEY
    assert "Authorization" not in upstream.headers
    assert CLIENT_KEY not in json.dumps(upstream.headers)
    assert upstream.close_code == 1000


@pytest.mark.parametrize("style", ["v1", "classic"])
def test_sdk_sync_session_runs_and_logs_tokens_frames_and_close(
    gateway: GatewayProcess, peer: RealtimePeer, style: str
) -> None:
    before = _lines(gateway, CLIENT_PATH[style])
    client = _sync_client(gateway, style)
    with client.realtime.connect(model="my-name-for-it") as connection:
        first = _text_turn_sync(connection)
        second = _text_turn_sync(connection)
    client.close()
    assert first == ("Hello from the realtime peer", {"input": 11, "output": 7})
    assert second == first
    [upstream] = peer.wait_ended()
    _assert_upstream(upstream, style)
    line = _session_line(gateway, CLIENT_PATH[style], before)
    _assert_session_line(line, responses=2)


@pytest.mark.parametrize("style", ["v1", "classic"])
async def test_sdk_async_session_runs_and_logs(
    gateway: GatewayProcess, peer: RealtimePeer, style: str
) -> None:
    before = _lines(gateway, CLIENT_PATH[style])
    client = _async_client(gateway, style)
    turns = []
    async with client.realtime.connect(model="my-name-for-it") as connection:
        for _ in range(2):
            text, usage = await async_text_turn(connection)
            turns.append((text, usage.total_tokens))
    await client.close()
    assert turns == [("Hello from the realtime peer", USAGE["total_tokens"])] * 2
    [upstream] = await asyncio.to_thread(peer.wait_ended)
    _assert_upstream(upstream, style)
    line = await asyncio.to_thread(_session_line, gateway, CLIENT_PATH[style], before)
    _assert_session_line(line, responses=2)
    if style == "classic":
        assert line["api_version"] == API_VERSION


async def test_a_client_that_vanishes_closes_the_upstream(
    gateway: GatewayProcess, peer: RealtimePeer
) -> None:
    before = _lines(gateway, "/openai/realtime")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            _ws_url(gateway, f"/openai/realtime?deployment={DEPLOYMENT}"),
            headers={"api-key": CLIENT_KEY},
        )
        assert json.loads(await ws.receive_str(timeout=5))["type"] == "session.created"
        connection = ws._response.connection
        assert connection is not None and connection.transport is not None
        connection.transport.abort()  # gone: no close frame
        [upstream] = await asyncio.to_thread(peer.wait_ended, 1, 8)
    assert upstream.close_code == 1001
    line = await asyncio.to_thread(_session_line, gateway, "/openai/realtime", before)
    assert line["closed_by"] == "client"
    assert line["outcome"] == "client_disconnect"


async def test_an_upstream_that_vanishes_closes_the_client_with_1011(
    gateway: GatewayProcess,
) -> None:
    before = _lines(gateway, "/openai/v1/realtime")
    async with _session(
        gateway, "/openai/v1/realtime?model=x", {"Authorization": f"Bearer {CLIENT_KEY}"}
    ) as ws:
        await ws.send_json({"type": "test.drop"})
        message = await ws.receive(timeout=5)
    assert (message.type, message.data) == (WSMsgType.CLOSE, 1011)
    line = await asyncio.to_thread(_session_line, gateway, "/openai/v1/realtime", before)
    assert (line["closed_by"], line["outcome"]) == ("upstream", "upstream_reset")


async def test_a_frame_over_the_bound_closes_with_1009(gateway: GatewayProcess) -> None:
    before = _lines(gateway, "/openai/realtime")
    async with _session(
        gateway, f"/openai/realtime?deployment={DEPLOYMENT}", {"api-key": CLIENT_KEY}
    ) as ws:
        await ws.send_str(json.dumps({"type": "x", "pad": "y" * MAX_FRAME}))
        message = await ws.receive(timeout=5)
    assert (message.type, message.data) == (WSMsgType.CLOSE, 1009)
    line = await asyncio.to_thread(_session_line, gateway, "/openai/realtime", before)
    assert (line["close_code"], line["closed_by"]) == (1009, "gateway")


def _upgrade(gateway: GatewayProcess, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    """A WebSocket upgrade request sent as plain HTTP: its status and JSON body."""
    request = urllib.request.Request(
        gateway.url + path,
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            **headers,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_bad_consumer_key_is_refused_with_401_json_before_any_upgrade(
    gateway: GatewayProcess, peer: RealtimePeer
) -> None:
    status, body = _upgrade(gateway, "/keyed/realtime", {"api-key": "sk-wrong"})
    assert status == 401
    assert body["error"]["type"] == "invalid_request_error"
    assert peer.sessions == []  # never dialled


async def test_a_consumer_key_opens_a_session_and_never_reaches_the_upstream(
    gateway: GatewayProcess, peer: RealtimePeer
) -> None:
    async with _session(
        gateway, f"/keyed/realtime?deployment={DEPLOYMENT}", {"api-key": CONSUMER_KEY}
    ):
        pass  # session.created came through; leaving closes the session
    [upstream] = await asyncio.to_thread(peer.wait_ended)
    assert upstream.headers["api-key"] == ROUTE_KEY
    assert CONSUMER_KEY not in json.dumps(upstream.headers)
    line = await asyncio.to_thread(_session_line, gateway, "/keyed/realtime")
    assert line["consumer"] == "team-voice"


def test_an_upgrade_on_a_route_that_is_not_realtime_is_400_before_any_upstream(
    gateway: GatewayProcess, peer: RealtimePeer
) -> None:
    status, body = _upgrade(gateway, "/openai/v1/models", {"api-key": CLIENT_KEY})
    assert status == 400
    assert body["error"]["code"] == "websocket_not_supported"
    assert peer.sessions == []


def test_a_plain_get_on_the_realtime_route_is_400_websocket_required(
    gateway: GatewayProcess, peer: RealtimePeer
) -> None:
    request = urllib.request.Request(
        f"{gateway.url}/openai/realtime?deployment={DEPLOYMENT}", headers={"api-key": "k"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    body = json.loads(refused.value.read())
    assert body["error"]["code"] == "websocket_required"
    assert peer.sessions == []


# -- the model route and the bundled Azure mock -----------------------------------

MOCK_DEPLOYMENT = "gpt-4o-realtime-preview"
MODEL_ROUTE = model_route_file(
    "realtime-model", [MOCK_DEPLOYMENT], [MOCK_DEPLOYMENT], instance="testresource"
)


@pytest.fixture(scope="module")
def mock_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("realtime-model-conf.d")
    files = {"realtime-model.yaml": MODEL_ROUTE}
    env = {"AZURE_OPENAI_KEY": MockProcess.api_key}
    with serve_routes(conf, files, "--azure-base-url", mock.url, env=env) as process:
        yield process


def _mock_session(mock: MockProcess, count: int) -> dict[str, Any]:
    """The mock's *count*-th session record, once the session has closed."""

    def closed() -> dict[str, Any] | None:
        sessions = mock.sessions()
        if len(sessions) >= count and sessions[count - 1]["session"].get("closed_by"):
            return sessions[count - 1]
        return None

    record: dict[str, Any] = wait_until(closed, timeout=10)
    return record


@pytest.mark.parametrize("style", ["v1", "classic"])
def test_sdk_sessions_through_a_model_route_to_the_azure_mock(
    mock_gateway: GatewayProcess, mock: MockProcess, style: str
) -> None:
    count = len(mock.sessions())
    before = _lines(mock_gateway, CLIENT_PATH[style])
    client = _sync_client(mock_gateway, style)
    done: list[tuple[int, int, int]] = []
    with client.realtime.connect(model=MOCK_DEPLOYMENT) as connection:
        for _ in range(2):
            _, usage = text_turn(connection, {"output_modalities": ["text"]})
            done.append(
                (usage.input_tokens or 0, usage.output_tokens or 0, usage.total_tokens or 0)
            )
    client.close()
    record = _mock_session(mock, count + 1)
    assert record["session"]["closed_by"] == "client"
    assert record["headers"].get("api-key") == MockProcess.api_key
    line = _session_line(mock_gateway, CLIENT_PATH[style], before)
    assert line["route"] == "realtime-model"
    assert (line["status"], line["responses"], line["close_code"]) == (101, 2, 1000)
    assert len(done) == 2 and all(total > 0 for _, _, total in done)
    assert line["prompt_tokens"] == sum(given for given, _, _ in done)
    assert line["completion_tokens"] == sum(taken for _, taken, _ in done)
    assert line["total_tokens"] == sum(total for _, _, total in done)
    assert line["frames_in"] == record["session"]["frames_in"]
    assert line["frames_out"] == record["session"]["frames_out"]


async def test_the_mock_dropping_a_session_closes_the_client_with_1011(
    mock_gateway: GatewayProcess, mock: MockProcess
) -> None:
    async with _session(
        mock_gateway,
        f"/openai/v1/realtime?model={MOCK_DEPLOYMENT}",
        {"Authorization": f"Bearer {CLIENT_KEY}"},
    ) as ws:
        assert await asyncio.to_thread(mock.drop_sessions) == 1
        message = await ws.receive(timeout=5)
    assert (message.type, message.data) == (WSMsgType.CLOSE, 1011)


async def test_a_vanished_client_closes_the_mocks_session(
    mock_gateway: GatewayProcess, mock: MockProcess
) -> None:
    count = len(await asyncio.to_thread(mock.sessions))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            _ws_url(mock_gateway, f"/openai/realtime?deployment={MOCK_DEPLOYMENT}"),
            headers={"api-key": CLIENT_KEY},
        )
        await ws.receive_str(timeout=5)
        connection = ws._response.connection
        assert connection is not None and connection.transport is not None
        connection.transport.abort()
        record = await asyncio.to_thread(_mock_session, mock, count + 1)
    assert record["session"]["closed_by"] == "client"
    assert record["session"]["close_code"] == 1001
