"""The Azure mock's media APIs: images, text to speech (chunked binary), and multipart
transcriptions, translations and image edits."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from aigw.testing.azure_mock import MockConfig, build_app
from aigw.testing.azure_mock.media_wire import png_b64

Client = TestClient[web.Request, web.Application]

KEY = "test-key"
AUTH = {"api-key": KEY}
VERSION = "2025-04-01-preview"


def classic(deployment: str, suffix: str) -> str:
    return f"/openai/deployments/{deployment}/{suffix}?api-version={VERSION}"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(build_app(MockConfig(api_key=KEY)))


async def post(client: Client, path: str, body: Any) -> aiohttp.ClientResponse:
    return await client.post(path, data=json.dumps(body), headers=AUTH)


async def records(client: Client) -> list[dict[str, Any]]:
    resp = await client.get("/_mock/requests", params={"settle_ms": "500"})
    data: list[dict[str, Any]] = await resp.json()
    return data


async def settings(client: Client, **values: Any) -> aiohttp.ClientResponse:
    return await client.post("/_mock/settings", json=values)


# ---------------------------------------------------------------- images


async def test_dalle3_url_and_b64(client: Client) -> None:
    resp = await post(client, classic("dall-e-3", "images/generations"), {"prompt": "a cat"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    (item,) = body["data"]
    assert item["url"].startswith("https://") and item["revised_prompt"]
    assert "usage" not in body and isinstance(body["created"], int)
    body = await (
        await post(
            client,
            "/openai/v1/images/generations",
            {"model": "dall-e-3", "prompt": "a cat", "response_format": "b64_json"},
        )
    ).json()
    png = base64.b64decode(body["data"][0]["b64_json"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


async def test_gpt_image_has_usage(client: Client) -> None:
    body = {"model": "gpt-image-1", "prompt": "two small cats", "n": 2, "quality": "low"}
    resp = await post(client, "/openai/v1/images/generations", body)
    data = await resp.json()
    assert len(data["data"]) == 2 and "b64_json" in data["data"][0]
    assert data["usage"] == {
        "input_tokens": 3,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 3},
        "output_tokens": 544,
        "total_tokens": 547,
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "prompt"), ({"prompt": "x", "n": 2}, "n"), ({"prompt": "x", "size": "1x1"}, "size")],
)
async def test_images_bad_input(client: Client, body: dict[str, Any], param: str) -> None:
    resp = await post(client, classic("dall-e-3", "images/generations"), body)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param


async def test_images_on_a_chat_deployment_is_refused(client: Client) -> None:
    resp = await post(client, classic("gpt-4o", "images/generations"), {"prompt": "x"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "OperationNotSupported"


async def test_images_fault(client: Client) -> None:
    await client.post("/_mock/faults", json={"fault": "status", "status": 429})
    resp = await post(client, classic("dall-e-3", "images/generations"), {"prompt": "x"})
    assert resp.status == 429
    assert "ImageGenerations_Create" in (await resp.json())["error"]["message"]


# ---------------------------------------------------------------- speech

SPEECH = {"model": "tts", "input": "hello there", "voice": "alloy"}


async def test_speech_is_chunked_audio(client: Client) -> None:
    await settings(client, speech_bytes=40_000, speech_chunk_bytes=10_000)
    resp = await post(client, classic("tts", "audio/speech"), SPEECH)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/mpeg"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    audio = await resp.read()
    assert len(audio) == 40_000 and audio.startswith(b"ID3")
    again = await (await post(client, "/openai/v1/audio/speech", SPEECH)).read()
    assert again == audio
    resp = await post(client, "/openai/v1/audio/speech", {**SPEECH, "response_format": "wav"})
    assert resp.headers["Content-Type"] == "audio/wav"
    assert (await resp.read()).startswith(b"RIFF")


async def test_speech_pieces_arrive_over_time(client: Client) -> None:
    await settings(client, speech_bytes=4 * 1000, speech_chunk_bytes=1000)
    await settings(client, speech_chunk_delay_ms=150)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await post(client, classic("tts", "audio/speech"), SPEECH)
    arrivals = []
    async for piece in resp.content.iter_any():
        arrivals.append((loop.time() - started, len(piece)))
    assert sum(size for _, size in arrivals) == 4000
    # The first piece long before the last: it was streamed, not buffered.
    assert arrivals[-1][0] - arrivals[0][0] >= 0.3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "voice"),
        ({"voice": "alloy"}, "input"),
        ({**SPEECH, "response_format": "ogg"}, "response_format"),
        ({**SPEECH, "input": "x" * 4097}, "input"),
        ({**SPEECH, "speed": 9}, "speed"),
    ],
)
async def test_speech_bad_input(client: Client, body: dict[str, Any], param: str) -> None:
    resp = await post(client, classic("tts", "audio/speech"), body)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param


async def test_speech_faults(client: Client) -> None:
    await client.post("/_mock/faults", json={"fault": "status", "status": 503})
    resp = await post(client, classic("tts", "audio/speech"), SPEECH)
    assert resp.status == 503
    await client.post("/_mock/faults", json={"fault": "delay", "latency_ms": 300})
    started = asyncio.get_running_loop().time()
    resp = await post(client, classic("tts", "audio/speech"), SPEECH)
    assert resp.status == 200
    assert asyncio.get_running_loop().time() - started >= 0.3


@pytest.mark.parametrize(
    "values",
    [{"speech_bytes": 0}, {"nope": 1}, {"speech_bytes": 1.5}, {"speech_chunk_delay_ms": True}],
)
async def test_settings_are_checked(client: Client, values: dict[str, Any]) -> None:
    before = await (await client.get("/_mock/settings")).json()
    resp = await settings(client, **values)
    assert resp.status == 400
    assert await (await client.get("/_mock/settings")).json() == before


async def test_openai_sdk_images_and_speech(client: Client, tmp_path: Any) -> None:
    port = client.server.port
    azure = openai.AsyncAzureOpenAI(
        api_key=KEY,
        azure_endpoint=f"http://127.0.0.1:{port}",
        api_version=VERSION,
        max_retries=0,
    )
    async with azure:
        image = await azure.images.generate(model="dall-e-3", prompt="a cat")
        assert image.data and image.data[0].url
        async with azure.audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input="hello"
        ) as speech:
            target = tmp_path / "speech.mp3"
            await speech.stream_to_file(target)
    assert target.stat().st_size == 48_000
    seen = [(r["path"], r["operation"], r["deployment"]) for r in await records(client)]
    assert seen == [
        ("/openai/deployments/dall-e-3/images/generations", "images", "dall-e-3"),
        ("/openai/deployments/tts/audio/speech", "speech", "tts"),
    ]


# ---------------------------------------------------------------- multipart


def form(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        data.add_field(name, value)
    for name, (filename, content) in files.items():
        data.add_field(name, content, filename=filename, content_type="audio/wav")
    return data


AUDIO = {"file": ("hello.wav", b"RIFF" + b"\x00" * 31_996)}


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        (classic("whisper", "audio/transcriptions"), {}),
        ("/openai/v1/audio/transcriptions", {"model": "whisper"}),
    ],
)
async def test_transcription_json(client: Client, path: str, fields: dict[str, str]) -> None:
    resp = await client.post(path, data=form(fields, AUDIO), headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"text": "I am whisper-001. The quick brown fox"}
    (record,) = await records(client)
    assert record["operation"] == "transcriptions" and record["deployment"] == "whisper"
    assert record["file_bytes"] == 32_000
    assert record["form"] == fields
    assert record["body_size"] > 32_000 and record["body"] == ""


async def test_gpt4o_transcribe_has_usage_and_only_json_or_text(client: Client) -> None:
    path = "/openai/v1/audio/transcriptions"
    fields = {"model": "gpt-4o-transcribe", "prompt": "two words"}
    body = await (await client.post(path, data=form(fields, AUDIO), headers=AUTH)).json()
    assert body["usage"] == {
        "type": "tokens",
        "input_tokens": 34,
        "input_token_details": {"text_tokens": 2, "audio_tokens": 32},
        "output_tokens": 8,
        "total_tokens": 42,
    }
    fields["response_format"] = "srt"
    resp = await client.post(path, data=form(fields, AUDIO), headers=AUTH)
    assert resp.status == 400
    assert "Use 'json' or 'text' instead" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("text", "I am whisper-001. The quick brown fox\n"),
        ("srt", "1\n00:00:00,000 --> 00:00:02,000\nI am whisper-001. The quick brown fox\n\n"),
        (
            "vtt",
            "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nI am whisper-001. The quick brown fox\n\n",
        ),
    ],
)
async def test_transcription_text_formats(client: Client, fmt: str, expected: str) -> None:
    path = classic("whisper", "audio/translations")
    resp = await client.post(path, data=form({"response_format": fmt}, AUDIO), headers=AUTH)
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert await resp.text() == expected


async def test_translation_verbose_json(client: Client) -> None:
    path = classic("whisper", "audio/translations")
    data = form({"response_format": "verbose_json"}, AUDIO)
    body = await (await client.post(path, data=data, headers=AUTH)).json()
    assert body["task"] == "translate" and body["duration"] == 2.0
    assert body["segments"][0]["text"] == body["text"]


async def test_transcription_bad_input(client: Client) -> None:
    path = classic("whisper", "audio/transcriptions")
    resp = await client.post(path, data=form({"language": "en"}, {}), headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "file"
    resp = await client.post(path, json={"file": "x"}, headers=AUTH)
    assert resp.status == 400
    assert "expected multipart/form-data" in (await resp.json())["error"]["message"]
    resp = await client.post("/openai/v1/audio/transcriptions", data=form({}, AUDIO), headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "you must provide a model parameter"
    path = classic("nope", "audio/transcriptions")
    resp = await client.post(path, data=form({}, AUDIO), headers=AUTH)
    assert resp.status == 404
    resp = await client.post(
        classic("gpt-4o", "audio/transcriptions"), data=form({}, AUDIO), headers=AUTH
    )
    assert (await resp.json())["error"]["code"] == "OperationNotSupported"


async def test_transcription_fault(client: Client) -> None:
    await client.post("/_mock/faults", json={"fault": "status", "status": 429})
    path = classic("whisper", "audio/transcriptions")
    resp = await client.post(path, data=form({}, AUDIO), headers=AUTH)
    assert resp.status == 429
    assert "Transcriptions_Create" in (await resp.json())["error"]["message"]


async def test_image_edits(client: Client) -> None:
    image = {"image": ("cat.png", base64.b64decode(png_b64()))}
    fields = {"model": "gpt-image-1", "prompt": "add a hat", "quality": "low"}
    resp = await client.post("/openai/v1/images/edits", data=form(fields, image), headers=AUTH)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["usage"]["input_tokens_details"]["image_tokens"] == 194
    resp = await client.post("/openai/v1/images/edits", data=form(fields, {}), headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "image"
    (first, _) = await records(client)
    assert first["operation"] == "image_edits" and first["file_bytes"] == len(image["image"][1])


def _sync_transcribe(port: int, audio: bytes) -> str:
    sdk = openai.OpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{port}/openai/v1/", max_retries=0)
    with sdk:
        result = sdk.audio.transcriptions.create(model="whisper", file=("big.wav", audio))
    return result.text


async def test_openai_sdk_transcriptions_of_a_multi_mib_file(client: Client) -> None:
    audio = b"RIFF" + bytes(range(256)) * (3 * 4096)
    port = client.server.port
    assert port is not None
    text = await asyncio.to_thread(_sync_transcribe, port, audio)
    assert text == "I am whisper-001. The quick brown fox"
    azure = openai.AsyncAzureOpenAI(
        api_key=KEY, azure_endpoint=f"http://127.0.0.1:{port}", api_version=VERSION
    )
    async with azure:
        plain = await azure.audio.transcriptions.create(
            model="whisper", file=("big.wav", audio), response_format="text"
        )
    assert plain.strip() == text
    sdk_v1, sdk_classic = await records(client)
    assert sdk_v1["file_bytes"] == sdk_classic["file_bytes"] == len(audio)
    assert sdk_v1["form"]["model"] == "whisper"
    assert sdk_classic["path"] == "/openai/deployments/whisper/audio/transcriptions"
