"""Tests of the Azure OpenAI mock upstream (aigw.testing.azure_mock), driven over HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from aigw.testing.azure_mock import DEFAULT_DEPLOYMENTS, MockConfig, MockServer, build_app

Client = TestClient[web.Request, web.Application]

KEY = "test-key"
AUTH = {"api-key": KEY}
VERSION = "2024-10-21"
CHAT = f"/openai/deployments/gpt-4o/chat/completions?api-version={VERSION}"
COMPLETIONS = f"/openai/deployments/gpt-35-turbo-instruct/completions?api-version={VERSION}"
EMBEDDINGS = f"/openai/deployments/text-embedding-3-small/embeddings?api-version={VERSION}"
HELLO = {"messages": [{"role": "user", "content": "hello there mock"}]}
STREAM = {**HELLO, "stream": True}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
REPLY = "I am gpt-4o-2024-11-20. The quick brown fox"

NOT_FOUND_RAW = b'{"error":{"code":"404","message": "Resource not found"}}'
DEPLOYMENT_NOT_FOUND = {
    "error": {
        "code": "DeploymentNotFound",
        "message": "The API deployment for this resource does not exist. If you created the"
        " deployment within the last 5 minutes, please wait a moment and try again.",
    }
}
INVALID_KEY = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make"
        " sure to provide a valid key for an active subscription and use a correct regional"
        " API endpoint for your resource.",
    }
}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(build_app(MockConfig(api_key=KEY)))


async def post(client: Client, path: str, body: Any, **kwargs: Any) -> aiohttp.ClientResponse:
    headers = kwargs.pop("headers", AUTH)
    return await client.post(path, data=json.dumps(body), headers=headers, **kwargs)


async def fault(client: Client, **spec: Any) -> None:
    resp = await client.post("/_mock/faults", json=spec)
    assert resp.status == 200, await resp.text()


async def records(client: Client, settle_ms: int = 0) -> list[dict[str, Any]]:
    resp = await client.get("/_mock/requests", params={"settle_ms": str(settle_ms)})
    data: list[dict[str, Any]] = await resp.json()
    return data


def sse_events(raw: str) -> list[str]:
    """``data:`` payloads of a data-only SSE body, in order."""
    events = []
    for block in raw.split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            events.append(block[len("data: ") :])
    return events


# ---------------------------------------------------------------- routing and auth


async def test_health(client: Client) -> None:
    resp = await client.get("/_mock/health")
    assert resp.status == 200
    assert await resp.json() == {"ok": True}


@pytest.mark.parametrize("headers", [{}, {"api-key": "wrong"}, {"Authorization": "Bearer x"}])
async def test_bad_credentials_get_azure_401(client: Client, headers: dict[str, str]) -> None:
    resp = await post(client, CHAT, HELLO, headers=headers)
    assert resp.status == 401
    body = await resp.json()
    if "Authorization" in headers:
        assert body["statusCode"] == 401 and "error" not in body
    else:
        assert body == INVALID_KEY
    assert UUID.fullmatch(resp.headers["apim-request-id"])
    extra = set(resp.headers) - {"apim-request-id", "Content-Type", "Content-Length", "Date"}
    assert extra <= {"Server"}, extra


async def test_bearer_token_accepted_when_configured(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(MockConfig(bearer_token="tok")))
    resp = await post(client, CHAT, HELLO, headers={"Authorization": "Bearer tok"})
    assert resp.status == 200


async def test_unknown_deployment(client: Client) -> None:
    path = f"/openai/deployments/nope/chat/completions?api-version={VERSION}"
    resp = await post(client, path, HELLO)
    assert resp.status == 404
    assert await resp.json() == DEPLOYMENT_NOT_FOUND
    assert "x-request-id" not in resp.headers
    assert UUID.fullmatch(resp.headers["apim-request-id"])


async def test_missing_api_version_is_raw_404(client: Client) -> None:
    resp = await post(client, "/openai/deployments/gpt-4o/chat/completions", HELLO)
    assert resp.status == 404
    assert await resp.read() == NOT_FOUND_RAW
    assert "x-request-id" not in resp.headers


async def test_unknown_path_is_404(client: Client) -> None:
    resp = await post(client, f"/openai/deployments/gpt-4o/images/x?api-version={VERSION}", {})
    assert resp.status == 404
    assert await resp.read() == NOT_FOUND_RAW


@pytest.mark.parametrize("version", ["2024-10-21-beta", "v1", "latest", "2024-1-1"])
async def test_unsupported_api_version(client: Client, version: str) -> None:
    path = f"/openai/deployments/gpt-4o/chat/completions?api-version={version}"
    resp = await post(client, path, HELLO)
    assert resp.status == 400
    assert await resp.json() == {
        "error": {"code": "BadRequest", "message": "API version not supported"}
    }


async def test_preview_api_version_and_body_model_ignored(client: Client) -> None:
    path = "/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01-preview"
    resp = await post(client, path, {**HELLO, "model": "gpt-4.1-mini"})
    assert resp.status == 200
    assert (await resp.json())["model"] == "gpt-4o-2024-11-20"
    assert resp.headers["x-ms-deployment-name"] == "gpt-4o"


async def test_invalid_json(client: Client) -> None:
    resp = await client.post(CHAT, data=b"{nope", headers=AUTH)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "could not parse the JSON body" in error["message"]


@pytest.mark.parametrize(
    ("path", "param"), [(CHAT, "messages"), (COMPLETIONS, "prompt"), (EMBEDDINGS, "input")]
)
async def test_missing_required_parameter(client: Client, path: str, param: str) -> None:
    resp = await post(client, path, {"model": "x"})
    assert resp.status == 400
    assert await resp.json() == {
        "error": {
            "message": f"Missing required parameter: '{param}'.",
            "type": "invalid_request_error",
            "param": param,
            "code": "missing_required_parameter",
        }
    }
    assert resp.headers["ms-azureml-model-error-statuscode"] == "400"


async def test_operation_not_supported(client: Client) -> None:
    resp = await post(client, f"/openai/deployments/gpt-4o/embeddings?api-version={VERSION}", {})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "OperationNotSupported"


# ---------------------------------------------------------------- non-stream bodies


async def test_chat_completion_shape_and_headers(client: Client) -> None:
    resp = await post(client, CHAT, HELLO)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    body = await resp.json()
    assert list(body) == sorted(body)
    assert body["model"] == "gpt-4o-2024-11-20"
    assert body["object"] == "chat.completion"
    assert re.fullmatch(r"chatcmpl-[A-Za-z0-9]{29}", body["id"])
    assert re.fullmatch(r"fp_[0-9a-f]{10}", body["system_fingerprint"])
    assert abs(body["created"] - time.time()) < 5
    [choice] = body["choices"]
    assert choice["message"] == {
        "annotations": [],
        "content": REPLY,
        "refusal": None,
        "role": "assistant",
    }
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert choice["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}
    [prompt_filter] = body["prompt_filter_results"]
    assert list(prompt_filter) == ["prompt_index", "content_filter_results"]
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (3, 8, 11)
    assert usage["prompt_tokens_details"] == {"audio_tokens": 0, "cached_tokens": 0}
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0

    headers = resp.headers
    assert UUID.fullmatch(headers["apim-request-id"])
    assert UUID.fullmatch(headers["x-request-id"])
    assert headers["x-ms-region"] == "Sweden Central"
    assert headers["x-ms-deployment-name"] == "gpt-4o"
    assert headers["x-ms-rai-invoked"] == "true"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert headers["x-ratelimit-limit-requests"] == "4500"
    assert headers["x-ratelimit-limit-tokens"] == "450000"
    assert headers["x-ratelimit-remaining-requests"] == "4499"
    assert headers["x-ratelimit-remaining-tokens"] == str(450000 - 11)

    again = await post(client, CHAT, HELLO)
    assert again.headers["x-ratelimit-remaining-requests"] == "4498"
    assert (await again.json())["id"] != body["id"]


async def test_max_tokens_truncates(client: Client) -> None:
    resp = await post(client, CHAT, {**HELLO, "max_tokens": 2})
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "I am"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    bad = await post(client, CHAT, {**HELLO, "max_tokens": 0})
    assert bad.status == 400


async def test_completions_shape(client: Client) -> None:
    resp = await post(client, COMPLETIONS, {"prompt": "say something"})
    body = await resp.json()
    assert list(body) == sorted(body)
    assert body["object"] == "text_completion"
    assert body["model"] == "gpt-35-turbo-instruct-0914"
    assert body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "I am gpt-35-turbo-instruct-0914. The quick brown fox"
    assert body["usage"] == {"completion_tokens": 8, "prompt_tokens": 2, "total_tokens": 10}
    assert body["prompt_filter_results"][0]["prompt_index"] == 0


async def test_embeddings_float_and_dimensions(client: Client) -> None:
    resp = await post(client, EMBEDDINGS, {"input": ["one two", "three"]})
    body = await resp.json()
    assert list(body) == ["data", "model", "object", "usage"]
    assert body["model"] == "text-embedding-3-small" and body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 8 for d in body["data"])
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    same = await (await post(client, EMBEDDINGS, {"input": "one two"})).json()
    assert same["data"][0]["embedding"] == body["data"][0]["embedding"]
    wide = await (await post(client, EMBEDDINGS, {"input": "x", "dimensions": 3})).json()
    assert len(wide["data"][0]["embedding"]) == 3


async def test_embeddings_base64(client: Client) -> None:
    body = {"input": "one two", "encoding_format": "base64"}
    encoded = (await (await post(client, EMBEDDINGS, body)).json())["data"][0]["embedding"]
    floats = (await (await post(client, EMBEDDINGS, {"input": "one two"})).json())["data"][0]
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats["embedding"], abs=1e-6)


# ---------------------------------------------------------------- streaming


async def test_stream_sequence(client: Client) -> None:
    resp = await post(client, CHAT, STREAM)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["x-accel-buffering"] == "no"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert UUID.fullmatch(resp.headers["x-request-id"])
    events = sse_events(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]

    first = chunks[0]
    assert list(first) == ["choices", "created", "id", "model", "object", "prompt_filter_results"]
    assert (first["choices"], first["created"], first["id"], first["model"]) == ([], 0, "", "")
    role = chunks[1]["choices"][0]
    assert role["delta"] == {"content": "", "refusal": None, "role": "assistant"}
    assert role["content_filter_results"] == {}
    content = chunks[2:-1]
    assert len(content) == 8
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == REPLY
    for chunk in content:
        choice = chunk["choices"][0]
        assert choice["logprobs"] is None and choice["finish_reason"] is None
        assert choice["content_filter_results"]["violence"]["severity"] == "safe"
    finish = chunks[-1]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "stop"
    ids = {c["id"] for c in chunks[1:]}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert {c["model"] for c in chunks[1:]} == {"gpt-4o-2024-11-20"}
    assert {c["object"] for c in chunks[1:]} == {"chat.completion.chunk"}
    assert all("usage" not in c for c in chunks)
    assert all(list(c) == sorted(c) for c in chunks[1:])
    [record] = await records(client)
    assert record["stream"] is True and record["stream_outcome"] == "completed"


async def test_stream_include_usage(client: Client) -> None:
    body = {**STREAM, "stream_options": {"include_usage": True}, "max_tokens": 3}
    events = sse_events(await (await post(client, CHAT, body)).text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 3
    assert last["usage"]["prompt_tokens"] == 3
    assert last["usage"]["total_tokens"] == 6
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert len(chunks) == 1 + 1 + 3 + 1 + 1


async def test_stream_options_without_stream_is_rejected(client: Client) -> None:
    resp = await post(client, CHAT, {**HELLO, "stream_options": {"include_usage": True}})
    assert resp.status == 400


async def test_completions_stream(client: Client) -> None:
    events = sse_events(
        await (await post(client, COMPLETIONS, {"prompt": "x", "stream": True})).text()
    )
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"] == [] and "prompt_filter_results" in chunks[0]
    text = "".join(c["choices"][0]["text"] for c in chunks[1:])
    assert text == "I am gpt-35-turbo-instruct-0914. The quick brown fox"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1] == "[DONE]"


async def test_client_disconnect_mid_stream_is_recorded(client: Client) -> None:
    await fault(client, fault="delay", token_delay_ms=50)
    resp = await post(client, CHAT, STREAM)
    await resp.content.readuntil(b"\n\n")
    resp.close()
    [record] = await records(client, settle_ms=2000)
    assert record["stream_outcome"] == "client_disconnected"


# ---------------------------------------------------------------- faults


async def test_fault_429_with_retry_headers(client: Client) -> None:
    await fault(client, fault="status", status=429, retry_after=2)
    resp = await post(client, CHAT, HELLO)
    assert resp.status == 429
    assert resp.headers["retry-after"] == "2"
    assert resp.headers["retry-after-ms"] == "2000"
    error = (await resp.json())["error"]
    assert error["code"] == "429"
    assert "Please retry after 2 seconds" in error["message"]
    assert f"API version {VERSION}" in error["message"]
    assert (await post(client, CHAT, HELLO)).status == 200


async def test_fault_500_body_quotes_request_id(client: Client) -> None:
    await fault(client, fault="status", status=500)
    resp = await post(client, CHAT, HELLO)
    assert resp.status == 500
    error = (await resp.json())["error"]
    assert error["type"] == "server_error" and error["code"] is None
    assert resp.headers["x-request-id"] in error["message"]
    assert "retry-after" not in resp.headers


async def test_fault_status_custom_body_and_headers(client: Client) -> None:
    await fault(
        client,
        fault="status",
        status=502,
        body="<html>bad gateway</html>",
        content_type="text/html",
        headers={"x-should-retry": "false"},
    )
    resp = await post(client, CHAT, HELLO)
    assert resp.status == 502
    assert await resp.text() == "<html>bad gateway</html>"
    assert resp.headers["Content-Type"] == "text/html"
    assert resp.headers["x-should-retry"] == "false"


async def test_fault_count_deployment_and_fifo(client: Client) -> None:
    await fault(client, fault="status", status=503, deployment="gpt-4.1-mini", count=2)
    await fault(client, fault="status", status=500)
    other = f"/openai/deployments/gpt-4.1-mini/chat/completions?api-version={VERSION}"
    assert (await post(client, CHAT, HELLO)).status == 500
    assert (await post(client, CHAT, HELLO)).status == 200
    pending = await (await client.get("/_mock/faults")).json()
    assert [(f["status"], f["remaining"]) for f in pending] == [(503, 2)]
    assert (await post(client, other, HELLO)).status == 503
    assert (await post(client, other, HELLO)).status == 503
    assert (await post(client, other, HELLO)).status == 200
    assert await (await client.get("/_mock/faults")).json() == []


async def test_fault_unlimited_until_cleared(client: Client) -> None:
    await fault(client, fault="status", status=503, count=None)
    for _ in range(3):
        assert (await post(client, CHAT, HELLO)).status == 503
    assert (await client.delete("/_mock/faults")).status == 200
    assert (await post(client, CHAT, HELLO)).status == 200


@pytest.mark.parametrize(
    "spec",
    [
        {"fault": "nope"},
        {"fault": "status"},
        {"fault": "status", "status": 99},
        {"fault": "cut_stream", "after": 1},
        {"fault": "delay", "latency_ms": -1},
        {"fault": "hang", "count": 0},
    ],
)
async def test_invalid_fault_spec(client: Client, spec: dict[str, Any]) -> None:
    resp = await client.post("/_mock/faults", json=spec)
    assert resp.status == 400
    assert "error" in await resp.json()


async def read_until_broken(resp: aiohttp.ClientResponse) -> list[bytes]:
    """``data:`` lines received before the body breaks; fails if it ends cleanly."""
    seen: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async for line in resp.content:
            if line.startswith(b"data: "):
                seen.append(line)
    return seen


@pytest.mark.parametrize("rst", [False, True])
async def test_fault_cut_stream(client: Client, rst: bool) -> None:
    await fault(client, fault="cut_stream", after_events=4, rst=rst)
    seen = await read_until_broken(await post(client, CHAT, STREAM))
    assert len(seen) == 4
    assert json.loads(seen[-1][len(b"data: ") :])["choices"][0]["delta"] == {"content": " am"}
    [record] = await records(client)
    assert record["fault"] == "cut_stream" and record["stream_outcome"] == "cut"


async def test_stream_faults_skip_non_stream_requests(client: Client) -> None:
    await fault(client, fault="eof_stream")
    assert (await post(client, CHAT, HELLO)).status == 200
    events = sse_events(await (await post(client, CHAT, STREAM)).text())
    assert "[DONE]" not in events
    assert json.loads(events[-1])["choices"][0]["finish_reason"] == "stop"
    outcomes = [(r["fault"], r["stream_outcome"]) for r in await records(client)]
    assert outcomes == [(None, None), ("eof_stream", "completed")]


async def test_fault_eof_stream_after_events(client: Client) -> None:
    await fault(client, fault="eof_stream", after_events=2)
    events = sse_events(await (await post(client, CHAT, STREAM)).text())
    assert len(events) == 2 and "[DONE]" not in events


async def test_fault_stream_error_event(client: Client) -> None:
    await fault(client, fault="stream_error_event", after_events=3)
    events = sse_events(await (await post(client, CHAT, STREAM)).text())
    assert len(events) == 4
    assert json.loads(events[-1])["error"]["type"] == "server_error"
    custom = {"code": "content_filter", "message": "The response was filtered"}
    await fault(client, fault="stream_error_event", error=custom, after_events=0)
    events = sse_events(await (await post(client, CHAT, STREAM)).text())
    assert [json.loads(e) for e in events] == [{"error": custom}]


async def test_fault_delay(client: Client) -> None:
    await fault(client, fault="delay", latency_ms=120)
    started = time.monotonic()
    assert (await post(client, CHAT, HELLO)).status == 200
    assert time.monotonic() - started >= 0.12
    await fault(client, fault="delay", token_delay_ms=20)
    started = time.monotonic()
    await (await post(client, CHAT, STREAM)).read()
    assert time.monotonic() - started >= 7 * 0.02


async def test_fault_redirect_to_other_origin(client: Client) -> None:
    await fault(client, fault="redirect")
    resp = await post(client, CHAT, HELLO, allow_redirects=False)
    assert resp.status == 307
    location = resp.headers["Location"]
    port = client.server.port
    assert location == f"http://localhost:{port}{CHAT}"
    # A client that follows it reaches the mock again, so the leak is visible in records.
    async with (
        aiohttp.ClientSession() as session,
        session.post(location, json=HELLO, headers=AUTH) as followed,
    ):
        assert followed.status == 200
    assert (await records(client))[-1]["headers"]["host"] == f"localhost:{port}"


async def test_fault_hang_until_client_leaves(client: Client) -> None:
    await fault(client, fault="hang")
    with pytest.raises(asyncio.TimeoutError):
        await post(client, CHAT, HELLO, timeout=aiohttp.ClientTimeout(total=0.2))
    [record] = await records(client, settle_ms=2000)
    assert record["fault"] == "hang"
    assert record["status"] is None
    assert record["stream_outcome"] == "client_disconnected"


async def test_fault_close(client: Client) -> None:
    await fault(client, fault="close")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(client, CHAT, HELLO)
    assert (await post(client, CHAT, HELLO)).status == 200


async def test_fault_malformed(client: Client) -> None:
    await fault(client, fault="malformed", count=2)
    resp = await post(client, CHAT, HELLO)
    assert resp.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(await resp.text())
    streamed = await post(client, CHAT, STREAM)
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    [event] = sse_events(await streamed.text())
    with pytest.raises(json.JSONDecodeError):
        json.loads(event)


async def test_fault_content_filter(client: Client) -> None:
    await fault(client, fault="content_filter")
    resp = await post(client, CHAT, STREAM)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "content_filter" and error["param"] == "prompt"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"


# ---------------------------------------------------------------- recording


async def test_recording(client: Client) -> None:
    path = f"{CHAT}&extra=1"
    headers = {**AUTH, "X-Custom": "a", "User-Agent": "AsyncAzureOpenAI/Python 3.57.0"}
    await client.post(path, data='{"messages": "\u00e9"}', headers=headers)
    await client.post(
        path, data=b"\xff", headers=[("api-key", KEY), ("x-dup", "1"), ("x-dup", "2")]
    )
    await client.get("/_mock/faults")
    first, second = await records(client)
    assert first["method"] == "POST"
    assert first["path"] == "/openai/deployments/gpt-4o/chat/completions"
    assert first["query"] == {"api-version": VERSION, "extra": "1"}
    assert first["deployment"] == "gpt-4o"
    assert first["headers"]["x-custom"] == "a"
    assert first["headers"]["api-key"] == KEY
    assert first["headers"]["user-agent"] == "AsyncAzureOpenAI/Python 3.57.0"
    assert first["body"] == '{"messages": "\u00e9"}'
    assert first["status"] == 400 and first["stream_outcome"] is None
    assert first["apim_request_id"] is not None
    assert first["started_at"] <= first["ended_at"] <= second["started_at"]
    assert second["headers"]["x-dup"] == "1, 2"
    assert second["body"] == "\ufffd"
    assert (await client.delete("/_mock/requests")).status == 200
    assert await records(client) == []


async def test_record_limit(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(MockConfig(api_key=KEY, record_limit=2)))
    for _ in range(3):
        await post(client, CHAT, HELLO)
    assert [r["seq"] for r in await records(client)] == [2, 3]


# ---------------------------------------------------------------- SDK, CLI, config


@pytest.fixture
async def sdk(client: Client) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    azure = openai.AsyncAzureOpenAI(
        api_key=KEY,
        azure_endpoint=f"http://127.0.0.1:{client.server.port}",
        api_version="2025-01-01-preview",
        max_retries=1,
    )
    yield azure
    await azure.close()


async def test_openai_sdk_chat_and_stream(client: Client, sdk: openai.AsyncAzureOpenAI) -> None:
    completion = await sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.model == "gpt-4o-2024-11-20"
    assert completion.choices[0].message.content == REPLY

    stream = await sdk.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, models, usage = "", set(), None
    async for chunk in stream:
        models.add(chunk.model)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    assert text == REPLY
    assert "gpt-4o-2024-11-20" in models
    assert usage is not None and usage.completion_tokens == 8


async def test_openai_sdk_retries_429_and_raises_stream_error(
    client: Client, sdk: openai.AsyncAzureOpenAI
) -> None:
    await fault(client, fault="status", status=429, retry_after_ms=10)
    completion = await sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.model == "gpt-4o-2024-11-20"
    retries = [r["headers"]["x-stainless-retry-count"] for r in await records(client)]
    assert retries == ["0", "1"]

    await fault(client, fault="stream_error_event")
    stream = await sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_mock_server_in_process() -> None:
    async with MockServer(MockConfig(api_key=KEY)) as server, aiohttp.ClientSession() as session:
        assert server.port > 0
        async with session.get(f"{server.url}/_mock/health") as resp:
            assert await resp.json() == {"ok": True}


def test_cli_port_file(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    cmd = [sys.executable, "-m", "aigw.testing.azure_mock", "--port", "0"]
    cmd += ["--port-file", str(port_file), "--deployment", "dep=model-2025-01-01"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(port_file.read_text())
        assert line == f"azure-mock listening on http://127.0.0.1:{port}\n"
        with _urlopen(port, "/openai/deployments/dep/chat/completions?api-version=2024-10-21") as r:
            assert json.load(r)["model"] == "model-2025-01-01"
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def _urlopen(port: int, path: str) -> Any:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(HELLO).encode(),
        headers={"api-key": "mock-azure-key", "Content-Type": "application/json"},
    )
    return urllib.request.urlopen(request, timeout=5)


def test_config_is_frozen_and_validated() -> None:
    source = {"a": "b"}
    config = MockConfig(deployments=source)
    source["c"] = "d"
    assert dict(config.deployments) == {"a": "b"}
    assert dict(MockConfig().deployments) == dict(DEFAULT_DEPLOYMENTS)
    with pytest.raises(ValueError, match="tokens"):
        MockConfig(tokens=0)
    with pytest.raises(ValueError, match="deployment"):
        MockConfig(deployments={})


@pytest.mark.parametrize("version", ["2024-02-01", "2024-06-01", "2024-08-01-preview"])
async def test_stream_options_refused_before_it_existed(client: Client, version: str) -> None:
    path = f"/openai/deployments/gpt-4o/chat/completions?api-version={version}"
    body = {**STREAM, "stream_options": {"include_usage": True}}
    resp = await post(client, path, body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["message"] == "Unknown parameter: 'stream_options'."
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "stream_options",
        "unknown_parameter",
    )
    # The same stream without it is served on that version.
    resp = await post(client, path, STREAM)
    assert resp.status == 200
    assert b"data: [DONE]" in await resp.read()


@pytest.mark.parametrize("version", ["2024-09-01-preview", "2024-10-21", "2025-01-01-preview"])
async def test_stream_options_accepted_since_it_exists(client: Client, version: str) -> None:
    path = f"/openai/deployments/gpt-4o/chat/completions?api-version={version}"
    resp = await post(client, path, {**STREAM, "stream_options": {"include_usage": True}})
    assert resp.status == 200
    assert b'"usage":{' in await resp.read()


# ---------------------------------------------------------------- regions: faults for failover


async def test_fault_503_has_azure_overload_body(client: Client) -> None:
    await fault(client, fault="status", status=503, count=2)
    for _ in range(2):
        resp = await post(client, CHAT, HELLO)
        assert resp.status == 503
        assert (await resp.json())["error"] == {
            "code": "503",
            "message": "The service is temporarily unable to process your request."
            " Please try again later.",
        }
        assert "retry-after" not in resp.headers
    assert (await post(client, CHAT, HELLO)).status == 200


async def test_fault_429_retry_after_ms_only(client: Client) -> None:
    await fault(client, fault="status", status=429, retry_after=None, retry_after_ms=250)
    resp = await post(client, CHAT, HELLO)
    assert resp.status == 429
    assert resp.headers["retry-after-ms"] == "250"
    assert "retry-after" not in resp.headers
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert (await resp.json())["error"]["code"] == "429"


async def _first_byte_after(port: int, body: dict[str, Any]) -> float:
    """Seconds from the request's last byte to the first byte of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\napi-key: {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    started = time.monotonic()
    first = await reader.read(1)
    elapsed = time.monotonic() - started
    assert first == b"H"
    writer.close()
    return elapsed


@pytest.mark.parametrize("body", [HELLO, STREAM], ids=["json", "stream"])
async def test_slow_first_byte_holds_the_status_line(body: dict[str, Any]) -> None:
    async with MockServer(MockConfig(api_key=KEY)) as server, aiohttp.ClientSession() as session:
        spec = {"fault": "delay", "latency_ms": 300}
        async with session.post(f"{server.url}/_mock/faults", json=spec) as resp:
            assert resp.status == 200
        assert await _first_byte_after(server.port, body) >= 0.29
        # Used up: the next answer starts at once (generous bound for a loaded machine).
        assert await _first_byte_after(server.port, body) < 0.25


async def _refuse(session: aiohttp.ClientSession, url: str, **spec: Any) -> None:
    async with session.post(f"{url}/_mock/connections", json={"refuse": True, **spec}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Connection"] == "close"


async def test_refuse_connections_until_accepted_on_the_same_port() -> None:
    async with MockServer(MockConfig(api_key=KEY)) as server:
        port = server.port
        # An idle keep-alive connection, as a client's pool holds one.
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        async with aiohttp.ClientSession() as session:
            await _refuse(session, server.url)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        # The pooled connection is gone too: a dead region answers nothing.
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(idle_reader.read(1), 5) == b""
        idle_writer.close()
        await server.accept_connections()
        assert not server.refusing and server.port == port
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{server.url}{CHAT}", data=json.dumps(HELLO), headers=AUTH) as resp,
        ):
            assert resp.status == 200


async def test_refuse_connections_cuts_requests_in_progress() -> None:
    async with MockServer(MockConfig(api_key=KEY)) as server, aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/_mock/faults", json={"fault": "hang"}):
            pass
        pending = asyncio.ensure_future(
            session.post(f"{server.url}{CHAT}", data=json.dumps(HELLO), headers=AUTH)
        )
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as control:
            await _refuse(control, server.url)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(pending, 5)


async def test_refuse_connections_for_a_while() -> None:
    async with MockServer(MockConfig(api_key=KEY)) as server:
        async with aiohttp.ClientSession() as session:
            await _refuse(session, server.url, for_ms=300)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.port)
        deadline = time.monotonic() + 5
        while server.refusing and time.monotonic() < deadline:  # noqa: ASYNC110 (a property)
            await asyncio.sleep(0.02)
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.close()


@pytest.mark.parametrize(
    "spec",
    [{}, {"refuse": False}, {"refuse": True, "for_ms": 0}, {"refuse": True, "later": 1}],
)
async def test_refuse_connections_spec_is_checked(client: Client, spec: dict[str, Any]) -> None:
    resp = await client.post("/_mock/connections", json=spec)
    assert resp.status == 400
    assert "error" in await resp.json()


async def test_refuse_connections_needs_its_own_server(client: Client) -> None:
    resp = await client.post("/_mock/connections", json={"refuse": True})
    assert resp.status == 501
    assert (await post(client, CHAT, HELLO)).status == 200


def test_cli_region_and_sigusr1_listens_again(tmp_path: Path) -> None:
    import signal
    import urllib.error

    port_file = tmp_path / "port"
    cmd = [sys.executable, "-m", "aigw.testing.azure_mock", "--port", "0"]
    cmd += ["--port-file", str(port_file), "--region", "East US"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.02)
        port = int(port_file.read_text())
        with _urlopen(port, CHAT) as resp:
            assert resp.headers["x-ms-region"] == "East US"
        _control(port, "/_mock/connections", {"refuse": True, "for_ms": None})
        with pytest.raises(urllib.error.URLError):
            _urlopen(port, CHAT)
        proc.send_signal(signal.SIGUSR1)
        while True:
            try:
                with _urlopen(port, CHAT) as resp:
                    assert resp.status == 200
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def _control(port: int, path: str, body: Any) -> Any:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.load(resp)


# ---------------------------------------------------------------- Entra ID bearer tokens

ENTRA_SECRET = "entra-test-secret"
INVALID_BEARER = {
    "statusCode": 401,
    "message": "Unauthorized. Access token is missing, invalid, audience is incorrect"
    " (https://cognitiveservices.azure.com), or have expired.",
}


@pytest.fixture
async def entra_client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(build_app(MockConfig(api_key=KEY, entra_secret=ENTRA_SECRET)))


def _token(*, expires_in: float, secret: str = ENTRA_SECRET) -> str:
    from aigw.testing.entra import issue_token

    return issue_token(secret, expires_on=int(time.time() + expires_in), client_id=None, serial=1)


async def test_entra_token_accepted(entra_client: Client) -> None:
    headers = {"Authorization": f"Bearer {_token(expires_in=300)}"}
    resp = await post(entra_client, CHAT, HELLO, headers=headers)
    assert resp.status == 200
    # Keys still work beside tokens.
    assert (await post(entra_client, CHAT, HELLO)).status == 200


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: _token(expires_in=-1), id="expired"),
        pytest.param(lambda: _token(expires_in=300, secret="another-tenant"), id="unknown"),
        pytest.param(lambda: "not-a-token", id="garbage"),
    ],
)
async def test_entra_bad_token_gets_azure_entra_401(entra_client: Client, token: Any) -> None:
    resp = await post(entra_client, CHAT, HELLO, headers={"Authorization": f"Bearer {token()}"})
    assert resp.status == 401
    assert await resp.json() == INVALID_BEARER
    assert "apim-request-id" in resp.headers and "x-request-id" not in resp.headers
    recorded = await records(entra_client)
    assert recorded[-1]["status"] == 401


async def test_entra_token_refused_without_entra_secret(client: Client) -> None:
    headers = {"Authorization": f"Bearer {_token(expires_in=300)}"}
    resp = await post(client, CHAT, HELLO, headers=headers)
    assert resp.status == 401
    assert await resp.json() == INVALID_BEARER


def test_cli_entra_secret() -> None:
    from aigw.testing.azure_mock.__main__ import _config, parse_args

    config = _config(parse_args(["--entra-secret", "s3", "--region", "East US"]))
    assert config.entra_secret == "s3" and config.region == "East US"
