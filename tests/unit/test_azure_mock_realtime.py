"""The Azure mock's Realtime API: a WebSocket session in the preview dialect
(``/openai/realtime?deployment=``) and the GA one (``/openai/v1/realtime?model=``),
recorded, with faults and the drop control."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from aigw.testing.azure_mock import MockConfig, build_app

Client = TestClient[web.Request, web.Application]

KEY = "test-key"
AUTH = {"api-key": KEY}
CLASSIC = "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-4o-realtime-preview"
V1 = "/openai/v1/realtime?model=gpt-4o-realtime-preview"
SAY = {
    "type": "conversation.item.create",
    "item": {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hello there"}],
    },
}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(build_app(MockConfig(api_key=KEY)))


async def sessions(client: Client) -> list[dict[str, Any]]:
    resp = await client.get("/_mock/sessions")
    data: list[dict[str, Any]] = await resp.json()
    return data


async def events_until(ws: aiohttp.ClientWebSocketResponse, last: str) -> list[dict[str, Any]]:
    """Server events up to and including the first of type *last*."""
    seen = []
    while True:
        event = json.loads(await ws.receive_str(timeout=5))
        seen.append(event)
        if event["type"] == last:
            return seen


@pytest.mark.parametrize(
    ("path", "audio_delta", "transcript_delta"),
    [
        (CLASSIC, "response.audio.delta", "response.audio_transcript.delta"),
        (V1, "response.output_audio.delta", "response.output_audio_transcript.delta"),
    ],
)
async def test_session_text_in_audio_out(
    client: Client, path: str, audio_delta: str, transcript_delta: str
) -> None:
    async with client.ws_connect(path, headers=AUTH) as ws:
        (created,) = await events_until(ws, "session.created")
        assert created["session"]["model"] == "gpt-4o-realtime-preview-2024-12-17"
        await ws.send_json({"type": "session.update", "session": {"instructions": "be brief"}})
        (updated,) = await events_until(ws, "session.updated")
        assert updated["session"]["instructions"] == "be brief"
        await ws.send_json(SAY)
        (item,) = await events_until(ws, "conversation.item.created")
        assert item["item"]["id"].startswith("item_")
        await ws.send_json({"type": "response.create"})
        events = await events_until(ws, "response.done")
        await ws.close()
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["response.created", "response.output_item.added"]
    assert kinds.count(audio_delta) == 3
    transcript = "".join(e["delta"] for e in events if e["type"] == transcript_delta)
    assert transcript == "I am gpt-4o-realtime-preview-2024-12-17. The quick brown fox"
    assert all(event["event_id"].startswith("event_") for event in events)
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["usage"]["input_tokens"] == 2
    assert done["usage"]["output_tokens"] == 8 + 3
    assert done["usage"]["total_tokens"] == 13
    assert done["usage"]["output_token_details"] == {"text_tokens": 8, "audio_tokens": 3}
    (record,) = await sessions(client)
    assert record["status"] == 101 and record["operation"] == "realtime"
    assert record["deployment"] == "gpt-4o-realtime-preview"
    session = record["session"]
    assert session["events_in"] == ["session.update", "conversation.item.create", "response.create"]
    assert session["frames_in"] == 3
    assert session["frames_out"] == 3 + len(events)
    assert session["events_out"][-1] == "response.done"
    assert (session["close_code"], session["closed_by"]) == (1000, "client")


async def test_text_only_response_and_audio_input(client: Client) -> None:
    async with client.ws_connect(V1, headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await events_until(ws, "session.created")
        await ws.send_json({"type": "input_audio_buffer.append", "audio": "AAAA" * 1600})
        await ws.send_json({"type": "input_audio_buffer.commit"})
        await events_until(ws, "input_audio_buffer.committed")
        await ws.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = await events_until(ws, "response.done")
    kinds = [event["type"] for event in events]
    assert "response.output_audio.delta" not in kinds
    assert kinds.count("response.output_text.delta") == 8
    usage = events[-1]["response"]["usage"]
    assert usage["input_token_details"]["audio_tokens"] == 2  # 4800 bytes of pcm16
    (record,) = await sessions(client)
    assert record["session"]["audio_bytes_in"] == 4800


async def test_bad_client_events_get_error_events(client: Client) -> None:
    async with client.ws_connect(CLASSIC, headers=AUTH) as ws:
        await events_until(ws, "session.created")
        await ws.send_str("not json")
        (error,) = await events_until(ws, "error")
        assert error["error"]["code"] == "invalid_json"
        await ws.send_json({"type": "response.fly", "event_id": "evt_1"})
        (error,) = await events_until(ws, "error")
        assert error["error"]["code"] == "invalid_value"
        assert error["error"]["event_id"] == "evt_1"
        await ws.send_bytes(b"\x00")
        (error,) = await events_until(ws, "error")
        assert error["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/openai/realtime?api-version=2025-04-01-preview", 404),
        ("/openai/realtime?deployment=gpt-4o-realtime-preview", 404),
        ("/openai/realtime?api-version=2025-04-01-preview&deployment=nope", 404),
        ("/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-4o", 400),
        ("/openai/v1/realtime?model=gpt-4o-realtime-preview&api-version=2024-10-21", 400),
    ],
)
async def test_refused_before_the_upgrade(client: Client, path: str, status: int) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(path, headers=AUTH)
    assert caught.value.status == status


async def test_bad_key_is_401_and_plain_get_is_400(client: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(V1, headers={"api-key": "wrong"})
    assert caught.value.status == 401
    resp = await client.get(V1, headers=AUTH)
    assert resp.status == 400
    assert "WebSocket" in (await resp.json())["error"]["message"]


async def test_faults_before_and_during_the_session(client: Client) -> None:
    await client.post("/_mock/faults", json={"fault": "status", "status": 429})
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(V1, headers=AUTH)
    assert caught.value.status == 429
    await client.post("/_mock/faults", json={"fault": "cut_stream", "after_events": 3})
    async with client.ws_connect(V1, headers=AUTH) as ws:
        await ws.send_json({"type": "response.create"})
        kinds = []
        async for message in ws:
            kinds.append(json.loads(message.data)["type"])
        assert ws.close_code == 1006  # no close frame: the mock vanished
    assert kinds == ["session.created", "response.created", "response.output_item.added"]
    await client.post("/_mock/faults", json={"fault": "stream_error_event", "after_events": 1})
    async with client.ws_connect(V1, headers=AUTH) as ws:
        await ws.send_json({"type": "response.create"})
        messages = [json.loads(m.data) async for m in ws]
        assert ws.close_code == 1011
    assert [m["type"] for m in messages] == ["session.created", "error"]
    records = await sessions(client)
    assert [r["session"]["closed_by"] for r in records] == ["dropped", "mock"]
    assert records[0]["stream_outcome"] == "cut"


@pytest.mark.parametrize(("code", "expected"), [(None, 1006), (4001, 4001)])
async def test_drop_control(client: Client, code: int | None, expected: int) -> None:
    async with client.ws_connect(CLASSIC, headers=AUTH) as ws:
        await events_until(ws, "session.created")
        resp = await client.post("/_mock/sessions/drop", json={"code": code})
        assert (await resp.json())["sessions"] == 1
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        if code is not None:
            assert message.data == code
    assert ws.close_code == expected
    (record,) = await sessions(client)
    assert record["session"]["closed_by"] == ("dropped" if code is None else "mock")
    resp = await client.post("/_mock/sessions/drop", json={"code": 1})
    assert resp.status == 400


async def test_openai_sdk_realtime_v1_and_classic(client: Client) -> None:
    port = client.server.port
    v1 = openai.AsyncOpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{port}/openai/v1/")
    azure = openai.AsyncAzureOpenAI(
        api_key=KEY,
        azure_endpoint=f"http://127.0.0.1:{port}",
        api_version="2025-04-01-preview",
        websocket_base_url=f"ws://127.0.0.1:{port}/openai",
    )
    # The preview dialect knows no output_modalities: text and audio come back.
    for sdk, output_tokens in ((v1, 8), (azure, 8 + 3)):
        async with sdk, sdk.realtime.connect(model="gpt-4o-realtime-preview") as conn:
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                }
            )
            await conn.response.create()
            async for event in conn:
                if event.type == "response.done":
                    assert event.response.usage is not None
                    assert event.response.usage.output_tokens == output_tokens
                    break
    first, second = await sessions(client)
    assert first["path"] == "/openai/v1/realtime"
    assert first["headers"]["authorization"] == f"Bearer {KEY}"
    assert second["path"] == "/openai/realtime"
    assert second["query"]["deployment"] == "gpt-4o-realtime-preview"
    assert second["headers"]["api-key"] == KEY


async def test_client_close_code_is_recorded(client: Client) -> None:
    async with client.ws_connect(V1, headers=AUTH) as ws:
        await events_until(ws, "session.created")
        await ws.close(code=4000, message=b"bye")
    (record,) = await sessions(client)
    assert (record["session"]["close_code"], record["session"]["closed_by"]) == (4000, "client")
    assert record["stream_outcome"] == "completed"


async def test_event_types_kept_are_bounded(client: Client, monkeypatch: Any) -> None:
    monkeypatch.setattr("aigw.testing.azure_mock.records.EVENT_TYPES_KEPT", 2)
    async with client.ws_connect(V1, headers=AUTH) as ws:
        await events_until(ws, "session.created")
        for _ in range(3):
            await ws.send_json({"type": "input_audio_buffer.clear"})
        await events_until(ws, "input_audio_buffer.cleared")
        await events_until(ws, "input_audio_buffer.cleared")
        await events_until(ws, "input_audio_buffer.cleared")
    (record,) = await sessions(client)
    session = record["session"]
    assert (session["frames_in"], session["frames_out"]) == (3, 4)
    assert len(session["events_in"]) == len(session["events_out"]) == 2


async def test_slow_first_byte_holds_the_upgrade(client: Client) -> None:
    await client.post("/_mock/faults", json={"fault": "delay", "latency_ms": 300})
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.ws_connect(V1, headers=AUTH) as ws:
        assert loop.time() - started >= 0.3
        await events_until(ws, "session.created")
    (record,) = await sessions(client)
    assert record["fault"] == "delay"
