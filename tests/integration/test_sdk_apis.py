"""The openai SDK's other Azure APIs through model routes: the classic client's Responses
(``/openai/responses?api-version=…``), images (classic and v1) and text to speech (binary
audio streamed to a file), sync and async.

Same gateway and route files as ``test_sdk_v1.py``: one model route per deployment,
which serves the v1 paths, the classic model-in-body paths and the classic deployment
paths alike.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.integration.harness import GatewayProcess, MockProcess
from tests.integration.test_sdk_v1 import (
    AZURE_API_VERSION,
    assert_tokens,
    async_azure_client,
    async_v1_client,
    azure_client,
    body_model,
    logged,
    models_gateway,
    rid,
    upstream_call,
    v1_client,
)

__all__ = ["models_gateway"]  # the shared fixture, imported for pytest to find

SPEECH = {"model": "tts", "voice": "alloy", "input": "The gateway relays audio as it comes."}


# --- Responses on the classic client ---------------------------------------------------


def test_azure_client_responses(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    response = azure_client(models_gateway).responses.create(
        model="my-chat", input="What model are you?", extra_headers=rid(request_id)
    )
    assert response.status == "completed" and response.output_text
    assert response.usage is not None
    line = logged(
        models_gateway,
        request_id,
        route="my-chat",
        model="my-chat",
        deployment="gpt-4.1-mini",
        path="/openai/responses",
    )
    usage = response.usage
    assert_tokens(line, usage.input_tokens, usage.output_tokens, usage.total_tokens)
    assert line["api_version"] == AZURE_API_VERSION
    record = upstream_call(
        mock, path="/openai/responses", api_version=AZURE_API_VERSION, deployment="gpt-4.1-mini"
    )
    assert body_model(record) == "gpt-4.1-mini"


def test_azure_client_responses_stream(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    stream = azure_client(models_gateway).responses.create(
        model="gpt-4o", input="What model are you?", stream=True, extra_headers=rid(request_id)
    )
    events = list(stream)
    assert [e.type for e in events][-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1]
    assert completed.type == "response.completed"
    usage = completed.response.usage
    assert usage is not None
    line = logged(
        models_gateway,
        request_id,
        route="gpt-4o",
        model="gpt-4o",
        deployment="gpt-4o",
        path="/openai/responses",
    )
    assert line["stream"] is True
    assert_tokens(line, usage.input_tokens, usage.output_tokens, usage.total_tokens)
    record = upstream_call(
        mock, path="/openai/responses", api_version=AZURE_API_VERSION, deployment="gpt-4o"
    )
    assert "stream_options" not in json.loads(record["body"])


async def test_async_azure_client_responses_plain_and_stream(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    async with async_azure_client(models_gateway) as client:
        response = await client.responses.create(model="gpt-4o", input="hi")
        stream = await client.responses.create(
            model="my-chat", input="hi", stream=True, extra_headers=rid(request_id)
        )
        events = [event async for event in stream]
    assert response.output_text and response.usage is not None
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is not None
    line = models_gateway.access_log(request_id)
    assert (line["route"], line["path"]) == ("my-chat", "/openai/responses")
    assert line["total_tokens"] == completed.response.usage.total_tokens
    assert [(r["path"], r["deployment"], r["query"]) for r in mock.requests()] == [
        ("/openai/responses", "gpt-4o", {"api-version": AZURE_API_VERSION}),
        ("/openai/responses", "gpt-4.1-mini", {"api-version": AZURE_API_VERSION}),
    ]


# --- images ----------------------------------------------------------------------------


def test_classic_images_generate(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    result = azure_client(models_gateway).images.generate(
        model="dall-e-3", prompt="a lighthouse at dusk", n=1, extra_headers=rid(request_id)
    )
    assert len(result.data or []) == 1
    image = (result.data or [])[0]
    assert image.b64_json or image.url
    logged(
        models_gateway,
        request_id,
        route="dall-e-3",
        model="dall-e-3",
        deployment="dall-e-3",
        path="/openai/deployments/dall-e-3/images/generations",
    )
    upstream_call(
        mock,
        path="/openai/deployments/dall-e-3/images/generations",
        api_version=AZURE_API_VERSION,
        deployment="dall-e-3",
    )


def test_v1_images_generate_with_usage(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    result = v1_client(models_gateway).images.generate(
        model="gpt-image-1", prompt="a lighthouse at dusk", extra_headers=rid(request_id)
    )
    assert len(result.data or []) == 1
    assert result.usage is not None  # gpt-image-1 counts tokens
    line = logged(
        models_gateway,
        request_id,
        route="gpt-image-1",
        model="gpt-image-1",
        deployment="gpt-image-1",
        path="/openai/v1/images/generations",
    )
    usage = result.usage
    assert_tokens(line, usage.input_tokens, usage.output_tokens, usage.total_tokens)
    record = upstream_call(
        mock, path="/openai/v1/images/generations", api_version=None, deployment="gpt-image-1"
    )
    assert body_model(record) == "gpt-image-1"


async def test_async_images_generate(models_gateway: GatewayProcess, mock: MockProcess) -> None:
    async with async_v1_client(models_gateway) as client:
        result = await client.images.generate(model="dall-e-3", prompt="a lighthouse")
    assert len(result.data or []) == 1
    upstream_call(
        mock, path="/openai/v1/images/generations", api_version=None, deployment="dall-e-3"
    )


def test_route_of_one_route_type_refuses_other_operations(
    models_gateway: GatewayProcess, mock: MockProcess
) -> None:
    # gpt-image-1's route is image/v1/images/generations only.
    with pytest.raises(openai.NotFoundError) as refused:
        v1_client(models_gateway).chat.completions.create(
            model="gpt-image-1", messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.code == "operation_not_found"
    assert "image/v1/images/generations" in refused.value.message
    assert mock.requests() == []


# --- speech ----------------------------------------------------------------------------


def _mock_speech(mock: MockProcess, path: str, query: str) -> bytes:
    """What the mock sends for SPEECH when asked directly (its audio is deterministic)."""
    request = urllib.request.Request(
        f"{mock.url}{path}{query}",
        data=json.dumps(SPEECH).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "api-key": MockProcess.api_key},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
    return body


def test_v1_speech_streamed_to_a_file(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str, tmp_path: Path
) -> None:
    target = tmp_path / "speech.mp3"
    client = v1_client(models_gateway)
    with client.audio.speech.with_streaming_response.create(
        model="tts", voice="alloy", input=SPEECH["input"], extra_headers=rid(request_id)
    ) as response:
        assert response.headers["content-type"].startswith("audio/")
        response.stream_to_file(target)
    line = logged(
        models_gateway,
        request_id,
        route="tts",
        model="tts",
        deployment="tts",
        path="/openai/v1/audio/speech",
    )
    record = upstream_call(mock, path="/openai/v1/audio/speech", api_version=None, deployment="tts")
    assert body_model(record) == "tts"
    sent = _mock_speech(mock, "/openai/v1/audio/speech", "")
    assert len(sent) > 0 and target.read_bytes() == sent
    assert line["bytes_out"] >= len(sent)


def test_classic_speech_streamed_to_a_file(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str, tmp_path: Path
) -> None:
    target = tmp_path / "speech.mp3"
    client = azure_client(models_gateway)
    with client.audio.speech.with_streaming_response.create(
        model="tts", voice="alloy", input=SPEECH["input"], extra_headers=rid(request_id)
    ) as response:
        response.stream_to_file(target)
    logged(
        models_gateway,
        request_id,
        route="tts",
        model="tts",
        deployment="tts",
        path="/openai/deployments/tts/audio/speech",
    )
    path = "/openai/deployments/tts/audio/speech"
    upstream_call(mock, path=path, api_version=AZURE_API_VERSION, deployment="tts")
    assert target.read_bytes() == _mock_speech(mock, path, f"?api-version={AZURE_API_VERSION}")


async def test_async_speech_streamed_to_a_file(
    models_gateway: GatewayProcess, mock: MockProcess, tmp_path: Path
) -> None:
    target = tmp_path / "speech.mp3"
    async with (
        async_v1_client(models_gateway) as client,
        client.audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input=SPEECH["input"]
        ) as response,
    ):
        await response.stream_to_file(target)
    upstream_call(mock, path="/openai/v1/audio/speech", api_version=None, deployment="tts")
    assert target.read_bytes() == _mock_speech(mock, "/openai/v1/audio/speech", "")
