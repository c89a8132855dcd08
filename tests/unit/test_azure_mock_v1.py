"""The Azure mock's v1 API (``/openai/v1/...``: the deployment is the body's ``model``,
``api-key`` or ``Authorization: Bearer``) and its Responses API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
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
