"""Streams: client disconnects cancel upstream; upstream faults end as errors."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import openai
import pytest

from tests.integration.harness import GatewayProcess, MockProcess, wait_until
from tests.integration.test_sdk import QUESTION, sync_client

STREAM_BODY = {"messages": QUESTION, "stream": True}
CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


async def test_client_disconnect_cancels_the_upstream_request(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    mock.fault("delay", token_delay_ms=300)
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            gateway.url + CHAT, json=STREAM_BODY, headers={"x-request-id": request_id}
        )
        assert response.status == 200
        await response.content.readany()  # the stream has started
        response.close()  # the client goes away mid-stream
    outcome = wait_until(lambda: mock.requests()[0]["stream_outcome"], timeout=5)
    assert outcome == "client_disconnected"
    line = gateway.access_log(request_id)
    assert line["status"] == 499
    assert line["outcome"] == "client_disconnect"


def test_upstream_cut_mid_stream_is_an_error_not_a_clean_end(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    mock.fault("cut_stream", after_events=3)
    stream = sync_client(gateway, max_retries=0).chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,
        stream=True,
        extra_headers={"x-request-id": request_id},
    )
    received = []
    with pytest.raises((openai.APIError, openai.APIConnectionError)) as info:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3
    assert "upstream" in str(info.value)
    assert gateway.access_log(request_id)["outcome"] == "upstream_reset"


def test_upstream_stream_without_done_is_an_error(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    mock.fault("eof_stream", after_events=4)
    stream = sync_client(gateway, max_retries=0).chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,
        stream=True,
        extra_headers={"x-request-id": request_id},
    )
    with pytest.raises((openai.APIError, openai.APIConnectionError)):
        list(stream)
    assert gateway.access_log(request_id)["outcome"] == "upstream_truncated"


async def test_stream_is_relayed_token_by_token(gateway: GatewayProcess, mock: MockProcess) -> None:
    """Each event reaches the client when Azure sends it, not at the end."""
    mock.fault("delay", token_delay_ms=150)
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + CHAT, json=STREAM_BODY) as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-Accel-Buffering"] == "no"
        buffer = b""
        async for chunk in response.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if b'"content":"' in event and b'"content":""' not in event:
                    arrivals.append(loop.time())
    assert len(arrivals) >= 4
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Unbuffered: tokens arrive spread out at the upstream's pace.
    assert min(gaps) > 0.08
