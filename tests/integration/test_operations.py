"""Per-operation forwarding, end to end: a real ``aigw serve`` in front of the bundled mock.

What the mock records is what Azure would see: the upstream path and api-version keep
the client's API style (v1: the client's path, no version unless it sent one; classic:
the deployment path or ``/openai/responses`` with a version), the body's ``model``
names the target's deployment when the client named it by another name, each pool
attempt names its own; usage of every operation reaches the access log in chat's
names; speech reaches the client piece by piece.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from openai import AzureOpenAI, OpenAI

from tests.integration.conftest import GATEWAY_ENV, route_yaml
from tests.integration.harness import GatewayProcess, MockProcess, model_route_file, serve_routes

CLIENT_KEY = "client-key-never-forwarded"


def model_route(name: str, models: list[str], targets: list[str], *, balancer: str = "") -> str:
    """A model route (``route_type`` left out: ``auto``), one target per deployment."""
    config = [f"balancer: {balancer}"] if balancer else []
    return model_route_file(name, models, targets, instance="region{index}", config=config)


MODEL_ROUTES = {
    # The application's names differ from the deployments': the body must be rewritten.
    "chatty.yaml": model_route("chatty", ["chatty"], ["gpt-4o"]),
    "painter.yaml": model_route("painter", ["painter"], ["dall-e-3"]),
    "voice.yaml": model_route("voice", ["voice"], ["tts"]),
    "ears.yaml": model_route("ears", ["ears"], ["whisper"]),
    "pooled.yaml": model_route(
        "pooled", ["pooled"], ["gpt-4o", "gpt-4.1-mini"], balancer="{algorithm: round-robin}"
    ),
}


@pytest.fixture(scope="module")
def models_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("operations-models")
    with serve_routes(conf, MODEL_ROUTES, "--azure-base-url", mock.url, env=GATEWAY_ENV) as process:
        yield process


@pytest.fixture(scope="module")
def paths_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess
) -> Iterator[GatewayProcess]:
    # No model route here: /openai/responses is then an ordinary path a route may claim.
    conf: Path = tmp_path_factory.mktemp("operations-paths")
    responses = route_yaml(
        "responses",
        "/openai/responses",
        model="gpt-4o",
        deployment="gpt-4o",
        route_type="llm/v1/responses",
    )
    files = {"responses.yaml": responses}
    with serve_routes(conf, files, "--azure-base-url", mock.url, env=GATEWAY_ENV) as process:
        yield process


@contextmanager
def _post(
    gateway: GatewayProcess, path: str, body: dict[str, Any], **headers: str
) -> Iterator[http.client.HTTPResponse]:
    """A POST through aigw whose answer is read by the caller (as it arrives)."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        connection.request(
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "api-key": CLIENT_KEY, **headers},
        )
        yield connection.getresponse()
    finally:
        connection.close()


def _last(mock: MockProcess, path: str) -> dict[str, Any]:
    records = [r for r in mock.requests() if r["path"] == path]
    assert records, f"the mock saw nothing at {path}"
    return records[-1]


def _tokens(line: dict[str, Any]) -> tuple[Any, Any, Any]:
    return line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]


def _v1(gateway: GatewayProcess) -> OpenAI:
    return OpenAI(
        base_url=f"http://127.0.0.1:{gateway.port}/openai/v1/", api_key=CLIENT_KEY, max_retries=0
    )


def _azure(gateway: GatewayProcess, api_version: str) -> AzureOpenAI:
    return AzureOpenAI(
        azure_endpoint=f"http://127.0.0.1:{gateway.port}",
        api_key=CLIENT_KEY,
        api_version=api_version,
        max_retries=0,
    )


def test_path_route_of_route_type_responses(
    paths_gateway: GatewayProcess, mock: MockProcess
) -> None:
    client = _azure(paths_gateway, "2025-03-01-preview")
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="Say hi.")
    response = raw.parse()
    assert response.output_text
    seen = _last(mock, "/openai/responses")
    assert seen["query"] == {"api-version": "2025-03-01-preview"}
    assert seen["headers"]["api-key"] == mock.api_key  # the client's key never crossed
    line = paths_gateway.access_log(raw.headers["x-request-id"])
    usage = response.usage
    assert usage is not None
    assert _tokens(line) == (usage.input_tokens, usage.output_tokens, usage.total_tokens)
    assert line["prompt_tokens"] > 0


def test_path_route_responses_stream_usage_and_default_version(
    paths_gateway: GatewayProcess, mock: MockProcess
) -> None:
    # Without the client's api-version, the first version that knows Responses.
    with _post(
        paths_gateway, "/openai/responses", {"model": "gpt-4o", "input": "Say hi.", "stream": True}
    ) as answer:
        lines = answer.read().decode().splitlines()
    events = [line for line in lines if line.startswith("event:")]
    request_id = answer.headers["x-request-id"]
    assert answer.status == 200 and events[-1] == "event: response.completed"
    assert _last(mock, "/openai/responses")["query"] == {"api-version": "2025-04-01-preview"}
    line = paths_gateway.access_log(request_id)
    assert line["stream"] is True and line["outcome"] == "ok"
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0


def test_v1_responses_keep_the_v1_path_and_name_the_deployment(
    models_gateway: GatewayProcess, mock: MockProcess
) -> None:
    raw = _v1(models_gateway).responses.with_raw_response.create(model="chatty", input="Hi.")
    response = raw.parse()
    seen = _last(mock, "/openai/v1/responses")
    assert seen["query"] == {}  # the v1 API needs no api-version; none was sent
    assert json.loads(seen["body"])["model"] == "gpt-4o" and seen["deployment"] == "gpt-4o"
    line = models_gateway.access_log(raw.headers["x-request-id"])
    assert (line["route"], line["status"]) == ("chatty", 200)
    assert response.usage is not None and line["completion_tokens"] == response.usage.output_tokens


def test_v1_responses_stream_counts_usage(models_gateway: GatewayProcess) -> None:
    raw = _v1(models_gateway).responses.with_raw_response.create(
        model="chatty", input="Hi.", stream=True
    )
    kinds = [event.type for event in raw.parse()]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    line = models_gateway.access_log(raw.headers["x-request-id"])
    assert line["stream"] is True and line["prompt_tokens"] > 0 and line["completion_tokens"] > 0


def test_auto_route_classic_images_path(models_gateway: GatewayProcess, mock: MockProcess) -> None:
    client = _azure(models_gateway, "2024-10-21")
    raw = client.images.with_raw_response.generate(model="painter", prompt="a red cube")
    assert raw.parse().data
    # The classic path goes to the target's deployment, with the client's version.
    seen = _last(mock, "/openai/deployments/dall-e-3/images/generations")
    assert seen["query"] == {"api-version": "2024-10-21"}
    line = models_gateway.access_log(raw.headers["x-request-id"])
    assert (line["route"], line["status"]) == ("painter", 200)


def test_auto_route_refuses_a_deployment_path_of_no_operation(
    models_gateway: GatewayProcess,
) -> None:
    with _post(
        models_gateway,
        "/openai/deployments/painter/images/variations",
        {"model": "painter", "prompt": "x"},
    ) as answer:
        assert answer.status == 404
        error = json.loads(answer.read())["error"]
        assert error["code"] == "route_not_found"
        assert "model route `painter` serves /openai/deployments/{model}/" in error["message"]


def test_v1_upload_names_the_deployment_in_its_form(
    models_gateway: GatewayProcess, mock: MockProcess
) -> None:
    audio = b"RIFF" + bytes(64 * 1024)
    raw = _v1(models_gateway).audio.transcriptions.with_raw_response.create(
        model="ears", file=("hello.wav", audio, "audio/wav")
    )
    assert raw.parse().text
    seen = _last(mock, "/openai/v1/audio/transcriptions")
    assert seen["form"]["model"] == "whisper" and seen["file_bytes"] == len(audio)
    line = models_gateway.access_log(raw.headers["x-request-id"])
    assert (line["route"], line["status"]) == ("ears", 200)


def test_pool_model_route_names_each_targets_deployment(
    models_gateway: GatewayProcess, mock: MockProcess
) -> None:
    client = _v1(models_gateway)
    before = len(mock.requests())
    for _ in range(2):
        client.chat.completions.create(
            model="pooled", messages=[{"role": "user", "content": "Hi."}]
        )
    sent = [
        json.loads(r["body"])["model"]
        for r in mock.requests()[before:]
        if r["path"] == "/openai/v1/chat/completions"
    ]
    assert sorted(sent) == ["gpt-4.1-mini", "gpt-4o"]  # round robin: each its own deployment


def test_speech_reaches_the_client_piece_by_piece(
    models_gateway: GatewayProcess, mock: MockProcess
) -> None:
    # Three pieces a second apart: relayed as they come, the first is heard at once.
    mock.settings(speech_bytes=3 * 4096, speech_chunk_bytes=4096, speech_chunk_delay_ms=1000)
    try:
        first: float | None = None
        received = 0
        started = time.monotonic()
        with _post(
            models_gateway,
            "/openai/v1/audio/speech",
            {"model": "voice", "input": "Hello there.", "voice": "alloy"},
            Authorization=f"Bearer {CLIENT_KEY}",
        ) as answer:
            assert answer.status == 200
            assert answer.headers["content-type"].startswith("audio/")
            while piece := answer.read1():
                first = first if first is not None else time.monotonic()
                received += len(piece)
        last = time.monotonic()
    finally:
        mock.settings(speech_bytes=48_000, speech_chunk_bytes=8_192, speech_chunk_delay_ms=5)
    assert received == 3 * 4096
    assert first is not None
    # Held for a second piece (or whole), the first byte would wait >= 1 s (or 2 s).
    assert first - started < 0.7
    assert last - first > 1.5
    assert json.loads(_last(mock, "/openai/v1/audio/speech")["body"])["model"] == "tts"
