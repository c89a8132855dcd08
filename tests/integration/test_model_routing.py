"""Routing by the body's ``model``, end to end: a real ``aigw serve`` in front of the mock.

What an operator and an application notice: the openai SDK's v1 client reaches the
deployment its ``model`` names; a request whose model names no route, or that has none,
or that is not JSON, or too big, is answered by aigw itself with one OpenAI-style error
and one access-log line; a second file claiming a served model is refused on reload
while the first keeps serving, and takes over once the first is deleted; an explicit
static path beats a model route's classic path; ``aigw check`` shows each route's models.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI, AzureOpenAI, OpenAI

from tests.integration.conftest import GATEWAY_ENV, route_yaml
from tests.integration.harness import (
    GatewayProcess,
    MockProcess,
    model_route_file,
    run_check,
    serve_routes,
    wait_until,
)
from tests.integration.rawnet import RawResponse, error_of, post, post_head, read_response

CLIENT_KEY = "client-key-never-forwarded"
BODY_LIMIT = 64 * 1024
"""Every model route's ``max_request_body_size`` here: the dispatcher's bound."""
V1_CHAT = "/openai/v1/chat/completions"
SNAPSHOTS = {"gpt-4o": "gpt-4o-2024-11-20", "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14"}
"""The mock's deployment -> the model snapshot it answers with."""
MESSAGES: list[Any] = [{"role": "user", "content": "Say hi."}]


def model_route(name: str, models: list[str], deployment: str) -> str:
    """A model route file (``route_type`` left out: ``auto``) forwarding to *deployment*."""
    config = [f"max_request_body_size: {BODY_LIMIT}"]
    return model_route_file(name, models, [deployment], config=config)


# The application's own name `small` for the mock's gpt-4.1-mini deployment.
ROUTES = {
    "gpt-4o.yaml": model_route("gpt-4o", ["gpt-4o"], "gpt-4o"),
    "small.yaml": model_route("small", ["small"], "gpt-4.1-mini"),
    # An explicit static path for gpt-4o's classic chat path, to another deployment.
    "pinned.yaml": route_yaml(
        "pinned",
        "/openai/deployments/gpt-4o/chat/completions",
        model="gpt-4o",
        deployment="gpt-4.1-mini",
    ),
}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("model-routing-conf.d")
    with serve_routes(conf, ROUTES, "--azure-base-url", mock.url, env=GATEWAY_ENV) as process:
        yield process


def send(gateway: GatewayProcess, request: bytes) -> RawResponse:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        return read_response(sock)


def refused_once(gateway: GatewayProcess, request_id: str, status: int, code: str) -> None:
    """aigw answered itself: exactly one access-log line, route `-`, the request's path."""
    line = gateway.access_log(request_id)
    assert (line["status"], line["route"], line["path"], line["outcome"]) == (
        status,
        "-",
        V1_CHAT,
        code,
    )
    # Both would be written before the answer left: the count is final.
    lines = [e for e in gateway.events() if e.get("request_id") == request_id]
    assert len(lines) == 1, lines


# --- refusals before any route is known -------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "says"),
    [
        (
            b'{"model": "gpt-5-unknown", "messages": [{"role": "user", "content": "hi"}]}',
            404,
            "model_not_found",
            "model",
            "`gpt-5-unknown`",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}]}',
            400,
            "missing_model",
            "model",
            "choose the route by the body's `model`",
        ),
        (b"model=gpt-4o&messages=hi", 400, "invalid_json", None, "not valid JSON"),
    ],
)
def test_a_body_naming_no_route_is_answered_by_aigw(
    gateway: GatewayProcess,
    mock: MockProcess,
    request_id: str,
    body: bytes,
    status: int,
    code: str,
    param: str | None,
    says: str,
) -> None:
    response = send(gateway, post(body, target=V1_CHAT, request_id=request_id))
    assert response.status == status
    error = error_of(response)
    assert (error["code"], error["param"]) == (code, param)
    assert says in error["message"]
    assert response.header("x-request-id") == request_id
    refused_once(gateway, request_id, status, code)
    assert mock.requests() == []


def test_an_oversized_body_is_413_before_it_is_read(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    size = BODY_LIMIT + 1
    # Only the head goes: the answer must come without the body.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(post_head(size, target=V1_CHAT, request_id=request_id))
        response = read_response(sock)
    assert response.status == 413
    error = error_of(response)
    assert error["code"] == "request_too_large"
    assert response.header("connection") == "close"
    refused_once(gateway, request_id, 413, "request_too_large")
    assert mock.requests() == []


def test_the_sdk_sees_an_unknown_model_as_not_found(gateway: GatewayProcess) -> None:
    client = OpenAI(base_url=f"{gateway.url}/openai/v1/", api_key=CLIENT_KEY, max_retries=0)
    with client, pytest.raises(Exception) as caught:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert type(caught.value).__name__ == "NotFoundError"
    assert getattr(caught.value, "code", None) == "model_not_found"


# --- routed ------------------------------------------------------------------------------


def upstream_request(mock: MockProcess) -> dict[str, Any]:
    """The one request the mock saw, checked to carry the route's key and not the client's."""
    records = mock.requests()
    assert len(records) == 1, [r["path"] for r in records]
    record: dict[str, Any] = records[0]
    headers = record["headers"]
    assert headers.get("api-key") == MockProcess.api_key
    assert CLIENT_KEY not in json.dumps(headers)
    return record


@pytest.mark.parametrize(("model", "deployment"), [("gpt-4o", "gpt-4o"), ("small", "gpt-4.1-mini")])
def test_v1_sdk_chat_reaches_the_deployment_its_model_names(
    gateway: GatewayProcess, mock: MockProcess, request_id: str, model: str, deployment: str
) -> None:
    client = OpenAI(base_url=f"{gateway.url}/openai/v1/", api_key=CLIENT_KEY, max_retries=0)
    with client:
        answer = client.chat.completions.create(
            model=model, messages=MESSAGES, extra_headers={"x-request-id": request_id}
        )
    assert answer.model == SNAPSHOTS[deployment]
    assert answer.choices[0].message.content
    record = upstream_request(mock)
    assert (record["path"], record["deployment"]) == (V1_CHAT, deployment)
    assert "api-version" not in record["query"]
    assert json.loads(record["body"])["model"] == deployment
    line = gateway.access_log(request_id)
    assert (line["route"], line["path"], line["status"]) == (model, V1_CHAT, 200)
    assert answer.usage is not None
    assert line["total_tokens"] == answer.usage.total_tokens


def test_v1_sdk_streaming_chat_sync(
    gateway: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    client = OpenAI(base_url=f"{gateway.url}/openai/v1/", api_key=CLIENT_KEY, max_retries=0)
    with client:
        stream = client.chat.completions.create(
            model="small",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-request-id": request_id},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert {c.model for c in chunks if c.model} == {SNAPSHOTS["gpt-4.1-mini"]}
    record = upstream_request(mock)
    assert (record["path"], record["deployment"]) == (V1_CHAT, "gpt-4.1-mini")
    line = gateway.access_log(request_id)
    assert (line["route"], line["stream"], line["status"]) == ("small", True, 200)
    assert line["completion_tokens"] and line["completion_tokens"] > 0


def test_v1_sdk_chat_and_streaming_async(gateway: GatewayProcess, mock: MockProcess) -> None:
    async def run() -> tuple[str, str]:
        async with AsyncOpenAI(
            base_url=f"{gateway.url}/openai/v1/", api_key=CLIENT_KEY, max_retries=0
        ) as client:
            plain = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            stream = await client.chat.completions.create(
                model="small", messages=MESSAGES, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return plain.model, text

    model, text = asyncio.run(run())
    assert model == SNAPSHOTS["gpt-4o"]
    assert text
    served = sorted((r["path"], r["deployment"]) for r in mock.requests())
    assert served == [(V1_CHAT, "gpt-4.1-mini"), (V1_CHAT, "gpt-4o")]


def test_an_explicit_static_path_beats_the_model_routes_classic_path(
    gateway: GatewayProcess, mock: MockProcess
) -> None:
    client = AzureOpenAI(
        api_key=CLIENT_KEY, azure_endpoint=gateway.url, api_version="2024-10-21", max_retries=0
    )
    with client:
        pinned = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
        small = client.chat.completions.with_raw_response.create(model="small", messages=MESSAGES)
    assert pinned.parse().model == SNAPSHOTS["gpt-4.1-mini"]  # pinned.yaml's deployment
    assert small.parse().model == SNAPSHOTS["gpt-4.1-mini"]
    routes = {}
    for raw in (pinned, small):
        line = gateway.access_log(raw.headers["x-request-id"])
        routes[line["path"]] = line["route"]
    assert routes == {
        "/openai/deployments/gpt-4o/chat/completions": "pinned",
        # The model route's classic path: its model's static segment.
        "/openai/deployments/small/chat/completions": "small",
    }
    paths = sorted(r["path"] for r in mock.requests())
    assert paths == [
        "/openai/deployments/gpt-4.1-mini/chat/completions",
        "/openai/deployments/gpt-4.1-mini/chat/completions",
    ]


# --- hot reload --------------------------------------------------------------------------


def served_by(gateway: GatewayProcess, model: str) -> str:
    """The route serving *model* on the v1 API now, from the access log of one request."""
    client = OpenAI(base_url=f"{gateway.url}/openai/v1/", api_key=CLIENT_KEY, max_retries=0)
    with client:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    route: str = gateway.access_log(raw.headers["x-request-id"])["route"]
    return route


def test_reload_a_second_file_for_a_served_model_is_refused_until_the_first_goes(
    tmp_path: Path, mock: MockProcess
) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "first.yaml").write_text(model_route("first", ["gpt-4o"], "gpt-4o"))
    process = GatewayProcess(conf, "--azure-base-url", mock.url, env=GATEWAY_ENV)
    try:
        assert served_by(process, "gpt-4o") == "first"
        (conf / "second.yaml").write_text(model_route("second", ["gpt-4o"], "gpt-4.1-mini"))

        def second_refused() -> dict[str, Any] | None:
            files: dict[str, Any] = process.status()["files"]
            second = files.get("second.yaml")
            return second if second and second["state"] == "rejected" else None

        second = wait_until(second_refused, timeout=5)
        (error,) = second["error"]
        assert error.endswith(
            "route.models: model `gpt-4o` is already served by route `first` "
            f"({conf / 'first.yaml'})"
        )
        rejected = [e for e in process.events() if e.get("event") == "config_rejected"]
        assert any("model `gpt-4o` is already served" in str(e["issues"]) for e in rejected)
        assert process.status()["files"]["first.yaml"]["models"] == ["gpt-4o"]
        assert served_by(process, "gpt-4o") == "first"

        (conf / "first.yaml").unlink()
        wait_until(
            lambda: process.status()["files"].get("second.yaml", {}).get("state") == "active",
            timeout=5,
        )
        assert served_by(process, "gpt-4o") == "second"
    finally:
        process.close()


# --- aigw check ------------------------------------------------------------------------


def test_check_prints_each_routes_models_and_operations(tmp_path: Path) -> None:
    for name, text in ROUTES.items():
        (tmp_path / name).write_text(text)
    result = run_check(tmp_path, {**os.environ, **GATEWAY_ENV})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "    models: small" in lines
    assert "    * /openai/deployments/small/*" in lines
    assert any(
        line.startswith("    operations (auto, from the request path): llm/v1/chat, ")
        for line in lines
    )
    assert "    operation: llm/v1/chat" in lines  # pinned.yaml, a path route
    assert (
        "    -> https://testresource.openai.azure.com + the request's operation path  "
        "api-version: client's, else 2024-10-21 (on /openai/v1/...: none)"
    ) in lines
