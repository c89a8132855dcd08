"""Failover across a pool of "regions": raw scripted upstreams, a real aigw, the real openai SDK.

Each region is a :class:`ScriptedUpstream` that answers from a queue of canned
responses (then its default) and keeps every request head it received, so a
test can say exactly which region was sent what. The SDK runs with
``max_retries=0``: any success after a region's failure is aigw's failover,
not the SDK's own retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import AzureOpenAI

from tests.integration.harness import GatewayProcess
from tests.integration.rawnet import (
    COMPLETION_ANSWER,
    ScriptedUpstream,
    chunk,
    for_each_request,
)
from tests.integration.test_sdk import OPEN_CLIENTS, QUESTION

API_VERSION = "2024-10-21"
STREAM_CUT = b"<cut>"
"""A canned answer that means: start a stream, send one event, then drop the connection."""


def error_answer(status: int, *headers: str) -> bytes:
    body = json.dumps({"error": {"code": str(status), "message": f"upstream {status}"}}).encode()
    head = "".join(f"{header}\r\n" for header in headers)
    return (
        f"HTTP/1.1 {status} Upstream\r\nContent-Type: application/json\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def too_many(seconds: int) -> bytes:
    return error_answer(429, f"retry-after: {seconds}", f"retry-after-ms: {seconds * 1000}")


_DELTA = json.dumps(
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": "hel"}, "finish_reason": None}],
    }
).encode()


_STREAM_BODY = (
    b"data: " + _DELTA + b"\n\n"
    b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"gpt-4o",'
    b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
    b"data: [DONE]\n\n"
)
STREAM_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
    % len(_STREAM_BODY)
) + _STREAM_BODY
"""A whole, short chat stream: one delta, the usage chunk, [DONE]."""


class Region:
    """One upstream: answers ``queue`` first, then ``default``; records request heads."""

    def __init__(self, name: str, default: bytes = COMPLETION_ANSWER) -> None:
        self.name = name
        self.default = default
        self.queue: list[bytes] = []
        self.heads: list[bytes] = []
        self.times: list[float] = []
        self.upstream = ScriptedUpstream(for_each_request(self._answer))

    async def _answer(self, head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        self.heads.append(head)
        self.times.append(time.monotonic())
        answer = self.queue.pop(0) if self.queue else self.default
        if answer == STREAM_CUT:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunk(b"data: " + _DELTA + b"\n\n")
            )
            await writer.drain()
            await asyncio.sleep(0.2)
            raise ConnectionResetError  # ends the script: the connection closes mid-body
        writer.write(answer)

    @property
    def url(self) -> str:
        return self.upstream.url


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def route_yaml(name: str, regions: list[tuple[str, str, int]], balancer: str) -> str:
    """A route ``name`` (deployment path ``/openai/deployments/{name}/...``) over *regions*:
    (instance name, base URL, weight)."""
    targets = "".join(
        f"""
        - weight: {weight}
          route_type: llm/v1/chat
          auth: {{header_name: api-key, header_value: key-of-{instance}}}
          connect_timeout: 2000
          read_timeout: 5000
          model:
            provider: azure
            name: {name}
            options:
              azure_instance: {instance}
              azure_deployment_id: {name}-{instance}
              upstream_url: {url}/openai/deployments/{name}-{instance}/chat/completions"""
        for instance, url, weight in regions
    )
    return f"""route:
  name: {name}
  paths: [/openai/deployments/{name}/chat/completions]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:
      balancer:
{balancer}
      targets:{targets}
"""


LENIENT = """        algorithm: priority
        retries: 2
        failover_criteria: [error, timeout, http_429, http_500, http_503, non_idempotent]"""
STRICT = """        algorithm: priority
        retries: 2
        failover_criteria: [error, timeout, http_429, http_500, http_503]"""


@pytest.fixture
def regions() -> Iterator[dict[str, Region]]:
    with contextlib.ExitStack() as stack:
        found = {name: Region(name) for name in ("sweden", "eastus", "japan")}
        for region in found.values():
            stack.enter_context(region.upstream)
        yield found


def serve(tmp_path: Path, *routes: str) -> GatewayProcess:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    for index, text in enumerate(routes):
        (conf / f"route{index}.yaml").write_text(text)
    return GatewayProcess(conf)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.close()


def client(gateway: GatewayProcess) -> AzureOpenAI:
    sdk = AzureOpenAI(
        api_key="client-key-never-forwarded",
        azure_endpoint=gateway.url,
        api_version=API_VERSION,
        max_retries=0,
        timeout=20,
    )
    OPEN_CLIENTS.append(sdk)
    return sdk


def ask(gateway: GatewayProcess, model: str, request_id: str) -> str | None:
    response = client(gateway).chat.completions.create(
        model=model, messages=QUESTION, extra_headers={"x-request-id": request_id}
    )
    return response.choices[0].message.content


def keys_sent(region: Region) -> set[str]:
    keys = set()
    for head in region.heads:
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"api-key", b"authorization"):
                keys.add(value.strip().decode())
    return keys


def two_regions(regions: dict[str, Region], name: str = "pool", balancer: str = LENIENT) -> str:
    # Priority: sweden (200) first, eastus only when sweden fails or cools down.
    return route_yaml(
        name,
        [("sweden", regions["sweden"].url, 200), ("eastus", regions["eastus"].url, 100)],
        balancer,
    )


def test_429_is_served_by_the_other_region_and_the_cooling_one_gets_nothing(
    tmp_path: Path, regions: dict[str, Region], gateway_factory: list[GatewayProcess]
) -> None:
    sweden, eastus = regions["sweden"], regions["eastus"]
    sweden.queue = [too_many(2)]
    gateway = serve(tmp_path, two_regions(regions))
    gateway_factory.append(gateway)
    started = time.monotonic()
    for index in range(6):  # zero SDK errors, with the SDK's own retries off
        assert ask(gateway, "pool", f"cool-{index}") == "hello"
    assert len(sweden.heads) == 1  # the 429, then nothing while it cools down
    assert len(eastus.heads) == 6
    line = gateway.access_log("cool-0")
    assert line["status"] == 200 and line["target"] == "eastus"
    assert [(a["target"], a["status"]) for a in line["attempts"]] == [
        ("sweden", 429),
        ("eastus", 200),
    ]
    assert [(a["target"], a["status"]) for a in gateway.access_log("cool-5")["attempts"]] == [
        ("eastus", 200)
    ]
    # Past its retry-after, sweden (the higher priority) takes the traffic back.
    time.sleep(max(0.0, started + 2.2 - time.monotonic()))
    assert ask(gateway, "pool", "back") == "hello"
    assert gateway.access_log("back")["target"] == "sweden"
    assert sweden.times[1] - sweden.times[0] >= 1.9
    # Each region's key went to that region only; the client's key to none.
    assert keys_sent(sweden) == {"key-of-sweden"}
    assert keys_sent(eastus) == {"key-of-eastus"}


def test_every_region_cooling_is_a_429_at_once_with_the_smallest_retry_after(
    tmp_path: Path, regions: dict[str, Region], gateway_factory: list[GatewayProcess]
) -> None:
    regions["sweden"].queue = [too_many(3)]
    regions["eastus"].queue = [too_many(1)]
    gateway = serve(tmp_path, two_regions(regions))
    gateway_factory.append(gateway)
    with pytest.raises(openai.RateLimitError) as first:
        ask(gateway, "pool", "all-1")
    # The last attempt's answer is relayed as Azure sent it.
    assert first.value.response.headers["retry-after"] == "1"
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as second:
        ask(gateway, "pool", "all-2")
    assert time.monotonic() - started < 1.0  # no queueing
    assert second.value.code == "all_targets_rate_limited"
    assert second.value.response.headers["retry-after"] == "1"
    assert 0 < int(second.value.response.headers["retry-after-ms"]) <= 1000
    assert len(regions["sweden"].heads) + len(regions["eastus"].heads) == 2
    assert gateway.access_log("all-2")["attempts"] == []
    # The SDK's own retry waits that long, then eastus answers.
    sdk = AzureOpenAI(
        api_key="k", azure_endpoint=gateway.url, api_version=API_VERSION, max_retries=2
    )
    OPEN_CLIENTS.append(sdk)
    assert sdk.chat.completions.create(model="pool", messages=QUESTION).choices


def test_5xx_fails_over_only_with_non_idempotent(
    tmp_path: Path, regions: dict[str, Region], gateway_factory: list[GatewayProcess]
) -> None:
    sweden, eastus = regions["sweden"], regions["eastus"]
    sweden.default = error_answer(503)
    gateway = serve(
        tmp_path,
        two_regions(regions, "lenient", LENIENT),
        two_regions(regions, "strict", STRICT),
    )
    gateway_factory.append(gateway)
    assert ask(gateway, "lenient", "lenient-503") == "hello"
    assert [a["status"] for a in gateway.access_log("lenient-503")["attempts"]] == [503, 200]
    before = len(eastus.heads)
    with pytest.raises(openai.InternalServerError) as info:
        ask(gateway, "strict", "strict-503")
    assert info.value.status_code == 503 and len(eastus.heads) == before
    sweden.default = error_answer(500)
    assert ask(gateway, "lenient", "lenient-500") == "hello"
    with pytest.raises(openai.InternalServerError):
        ask(gateway, "strict", "strict-500")
    assert len(eastus.heads) == before + 1


def test_connection_refused_moves_on_even_without_non_idempotent(
    tmp_path: Path, regions: dict[str, Region], gateway_factory: list[GatewayProcess]
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    gateway = serve(
        tmp_path,
        route_yaml(
            "strict", [("sweden", dead, 200), ("eastus", regions["eastus"].url, 100)], STRICT
        ),
    )
    gateway_factory.append(gateway)
    for index in range(3):
        assert ask(gateway, "strict", f"refused-{index}") == "hello"
    attempts = gateway.access_log("refused-0")["attempts"]
    assert [(a["target"], a["status"], a["error"]) for a in attempts] == [
        ("sweden", None, "upstream_unreachable"),
        ("eastus", 200, None),
    ]


def test_no_failover_on_a_client_error(
    tmp_path: Path, regions: dict[str, Region], gateway_factory: list[GatewayProcess]
) -> None:
    regions["sweden"].queue = [error_answer(400)]
    gateway = serve(tmp_path, two_regions(regions))
    gateway_factory.append(gateway)
    with pytest.raises(openai.BadRequestError):
        ask(gateway, "pool", "client-error")
    assert regions["eastus"].heads == []
    # Nor on aigw's own: a body model no region serves is a 400 naming the one served.
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(
            model="pool", messages=QUESTION, extra_body={"model": "gpt-5"}
        )
    assert "'pool'" in str(info.value) and len(regions["sweden"].heads) == 1
    assert regions["eastus"].heads == []


def test_no_failover_after_the_first_streamed_byte(
    tmp_path: Path, regions: dict[str, Region], gateway_factory: list[GatewayProcess]
) -> None:
    regions["sweden"].queue = [STREAM_CUT]
    gateway = serve(tmp_path, two_regions(regions))
    gateway_factory.append(gateway)
    stream = client(gateway).chat.completions.create(
        model="pool", messages=QUESTION, stream=True, extra_headers={"x-request-id": "cut"}
    )
    received = []
    with pytest.raises((openai.APIError, openai.APIConnectionError)):
        for delta in stream:
            received.append(delta)
    assert len(received) == 1
    assert regions["eastus"].heads == []
    line = gateway.access_log("cut")
    assert line["outcome"] == "upstream_reset" and line["target"] == "sweden"


def test_retries_exhausted_relay_the_last_answer(
    tmp_path: Path, regions: dict[str, Region], gateway_factory: list[GatewayProcess]
) -> None:
    for region in regions.values():
        region.default = error_answer(503)
    three = route_yaml(
        "pool",
        [
            ("sweden", regions["sweden"].url, 300),
            ("eastus", regions["eastus"].url, 200),
            ("japan", regions["japan"].url, 100),
        ],
        LENIENT.replace("retries: 2", "retries: 1"),
    )
    gateway = serve(tmp_path, three)
    gateway_factory.append(gateway)
    with pytest.raises(openai.InternalServerError) as info:
        ask(gateway, "pool", "exhausted")
    assert info.value.status_code == 503
    assert json.loads(info.value.response.content)["error"]["message"] == "upstream 503"
    assert (len(regions["sweden"].heads), len(regions["eastus"].heads)) == (1, 1)
    assert regions["japan"].heads == []
    line = gateway.access_log("exhausted")
    assert [a["target"] for a in line["attempts"]] == ["sweden", "eastus"]
    assert line["target"] == "eastus" and line["status"] == 503


def test_a_stream_fails_over_before_its_first_byte(
    tmp_path: Path, regions: dict[str, Region], gateway_factory: list[GatewayProcess]
) -> None:
    regions["sweden"].queue = [too_many(2)]
    regions["eastus"].default = STREAM_ANSWER
    gateway = serve(tmp_path, two_regions(regions))
    gateway_factory.append(gateway)
    stream = client(gateway).chat.completions.create(
        model="pool", messages=QUESTION, stream=True, extra_headers={"x-request-id": "s429"}
    )
    text = "".join(delta.choices[0].delta.content or "" for delta in stream if delta.choices)
    assert text == "hel"
    line = gateway.access_log("s429")
    assert [(a["target"], a["status"]) for a in line["attempts"]] == [
        ("sweden", 429),
        ("eastus", 200),
    ]
    assert line["outcome"] == "ok" and line["target"] == "eastus"
