"""The openai SDK, sync, async and streaming, through aigw to the Azure mock."""

from __future__ import annotations

import json

import openai
from openai import AsyncAzureOpenAI, AzureOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.harness import GatewayProcess, MockProcess, wait_until

API_VERSION = "2025-01-01-preview"
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What model are you? Reply with only your model name."}
]


OPEN_CLIENTS: list[AzureOpenAI] = []
"""Closed after each test by ``conftest._close_clients`` (their pools hold sockets)."""


def sync_client(gateway: GatewayProcess, *, max_retries: int = 2) -> AzureOpenAI:
    client = AzureOpenAI(
        api_key="client-key-never-forwarded",
        azure_endpoint=gateway.url,
        api_version=API_VERSION,
        max_retries=max_retries,
    )
    OPEN_CLIENTS.append(client)
    return client


def async_client(gateway: GatewayProcess) -> AsyncAzureOpenAI:
    return AsyncAzureOpenAI(
        api_key="client-key-never-forwarded", azure_endpoint=gateway.url, api_version=API_VERSION
    )


def test_each_deployment_is_answered_by_its_own_route(
    gateway: GatewayProcess, mock: MockProcess
) -> None:
    client = sync_client(gateway)
    got = {
        model: client.chat.completions.create(model=model, messages=QUESTION).model
        for model in ("gpt-4o", "gpt-4.1-mini")
    }
    assert got == {"gpt-4o": "gpt-4o-2024-11-20", "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14"}
    paths = [r["path"] for r in mock.requests()]
    assert paths == [
        "/openai/deployments/gpt-4o/chat/completions",
        "/openai/deployments/gpt-4.1-mini/chat/completions",
    ]


def test_access_log_line_has_latency_tokens_and_models(
    gateway: GatewayProcess, request_id: str
) -> None:
    response = sync_client(gateway).chat.completions.create(
        model="gpt-4o", messages=QUESTION, extra_headers={"x-request-id": request_id}
    )
    line = gateway.access_log(request_id)
    assert response.usage is not None
    assert line["route"] == "azure-gpt-4o"
    assert line["status"] == 200
    assert line["method"] == "POST"
    assert line["path"] == "/openai/deployments/gpt-4o/chat/completions"
    assert line["provider"] == "azure"
    assert line["model"] == "gpt-4o"
    assert line["deployment"] == "gpt-4o"
    assert line["response_model"] == "gpt-4o-2024-11-20"
    assert line["prompt_tokens"] == response.usage.prompt_tokens
    assert line["completion_tokens"] == response.usage.completion_tokens
    assert line["total_tokens"] == response.usage.total_tokens
    assert line["api_version"] == API_VERSION
    assert line["latency_ms"] >= line["upstream_latency_ms"] > 0
    assert line["bytes_in"] > 0 and line["bytes_out"] > 0
    assert line["client"] == "127.0.0.1"
    assert "timestamp" in line


def test_request_id_is_echoed_or_generated(gateway: GatewayProcess, request_id: str) -> None:
    client = sync_client(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=QUESTION, extra_headers={"x-request-id": request_id}
    )
    assert raw.headers["x-request-id"] == request_id
    generated = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=QUESTION)
    assert len(generated.headers["x-request-id"]) == 32
    assert gateway.access_log(generated.headers["x-request-id"])["status"] == 200


def test_azure_response_headers_are_relayed(gateway: GatewayProcess) -> None:
    raw = sync_client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=QUESTION
    )
    headers = raw.headers
    assert headers["apim-request-id"]
    assert headers["x-ms-region"] == "Sweden Central"
    assert int(headers["x-ratelimit-remaining-requests"]) >= 0
    assert headers["x-aigw-llm-model"] == "azure/gpt-4o"
    assert "set-cookie" not in headers


async def test_async_client(gateway: GatewayProcess) -> None:
    client = async_client(gateway)
    response = await client.chat.completions.create(model="gpt-4.1-mini", messages=QUESTION)
    assert response.model == "gpt-4.1-mini-2025-04-14"
    assert response.choices[0].message.content
    await client.close()


def test_stream_with_usage_requested(gateway: GatewayProcess, request_id: str) -> None:
    stream = sync_client(gateway).chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-request-id": request_id},
    )
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "gpt-4o-2024-11-20" in text
    line = gateway.access_log(request_id)
    assert line["stream"] is True
    assert line["completion_tokens"] == usage_chunks[0].usage.completion_tokens  # type: ignore[union-attr]
    assert line["ttft_ms"] is not None and line["ttft_ms"] <= line["latency_ms"]
    assert line["response_model"] == "gpt-4o-2024-11-20"


def test_stream_without_usage_is_still_accounted(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    stream = sync_client(gateway).chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,
        stream=True,
        extra_headers={"x-request-id": request_id},
    )
    chunks = list(stream)
    # The client did not ask for usage, so it does not get the usage chunk...
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks[1:])  # only Azure's prompt-filter chunk has none
    # ...but aigw asked Azure for it and logged it.
    sent = json.loads(mock.requests()[-1]["body"])
    assert sent["stream_options"] == {"include_usage": True}
    line = gateway.access_log(request_id)
    assert line["completion_tokens"] > 0 and line["prompt_tokens"] > 0


async def test_async_stream(gateway: GatewayProcess) -> None:
    client = async_client(gateway)
    stream = await client.chat.completions.create(
        model="gpt-4.1-mini", messages=QUESTION, stream=True
    )
    text = ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert "gpt-4.1-mini-2025-04-14" in text
    await client.close()


def test_embeddings(gateway: GatewayProcess, request_id: str) -> None:
    result = sync_client(gateway).embeddings.create(
        model="text-embedding-3-small",
        input=["hello", "world"],
        extra_headers={"x-request-id": request_id},
    )
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    line = gateway.access_log(request_id)
    assert line["route"] == "embeddings"
    assert line["prompt_tokens"] == result.usage.prompt_tokens


def test_legacy_completions(gateway: GatewayProcess) -> None:
    result = sync_client(gateway).completions.create(model="gpt-35-turbo-instruct", prompt="Say hi")
    assert result.choices[0].text


def test_model_options_fill_in_defaults_but_never_override(
    gateway: GatewayProcess, mock: MockProcess
) -> None:
    client = sync_client(gateway)
    client.chat.completions.create(model="capped", messages=QUESTION)
    client.chat.completions.create(model="capped", messages=QUESTION, temperature=1.5)
    first, second = (json.loads(r["body"]) for r in mock.requests())
    assert (first["max_tokens"], first["temperature"]) == (3, 0.25)
    assert (second["max_tokens"], second["temperature"]) == (3, 1.5)


def test_upstream_errors_pass_through_unchanged(gateway: GatewayProcess) -> None:
    client = sync_client(gateway, max_retries=0)
    try:
        client.chat.completions.create(model="wrongkey", messages=QUESTION)
    except openai.AuthenticationError as exc:
        assert exc.code == "401"
        assert "Access denied due to invalid subscription key" in exc.message
    else:
        raise AssertionError("expected 401")
    try:
        client.chat.completions.create(model="nodeployment", messages=QUESTION)
    except openai.NotFoundError as exc:
        assert exc.code == "DeploymentNotFound"
    else:
        raise AssertionError("expected 404")


def test_rate_limit_passes_through_with_retry_after(
    gateway: GatewayProcess, mock: MockProcess
) -> None:
    mock.fault("status", status=429, retry_after=7, retry_after_ms=7000)
    client = sync_client(gateway, max_retries=0)
    try:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    except openai.RateLimitError as exc:
        assert exc.code == "429"
        assert exc.response.headers["retry-after"] == "7"
        assert exc.response.headers["retry-after-ms"] == "7000"
    else:
        raise AssertionError("expected 429")


def _pinned_client(gateway: GatewayProcess, api_version: str) -> AzureOpenAI:
    client = AzureOpenAI(
        api_key="client-key-never-forwarded", azure_endpoint=gateway.url, api_version=api_version
    )
    OPEN_CLIENTS.append(client)
    return client


def test_stream_on_an_api_version_without_stream_options(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    # LangChain and llama-index examples still pin 2024-02-01: Azure refuses
    # stream_options there, so aigw must not add it.
    stream = _pinned_client(gateway, "2024-02-01").chat.completions.create(
        model="gpt-4o", messages=QUESTION, stream=True, extra_headers={"x-request-id": request_id}
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "gpt-4o-2024-11-20" in text
    assert "stream_options" not in json.loads(mock.requests()[-1]["body"])
    line = gateway.access_log(request_id)
    assert (line["status"], line["outcome"], line["api_version"]) == (200, "ok", "2024-02-01")
    assert line["completion_tokens"] is None
    assert line["usage_unavailable"] == "api_version"


def test_stream_on_the_first_ga_api_version_with_stream_options(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    stream = _pinned_client(gateway, "2024-10-21").chat.completions.create(
        model="gpt-4o", messages=QUESTION, stream=True, extra_headers={"x-request-id": request_id}
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # not asked for: hidden from the client
    sent = json.loads(mock.requests()[-1]["body"])
    assert sent["stream_options"] == {"include_usage": True}
    line = gateway.access_log(request_id)
    assert line["completion_tokens"] > 0
    assert "usage_unavailable" not in line


def test_retries_and_upstream_errors_are_visible_in_the_access_log(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    mock.fault("status", status=429, retry_after_ms=10, count=1)
    client = sync_client(gateway, max_retries=1)
    client.chat.completions.create(
        model="gpt-4o", messages=QUESTION, extra_headers={"x-request-id": request_id}
    )
    gateway.access_log(request_id)

    def both() -> list[dict[str, object]] | None:
        lines = [
            e
            for e in gateway.events()
            if e.get("event") == "request" and e.get("request_id") == request_id
        ]
        return lines if len(lines) == 2 else None

    first, retry = wait_until(both)
    assert (first["status"], first["outcome"], first["upstream_status"]) == (
        429,
        "upstream_error",
        429,
    )
    assert (first["retry_count"], retry["retry_count"]) == (0, 1)
    assert (retry["status"], retry["outcome"]) == (200, "ok")
    assert str(first["user_agent"]).startswith("AzureOpenAI/Python ")
    assert first["level"] == "info"


def test_upstream_5xx_is_logged_as_a_warning(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    mock.fault("status", status=503, count=1)
    client = sync_client(gateway, max_retries=0)
    try:
        client.chat.completions.create(
            model="gpt-4o", messages=QUESTION, extra_headers={"x-request-id": request_id}
        )
    except openai.InternalServerError:
        pass
    else:
        raise AssertionError("expected 503")
    line = gateway.access_log(request_id)
    assert (line["level"], line["outcome"], line["upstream_status"]) == (
        "warning",
        "upstream_error",
        503,
    )
