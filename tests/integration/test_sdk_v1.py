"""The openai SDK's v1 client (``OpenAI(base_url=<aigw>/openai/v1/)``) through model routes.

On the v1 API the deployment is not in the path but in the body's ``model``: aigw picks
the route by it (one file per deployment, ``route.models``), sends the call on to
``{base}/openai/v1/…`` with no api-version, with the body's ``model`` set to the route's
``azure_deployment_id`` and the route's key in place of the client's (sent both as
``Authorization: Bearer`` and as ``api-key``). Each test asserts what the SDK got back,
the access-log line (route, model, deployment, path, tokens), and what reached the mock.
Responses runs with the classic client too (``/openai/responses?api-version=…``).

The route files, the gateway and the client helpers here are shared with
``test_sdk_apis.py`` (images and speech). A test run on both clients (``both_styles``)
takes a ``ClientStyle``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI, AzureOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import GATEWAY_ENV
from tests.integration.harness import GatewayProcess, MockProcess, model_route_file, serve_routes

CLIENT_KEY = "client-key-never-forwarded"
"""What the application holds: sent by the SDK, never to reach Azure."""

AZURE_API_VERSION = "2025-04-01-preview"
"""The classic client's api-version: the first that knows Responses."""

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What model are you? Reply with only your model name."}
]

SNAPSHOTS = {"gpt-4o": "gpt-4o-2024-11-20", "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14"}
"""The mock's deployment -> the model snapshot it reports."""


PRESERVE_ROUTE = """route:
  name: openai-passthrough
  paths: [/openai/*]
  methods: [GET, DELETE]
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: preserve
          auth:
            header_name: api-key
            header_value: ${AZURE_OPENAI_KEY}
          model:
            provider: azure
            options:
              upstream_url: {upstream}/
"""
"""What no model route claims (models list, stored responses) goes through unchanged, to
``{upstream}`` (the client's path kept)."""

ROUTE_FILES = {
    "gpt-4o.yaml": model_route_file("gpt-4o", ["gpt-4o"], ["gpt-4o"]),
    # A name of the application's own for another deployment: the body's model is rewritten.
    "my-chat.yaml": model_route_file("my-chat", ["my-chat"], ["gpt-4.1-mini"]),
    "embeddings.yaml": model_route_file(
        "embeddings", ["text-embedding-3-small"], ["text-embedding-3-small"]
    ),
    "dall-e-3.yaml": model_route_file("dall-e-3", ["dall-e-3"], ["dall-e-3"]),
    "gpt-image-1.yaml": model_route_file(
        "gpt-image-1", ["gpt-image-1"], ["gpt-image-1"], route_type="image/v1/images/generations"
    ),
    "tts.yaml": model_route_file("tts", ["tts"], ["tts"], route_type="audio/v1/audio/speech"),
}
"""Model routes (each on every model-in-body API and its classic deployment paths),
forwarded with the mock's key; without a route_type the target is ``auto``."""


@pytest.fixture(scope="session")
def models_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess
) -> Iterator[GatewayProcess]:
    """aigw serving only model routes (and the pass-through), against the mock."""
    files = {**ROUTE_FILES, "passthrough.yaml": PRESERVE_ROUTE.replace("{upstream}", mock.url)}
    conf = tmp_path_factory.mktemp("models-conf.d")
    with serve_routes(conf, files, "--azure-base-url", mock.url, env=GATEWAY_ENV) as process:
        yield process


_OPEN: list[OpenAI | AzureOpenAI] = []


@pytest.fixture(autouse=True)
def close_sdk_clients() -> Iterator[None]:
    """Closes the sync clients a test opened (their pools hold sockets)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def _v1_options(gateway: GatewayProcess) -> dict[str, Any]:
    return {
        "base_url": f"{gateway.url}/openai/v1/",
        "api_key": CLIENT_KEY,
        "default_headers": {"api-key": CLIENT_KEY},
        "max_retries": 0,
        "timeout": 20,
    }


def _azure_options(gateway: GatewayProcess) -> dict[str, Any]:
    return {
        "api_key": CLIENT_KEY,
        "azure_endpoint": gateway.url,
        "api_version": AZURE_API_VERSION,
        "max_retries": 0,
        "timeout": 20,
    }


def v1_client(gateway: GatewayProcess) -> OpenAI:
    """The client Microsoft recommends: v1 base URL, the key as a Bearer token (and,
    as some applications do, also as ``api-key``)."""
    client = OpenAI(**_v1_options(gateway))
    _OPEN.append(client)
    return client


def async_v1_client(gateway: GatewayProcess) -> AsyncOpenAI:
    return AsyncOpenAI(**_v1_options(gateway))


def azure_client(gateway: GatewayProcess) -> AzureOpenAI:
    """The classic client: ``api-key`` header, dated api-version."""
    client = AzureOpenAI(**_azure_options(gateway))
    _OPEN.append(client)
    return client


def async_azure_client(gateway: GatewayProcess) -> AsyncAzureOpenAI:
    return AsyncAzureOpenAI(**_azure_options(gateway))


@dataclass(frozen=True)
class ClientStyle:
    """One of the two ways the SDK reaches a model route, for a test run on both."""

    sync: Callable[[GatewayProcess], OpenAI]
    asynchronous: Callable[[GatewayProcess], AsyncOpenAI]
    api_version: str | None
    """What the client sends and the mock must see: the v1 API takes none."""

    def query(self) -> dict[str, str]:
        """The query string the mock records for a call of this client."""
        return {"api-version": self.api_version} if self.api_version else {}


V1 = ClientStyle(v1_client, async_v1_client, None)
CLASSIC = ClientStyle(azure_client, async_azure_client, AZURE_API_VERSION)


def both_styles(v1_path: str, classic_path: str) -> list[Any]:
    """``(style, path)`` parameters of a test run with each client: the path each calls
    (and the gateway forwards unchanged)."""
    return [
        pytest.param(V1, v1_path, id="v1"),
        pytest.param(CLASSIC, classic_path, id="classic"),
    ]


def logged(
    gateway: GatewayProcess,
    request_id: str,
    *,
    route: str,
    model: str | None,
    deployment: str | None,
    path: str,
    status: int = 200,
) -> dict[str, Any]:
    """The request's access-log line, after checking who served it and for what."""
    line = gateway.access_log(request_id)
    got = {k: line.get(k) for k in ("status", "route", "model", "deployment", "path")}
    assert got == {
        "status": status,
        "route": route,
        "model": model,
        "deployment": deployment,
        "path": path,
    }
    return line


def assert_tokens(line: dict[str, Any], prompt: int, completion: int, total: int) -> None:
    assert prompt > 0 and total == prompt + completion
    got = (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"])
    assert got == (prompt, completion, total)


def upstream_call(
    mock: MockProcess, *, path: str, api_version: str | None, deployment: str
) -> dict[str, Any]:
    """The one request the mock saw, after checking its path, api-version, the deployment
    it served and that it carried the route's key (never the client's). Returns the record."""
    records = mock.requests()
    assert len(records) == 1, [r["path"] for r in records]
    record = records[0]
    assert record["path"] == path
    assert record["query"].get("api-version") == api_version, record["query"]
    assert record["deployment"] == deployment
    headers = record["headers"]
    assert headers.get("api-key") == MockProcess.api_key
    assert "authorization" not in headers
    assert CLIENT_KEY not in json.dumps(headers)
    return record


def body_model(record: dict[str, Any]) -> str:
    model: str = json.loads(record["body"])["model"]
    return model


def rid(request_id: str) -> dict[str, str]:
    return {"x-request-id": request_id}


# --- chat ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "model", "deployment", "path"),
    [
        pytest.param(V1, "gpt-4o", "gpt-4o", "/openai/v1/chat/completions", id="v1"),
        # A name of the application's own: the body's model becomes the deployment id.
        pytest.param(
            V1, "my-chat", "gpt-4.1-mini", "/openai/v1/chat/completions", id="v1-own-name"
        ),
        # One model route also serves the classic deployment path.
        pytest.param(
            CLASSIC, "gpt-4o", "gpt-4o", "/openai/deployments/gpt-4o/chat/completions", id="classic"
        ),
    ],
)
def test_chat_is_routed_by_the_model(
    models_gateway: GatewayProcess,
    mock: MockProcess,
    request_id: str,
    style: ClientStyle,
    model: str,
    deployment: str,
    path: str,
) -> None:
    response = style.sync(models_gateway).chat.completions.create(
        model=model, messages=QUESTION, extra_headers=rid(request_id)
    )
    assert response.model == SNAPSHOTS[deployment]
    assert response.choices[0].message.content
    assert response.usage is not None
    line = logged(
        models_gateway, request_id, route=model, model=model, deployment=deployment, path=path
    )
    usage = response.usage
    assert_tokens(line, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    record = upstream_call(mock, path=path, api_version=style.api_version, deployment=deployment)
    assert body_model(record) == deployment


def test_v1_chat_stream(models_gateway: GatewayProcess, mock: MockProcess, request_id: str) -> None:
    stream = v1_client(models_gateway).chat.completions.create(
        model="my-chat",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=rid(request_id),
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert SNAPSHOTS["gpt-4.1-mini"] in text
    [usage] = [c.usage for c in chunks if c.usage is not None]
    line = logged(
        models_gateway,
        request_id,
        route="my-chat",
        model="my-chat",
        deployment="gpt-4.1-mini",
        path="/openai/v1/chat/completions",
    )
    assert line["stream"] is True
    assert_tokens(line, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    record = upstream_call(
        mock, path="/openai/v1/chat/completions", api_version=None, deployment="gpt-4.1-mini"
    )
    assert body_model(record) == "gpt-4.1-mini"


def test_v1_chat_stream_without_usage_asked_is_still_accounted(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    stream = v1_client(models_gateway).chat.completions.create(
        model="gpt-4o", messages=QUESTION, stream=True, extra_headers=rid(request_id)
    )
    assert all(c.usage is None for c in stream)
    line = models_gateway.access_log(request_id)
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    record = upstream_call(
        mock, path="/openai/v1/chat/completions", api_version=None, deployment="gpt-4o"
    )
    assert json.loads(record["body"])["stream_options"] == {"include_usage": True}


async def test_async_v1_chat_and_stream(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    async with async_v1_client(models_gateway) as client:
        response = await client.chat.completions.create(model="my-chat", messages=QUESTION)
        assert response.model == SNAPSHOTS["gpt-4.1-mini"]
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=QUESTION, stream=True, extra_headers=rid(request_id)
        )
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert SNAPSHOTS["gpt-4o"] in text
    line = logged(
        models_gateway,
        request_id,
        route="gpt-4o",
        model="gpt-4o",
        deployment="gpt-4o",
        path="/openai/v1/chat/completions",
    )
    assert line["completion_tokens"] > 0
    assert [(r["path"], r["deployment"]) for r in mock.requests()] == [
        ("/openai/v1/chat/completions", "gpt-4.1-mini"),
        ("/openai/v1/chat/completions", "gpt-4o"),
    ]


# --- embeddings ------------------------------------------------------------------------


def test_v1_embeddings(models_gateway: GatewayProcess, mock: MockProcess, request_id: str) -> None:
    result = v1_client(models_gateway).embeddings.create(
        model="text-embedding-3-small", input=["hello", "world"], extra_headers=rid(request_id)
    )
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    line = logged(
        models_gateway,
        request_id,
        route="embeddings",
        model="text-embedding-3-small",
        deployment="text-embedding-3-small",
        path="/openai/v1/embeddings",
    )
    assert (line["prompt_tokens"], line["total_tokens"]) == (
        result.usage.prompt_tokens,
        result.usage.total_tokens,
    )
    record = upstream_call(
        mock, path="/openai/v1/embeddings", api_version=None, deployment="text-embedding-3-small"
    )
    assert body_model(record) == "text-embedding-3-small"


async def test_async_v1_embeddings(models_gateway: GatewayProcess, mock: MockProcess) -> None:
    async with async_v1_client(models_gateway) as client:
        result = await client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(result.data) == 1 and result.usage.prompt_tokens > 0
    upstream_call(
        mock, path="/openai/v1/embeddings", api_version=None, deployment="text-embedding-3-small"
    )


# --- responses -------------------------------------------------------------------------


RESPONSES = both_styles("/openai/v1/responses", "/openai/responses")
"""The classic client's Responses path is model-in-body too, with an api-version."""


@pytest.mark.parametrize(("style", "path"), RESPONSES)
def test_responses(
    models_gateway: GatewayProcess,
    mock: MockProcess,
    request_id: str,
    style: ClientStyle,
    path: str,
) -> None:
    response = style.sync(models_gateway).responses.create(
        model="my-chat", input="What model are you?", extra_headers=rid(request_id)
    )
    assert response.status == "completed"
    assert response.output_text
    assert response.usage is not None
    line = logged(
        models_gateway,
        request_id,
        route="my-chat",
        model="my-chat",
        deployment="gpt-4.1-mini",
        path=path,
    )
    usage = response.usage
    assert_tokens(line, usage.input_tokens, usage.output_tokens, usage.total_tokens)
    assert line["api_version"] == style.api_version
    record = upstream_call(
        mock, path=path, api_version=style.api_version, deployment="gpt-4.1-mini"
    )
    sent = json.loads(record["body"])
    assert sent["model"] == "gpt-4.1-mini"
    # Responses has no stream_options, and max_output_tokens is not max_tokens.
    assert "stream_options" not in sent and "max_tokens" not in sent


@pytest.mark.parametrize(("style", "path"), RESPONSES)
def test_responses_stream(
    models_gateway: GatewayProcess,
    mock: MockProcess,
    request_id: str,
    style: ClientStyle,
    path: str,
) -> None:
    stream = style.sync(models_gateway).responses.create(
        model="gpt-4o", input="What model are you?", stream=True, extra_headers=rid(request_id)
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text
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
        path=path,
    )
    assert line["stream"] is True
    assert line["ttft_ms"] is not None and line["ttft_ms"] <= line["latency_ms"]
    assert_tokens(line, usage.input_tokens, usage.output_tokens, usage.total_tokens)
    record = upstream_call(mock, path=path, api_version=style.api_version, deployment="gpt-4o")
    assert "stream_options" not in json.loads(record["body"])


@pytest.mark.parametrize(("style", "path"), RESPONSES)
async def test_async_responses_plain_and_stream(
    models_gateway: GatewayProcess,
    mock: MockProcess,
    request_id: str,
    style: ClientStyle,
    path: str,
) -> None:
    async with style.asynchronous(models_gateway) as client:
        response = await client.responses.create(model="gpt-4o", input="hi")
        stream = await client.responses.create(
            model="my-chat", input="hi", stream=True, extra_headers=rid(request_id)
        )
        events = [event async for event in stream]
    assert response.output_text and response.usage is not None
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is not None
    line = models_gateway.access_log(request_id)
    assert (line["route"], line["deployment"], line["path"]) == ("my-chat", "gpt-4.1-mini", path)
    assert line["completion_tokens"] == completed.response.usage.output_tokens
    assert line["total_tokens"] == completed.response.usage.total_tokens
    assert [(r["path"], r["deployment"], r["query"]) for r in mock.requests()] == [
        (path, "gpt-4o", style.query()),
        (path, "gpt-4.1-mini", style.query()),
    ]


# --- what no model route claims: the pass-through route --------------------------------


def test_v1_models_list_goes_through_the_preserve_route(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    models = v1_client(models_gateway).models.list(extra_headers=rid(request_id))
    assert [m.id for m in models.data]
    line = logged(
        models_gateway,
        request_id,
        route="openai-passthrough",
        model=None,
        deployment=None,
        path="/openai/v1/models",
    )
    assert line["method"] == "GET"
    [record] = mock.requests()
    assert (record["method"], record["path"]) == ("GET", "/openai/v1/models")
    assert "api-version" not in record["query"]
    assert record["headers"].get("api-key") == MockProcess.api_key
    assert "authorization" not in record["headers"]


def test_a_pass_through_keeps_the_listing_options_and_drops_keys_in_the_query(
    models_gateway: GatewayProcess, mock: MockProcess
) -> None:
    client = azure_client(models_gateway)
    # files.list(purpose=..., limit=...) sends its filters in the query; a key a client
    # put in the query (here a consumer-style `apikey` and Azure's `api-key`) never crosses.
    with contextlib.suppress(openai.APIStatusError):
        client.files.list(
            purpose="batch", limit=2, extra_query={"apikey": "secret-1", "api-key": "secret-2"}
        )
    [record] = mock.requests()
    assert (record["method"], record["path"]) == ("GET", "/openai/files")
    assert record["query"] == {"api-version": AZURE_API_VERSION, "purpose": "batch", "limit": "2"}


def test_stored_response_retrieve_and_delete_go_through_the_preserve_route(
    models_gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    client = azure_client(models_gateway)
    created = client.responses.create(model="gpt-4o", input="remember this")
    again = client.responses.retrieve(created.id, extra_headers=rid(request_id))
    assert again.id == created.id and again.output_text == created.output_text
    logged(
        models_gateway,
        request_id,
        route="openai-passthrough",
        model=None,
        deployment=None,
        path=f"/openai/responses/{created.id}",
    )
    client.responses.delete(created.id)
    records = mock.requests()
    assert [(r["method"], r["path"]) for r in records] == [
        ("POST", "/openai/responses"),
        ("GET", f"/openai/responses/{created.id}"),
        ("DELETE", f"/openai/responses/{created.id}"),
    ]
    for record in records:
        assert record["query"].get("api-version") == AZURE_API_VERSION
        assert record["headers"].get("api-key") == MockProcess.api_key
