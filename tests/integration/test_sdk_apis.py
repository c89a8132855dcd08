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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import GATEWAY_ENV
from tests.integration.harness import REPO, GatewayProcess, MockProcess, wait_until
from tests.integration.test_sdk_v1 import (
    AZURE_API_VERSION,
    assert_tokens,
    async_azure_client,
    async_v1_client,
    azure_client,
    body_model,
    close_sdk_clients,
    logged,
    models_gateway,
    rid,
    upstream_call,
    v1_client,
)

# The shared fixtures, imported for pytest to find.
__all__ = ["close_sdk_clients", "models_gateway"]

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


async def test_async_classic_images_generate(
    models_gateway: GatewayProcess, mock: MockProcess
) -> None:
    async with async_azure_client(models_gateway) as client:
        result = await client.images.generate(model="dall-e-3", prompt="a lighthouse")
    assert len(result.data or []) == 1
    upstream_call(
        mock,
        path="/openai/deployments/dall-e-3/images/generations",
        api_version=AZURE_API_VERSION,
        deployment="dall-e-3",
    )


async def test_async_v1_images_generate(models_gateway: GatewayProcess, mock: MockProcess) -> None:
    async with async_v1_client(models_gateway) as client:
        result = await client.images.generate(model="dall-e-3", prompt="a lighthouse")
    assert len(result.data or []) == 1
    record = upstream_call(
        mock, path="/openai/v1/images/generations", api_version=None, deployment="dall-e-3"
    )
    assert body_model(record) == "dall-e-3"


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


async def test_async_v1_speech_streamed_to_a_file(
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


async def test_async_classic_speech_streamed_to_a_file(
    models_gateway: GatewayProcess, mock: MockProcess, tmp_path: Path
) -> None:
    target = tmp_path / "speech.mp3"
    path = "/openai/deployments/tts/audio/speech"
    async with (
        async_azure_client(models_gateway) as client,
        client.audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input=SPEECH["input"]
        ) as response,
    ):
        await response.stream_to_file(target)
    upstream_call(mock, path=path, api_version=AZURE_API_VERSION, deployment="tts")
    assert target.read_bytes() == _mock_speech(mock, path, f"?api-version={AZURE_API_VERSION}")


# --- the shipped examples --------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_gateway(mock: MockProcess) -> Iterator[GatewayProcess]:
    """aigw serving the repository's conf.d (the demo's), against the mock."""
    process = GatewayProcess(REPO / "conf.d", "--azure-base-url", mock.url, env=GATEWAY_ENV)
    yield process
    process.close()


def _realtime_turn(client: OpenAI, model: str) -> int:
    """One text turn of a realtime session; the tokens its ``response.done`` reports."""
    with client.realtime.connect(model=model) as connection:
        connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Say hello"}],
            }
        )
        connection.response.create(response={"output_modalities": ["text"]})
        for event in connection:
            if event.type == "response.done":
                usage = event.response.usage
                assert usage is not None and usage.total_tokens
                return usage.total_tokens
    raise AssertionError("the session ended without response.done")


# The openai SDK's sync realtime client calls websockets' connect() the old way.
@pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)
def test_every_shipped_example_serves_its_api(
    shipped_gateway: GatewayProcess, mock: MockProcess, tmp_path: Path
) -> None:
    client = v1_client(shipped_gateway)
    chat = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.model == "gpt-4o-2024-11-20"
    answer = azure_client(shipped_gateway).responses.create(model="gpt-4.1-mini", input="hi")
    assert answer.output_text and answer.usage is not None
    images = client.images.generate(model="dall-e-3", prompt="a lighthouse")
    assert len(images.data or []) == 1
    with client.audio.speech.with_streaming_response.create(
        model="tts", voice="alloy", input="hello"
    ) as speech:
        speech.stream_to_file(tmp_path / "speech.mp3")
    assert (tmp_path / "speech.mp3").stat().st_size > 0
    text = client.audio.transcriptions.create(
        model="whisper", file=("talk.wav", b"RIFF" + bytes(4096), "audio/wav")
    )
    assert text.text
    assert _realtime_turn(client, "gpt-4o-realtime-preview") > 0

    shipped = {yaml_route_name(path.read_text()) for path in (REPO / "conf.d").glob("*.yaml")}

    def lines() -> dict[str, dict[str, Any]]:
        return {e["route"]: e for e in shipped_gateway.events() if e.get("event") == "request"}

    # The realtime session's line is written when it closes: the last one to come.
    wait_until(lambda: "azure-gpt-4o-realtime" in lines())
    seen = lines()
    # Every shipped file served a call (a new example must be added above), with tokens
    # where the API has them.
    assert set(seen) == shipped
    assert {route: line["status"] for route, line in seen.items()} == {
        route: 101 if "realtime" in route else 200 for route in shipped
    }
    for route in ("azure-gpt-4o", "azure-gpt-4-1-mini", "azure-gpt-4o-realtime"):
        assert seen[route]["total_tokens"] > 0, route
    assert {r["deployment"] for r in mock.requests()} >= {
        "gpt-4o",
        "gpt-4.1-mini",
        "dall-e-3",
        "tts",
        "whisper",
    }


def yaml_route_name(text: str) -> str:
    """A route file's ``route.name`` (the shipped files spell it on one line)."""
    [name] = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("  name:")]
    return name
