"""The Azure mock's v1 API (``/openai/v1/...``: the deployment is the body's ``model``,
``api-key`` or ``Authorization: Bearer``) and its Responses API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openai.types.responses import ResponseCompletedEvent
from pytest_aiohttp import AiohttpClient

from aigw.testing.azure_mock import MockConfig, build_app

Client = TestClient[web.Request, web.Application]

KEY = "test-key"
AUTH = {"api-key": KEY}
BEARER = {"Authorization": f"Bearer {KEY}"}
HELLO = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there mock"}]}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(build_app(MockConfig(api_key=KEY)))


async def post(
    client: Client, path: str, body: Any, headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    return await client.post(
        path, data=json.dumps(body), headers=AUTH if headers is None else headers
    )


async def records(client: Client) -> list[dict[str, Any]]:
    resp = await client.get("/_mock/requests", params={"settle_ms": "500"})
    data: list[dict[str, Any]] = await resp.json()
    return data


# ---------------------------------------------------------------- v1 chat / embeddings


@pytest.mark.parametrize("headers", [AUTH, BEARER])
@pytest.mark.parametrize("query", ["", "?api-version=v1", "?api-version=preview"])
async def test_v1_chat_routes_by_body_model(
    client: Client, headers: dict[str, str], query: str
) -> None:
    resp = await post(client, f"/openai/v1/chat/completions{query}", HELLO, headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == "gpt-4o-2024-11-20"
    assert body["object"] == "chat.completion"
    assert resp.headers["x-ms-deployment-name"] == "gpt-4o"
    (record,) = await records(client)
    assert record["deployment"] == "gpt-4o"
    assert record["operation"] == "chat"
    assert record["body_size"] == len(json.dumps(HELLO))


async def test_v1_completions_and_embeddings(client: Client) -> None:
    resp = await post(
        client, "/openai/v1/completions", {"model": "gpt-35-turbo-instruct", "prompt": "hi"}
    )
    assert resp.status == 200
    assert (await resp.json())["object"] == "text_completion"
    resp = await post(
        client, "/openai/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}
    )
    assert resp.status == 200
    assert len((await resp.json())["data"]) == 2


@pytest.mark.parametrize("version", ["2024-10-21", "latest", "V1"])
async def test_v1_refuses_dated_versions(client: Client, version: str) -> None:
    resp = await post(client, f"/openai/v1/chat/completions?api-version={version}", HELLO)
    assert resp.status == 400
    assert await resp.json() == {
        "error": {"code": "BadRequest", "message": "API version not supported"}
    }


async def test_v1_unknown_model_is_deployment_not_found(client: Client) -> None:
    resp = await post(client, "/openai/v1/chat/completions", {**HELLO, "model": "nope"})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "DeploymentNotFound"
    (record,) = await records(client)
    assert record["deployment"] == "nope"


@pytest.mark.parametrize(
    "body", [{"messages": []}, {"model": "", "messages": []}, {"model": 3}, b"{no"]
)
async def test_v1_body_without_model_is_400(client: Client, body: Any) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body)
    resp = await client.post("/openai/v1/chat/completions", data=data, headers=AUTH)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    if isinstance(body, bytes):
        assert "could not parse the JSON body" in error["message"]
    else:
        assert error["message"] == "you must provide a model parameter"


@pytest.mark.parametrize(
    ("headers", "entra"),
    [({}, False), ({"api-key": "wrong"}, False), ({"Authorization": "Bearer wrong"}, True)],
)
async def test_v1_bad_credentials(client: Client, headers: dict[str, str], entra: bool) -> None:
    resp = await post(client, "/openai/v1/chat/completions", HELLO, headers)
    assert resp.status == 401
    body = await resp.json()
    assert ("statusCode" in body) is entra


async def test_classic_api_does_not_take_the_key_as_bearer(client: Client) -> None:
    path = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    resp = await post(client, path, HELLO, BEARER)
    assert resp.status == 401


async def test_v1_operation_not_supported(client: Client) -> None:
    body = {"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "x"}]}
    resp = await post(client, "/openai/v1/chat/completions", body)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "OperationNotSupported"


async def test_v1_faults_apply(client: Client) -> None:
    await client.post("/_mock/faults", json={"fault": "status", "status": 429})
    resp = await post(client, "/openai/v1/chat/completions", HELLO)
    assert resp.status == 429
    assert resp.headers["retry-after"] == "1"
    assert "API version v1" in (await resp.json())["error"]["message"]


@pytest.fixture
async def v1_sdk(client: Client) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(
        api_key=KEY, base_url=f"http://127.0.0.1:{client.server.port}/openai/v1/", max_retries=0
    )
    async with sdk:
        yield sdk


async def test_openai_sdk_v1_chat_stream_and_embeddings(
    client: Client, v1_sdk: openai.AsyncOpenAI
) -> None:
    completion = await v1_sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content
    stream = await v1_sdk.chat.completions.create(
        model="gpt-4.1-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    vectors = await v1_sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert len(vectors.data[0].embedding) == 8
    seen = [
        (r["path"], r["deployment"], r["headers"]["authorization"]) for r in await records(client)
    ]
    assert seen == [
        ("/openai/v1/chat/completions", "gpt-4o", f"Bearer {KEY}"),
        ("/openai/v1/chat/completions", "gpt-4.1-mini", f"Bearer {KEY}"),
        ("/openai/v1/embeddings", "text-embedding-3-small", f"Bearer {KEY}"),
    ]


# ---------------------------------------------------------------- Responses

RESPONSES = "/openai/responses?api-version=2025-04-01-preview"
ASK = {"model": "gpt-4o", "input": "say hello to me"}


def typed_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(``event:`` name, parsed ``data:``) of each SSE event."""
    events = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        events.append((name[7:], json.loads(data[6:])))
    return events


@pytest.mark.parametrize("path", [RESPONSES, "/openai/v1/responses"])
async def test_responses_json(client: Client, path: str) -> None:
    resp = await post(client, path, ASK)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["id"].startswith("resp_")
    assert body["model"] == "gpt-4o-2024-11-20"
    (message,) = body["output"]
    assert message["content"][0]["text"] == "I am gpt-4o-2024-11-20. The quick brown fox"
    assert body["usage"]["input_tokens"] == 4
    assert body["usage"]["output_tokens"] == 8
    assert body["usage"]["total_tokens"] == 12
    (record,) = await records(client)
    assert record["operation"] == "responses" and record["deployment"] == "gpt-4o"


async def test_responses_stream_typed_events(client: Client) -> None:
    resp = await post(client, RESPONSES, {**ASK, "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = await resp.text()
    assert "[DONE]" not in raw
    events = typed_events(raw)
    names = [name for name, _ in events]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[4:12] == ["response.output_text.delta"] * 8
    assert names[12:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    completed = events[-1][1]["response"]
    assert completed["usage"]["output_tokens"] == 8
    assert (
        "".join(data["delta"] for name, data in events if name.endswith(".delta"))
        == (completed["output"][0]["content"][0]["text"])
    )
    (record,) = await records(client)
    assert record["stream"] is True and record["stream_outcome"] == "completed"


async def test_responses_max_output_tokens(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(MockConfig(api_key=KEY, tokens=40)))
    resp = await post(client, RESPONSES, {**ASK, "max_output_tokens": 20, "stream": True})
    events = typed_events(await resp.text())
    assert events[-1][0] == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["output_tokens"] == 20
    resp = await post(client, RESPONSES, {**ASK, "max_output_tokens": 15})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "max_output_tokens"


@pytest.mark.parametrize("version", ["2024-10-21", "2025-01-01-preview"])
async def test_classic_responses_needs_a_recent_api_version(client: Client, version: str) -> None:
    resp = await post(client, f"/openai/responses?api-version={version}", ASK)
    assert resp.status == 400
    assert "2025-03-01-preview and later" in (await resp.json())["error"]["message"]


async def test_classic_responses_without_api_version_is_404(client: Client) -> None:
    resp = await post(client, "/openai/responses", ASK)
    assert resp.status == 404


async def test_responses_missing_input_and_unknown_previous(client: Client) -> None:
    resp = await post(client, RESPONSES, {"model": "gpt-4o"})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "input"
    resp = await post(client, RESPONSES, {**ASK, "previous_response_id": "resp_nope"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "previous_response_not_found"


async def test_responses_on_an_embedding_deployment_is_refused(client: Client) -> None:
    resp = await post(client, RESPONSES, {**ASK, "model": "text-embedding-3-small"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "OperationNotSupported"


async def test_stored_responses_get_and_delete(client: Client) -> None:
    created = await (await post(client, "/openai/v1/responses", ASK)).json()
    rid = created["id"]
    classic = f"/openai/responses/{rid}?api-version=2025-04-01-preview"
    for path in (f"/openai/v1/responses/{rid}", classic):
        resp = await client.get(path, headers=AUTH)
        assert resp.status == 200, path
        assert await resp.json() == created
    follow = await post(client, "/openai/v1/responses", {**ASK, "previous_response_id": rid})
    assert follow.status == 200
    resp = await client.delete(f"/openai/v1/responses/{rid}", headers=AUTH)
    assert await resp.json() == {"id": rid, "object": "response.deleted", "deleted": True}
    resp = await client.get(f"/openai/v1/responses/{rid}", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"]["message"] == f"Response with id '{rid}' not found."
    unstored = await (await post(client, "/openai/v1/responses", {**ASK, "store": False})).json()
    resp = await client.get(f"/openai/v1/responses/{unstored['id']}", headers=AUTH)
    assert resp.status == 404
    resp = await client.get(f"/openai/v1/responses/{rid}", headers={"api-key": "wrong"})
    assert resp.status == 401


@pytest.mark.parametrize("path", ["/openai/models?api-version=2024-10-21", "/openai/v1/models"])
async def test_models_list(client: Client, path: str) -> None:
    resp = await client.get(path, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "list"
    assert "gpt-4o-2024-11-20" in {model["id"] for model in body["data"]}


async def test_responses_faults(client: Client) -> None:
    await client.post("/_mock/faults", json={"fault": "status", "status": 429})
    resp = await post(client, RESPONSES, ASK)
    assert resp.status == 429
    assert "Responses_Create" in (await resp.json())["error"]["message"]
    await client.post("/_mock/faults", json={"fault": "stream_error_event", "after_events": 5})
    events = typed_events(await (await post(client, RESPONSES, {**ASK, "stream": True})).text())
    assert [name for name, _ in events][-2:] == ["response.output_text.delta", "error"]
    assert events[-1][1]["sequence_number"] == 5
    await client.post("/_mock/faults", json={"fault": "eof_stream", "after_events": 6})
    events = typed_events(await (await post(client, RESPONSES, {**ASK, "stream": True})).text())
    assert len(events) == 6
    await client.post("/_mock/faults", json={"fault": "delay", "latency_ms": 300})
    started = asyncio.get_running_loop().time()
    resp = await post(client, RESPONSES, ASK)
    assert resp.status == 200
    assert asyncio.get_running_loop().time() - started >= 0.3


def _sync_responses(port: int) -> tuple[str, str, int]:
    """The sync SDK (v1 client) against the mock: a stream parsed into typed events."""
    sdk = openai.OpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{port}/openai/v1/", max_retries=0)
    with sdk:
        plain = sdk.responses.create(model="gpt-4o", input="hi")
        with sdk.responses.stream(model="gpt-4o", input="hi") as stream:
            text = "".join(
                event.delta for event in stream if event.type == "response.output_text.delta"
            )
            final = stream.get_final_response()
    assert final.usage is not None
    return plain.output_text, text, final.usage.output_tokens


async def test_openai_sdk_responses_sync_and_async(client: Client) -> None:
    port = client.server.port
    assert port is not None
    plain, streamed, output_tokens = await asyncio.to_thread(_sync_responses, port)
    assert plain == streamed == "I am gpt-4o-2024-11-20. The quick brown fox"
    assert output_tokens == 8
    azure = openai.AsyncAzureOpenAI(
        api_key=KEY,
        azure_endpoint=f"http://127.0.0.1:{port}",
        api_version="2025-04-01-preview",
        max_retries=0,
    )
    async with azure:
        response = await azure.responses.create(model="gpt-4.1-mini", input="hi")
        assert response.output_text.startswith("I am gpt-4.1-mini")
        stream = await azure.responses.create(model="gpt-4o", input="hi", stream=True)
        events = [event async for event in stream]
        completed = events[-1]
        assert isinstance(completed, ResponseCompletedEvent)
        assert completed.response.usage is not None
        assert completed.response.usage.total_tokens == 9
        fetched = await azure.responses.retrieve(response.id)
        assert fetched.id == response.id
    paths = [r["path"] for r in await records(client)]
    assert paths[-3:] == [
        "/openai/responses",
        "/openai/responses",
        f"/openai/responses/{response.id}",
    ]
