"""The openai SDK's other Azure APIs through model routes: images (classic and v1) and text
to speech (binary audio streamed to a file), sync and async, each with both clients.

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
from tests.integration.realtime_turns import text_turn
from tests.integration.test_sdk_v1 import (
    AZURE_API_VERSION,
    ClientStyle,
    assert_tokens,
    azure_client,
    body_model,
    both_styles,
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


@pytest.mark.parametrize(
    ("style", "path"),
    both_styles("/openai/v1/images/generations", "/openai/deployments/dall-e-3/images/generations"),
)
async def test_async_images_generate(
    models_gateway: GatewayProcess, mock: MockProcess, style: ClientStyle, path: str
) -> None:
    async with style.asynchronous(models_gateway) as client:
        result = await client.images.generate(model="dall-e-3", prompt="a lighthouse")
    assert len(result.data or []) == 1
    record = upstream_call(mock, path=path, api_version=style.api_version, deployment="dall-e-3")
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


SPEECH_PATHS = both_styles("/openai/v1/audio/speech", "/openai/deployments/tts/audio/speech")


def _speech_query(style: ClientStyle) -> str:
    return f"?api-version={style.api_version}" if style.api_version else ""


@pytest.mark.parametrize(("style", "path"), SPEECH_PATHS)
def test_speech_streamed_to_a_file(
    models_gateway: GatewayProcess,
    mock: MockProcess,
    request_id: str,
    tmp_path: Path,
    style: ClientStyle,
    path: str,
) -> None:
    target = tmp_path / "speech.mp3"
    client = style.sync(models_gateway)
    with client.audio.speech.with_streaming_response.create(
        model="tts", voice="alloy", input=SPEECH["input"], extra_headers=rid(request_id)
    ) as response:
        assert response.headers["content-type"].startswith("audio/")
        response.stream_to_file(target)
    line = logged(models_gateway, request_id, route="tts", model="tts", deployment="tts", path=path)
    record = upstream_call(mock, path=path, api_version=style.api_version, deployment="tts")
    assert body_model(record) == "tts"
    sent = _mock_speech(mock, path, _speech_query(style))
    assert len(sent) > 0 and target.read_bytes() == sent
    assert line["bytes_out"] >= len(sent)


@pytest.mark.parametrize(("style", "path"), SPEECH_PATHS)
async def test_async_speech_streamed_to_a_file(
    models_gateway: GatewayProcess,
    mock: MockProcess,
    tmp_path: Path,
    style: ClientStyle,
    path: str,
) -> None:
    target = tmp_path / "speech.mp3"
    async with (
        style.asynchronous(models_gateway) as client,
        client.audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input=SPEECH["input"]
        ) as response,
    ):
        await response.stream_to_file(target)
    upstream_call(mock, path=path, api_version=style.api_version, deployment="tts")
    assert target.read_bytes() == _mock_speech(mock, path, _speech_query(style))


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
        _, usage = text_turn(connection, {"output_modalities": ["text"]})
    assert usage.total_tokens
    return usage.total_tokens


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
