"""What a client cannot make the real gateway do: reach past a route, outstay a deadline, overfill.

Each test drives a real ``aigw serve`` from a raw socket and watches a scripted raw upstream,
so what is asserted is what crossed each wire: the exact upstream request line (or that no
connection was made), the client's status and JSON error, and how long things took.

* A ``preserve`` route on ``/openai/*`` forwards the client's path, so the path it forwards
  must be the normalised one: a dot-segment or an encoded separator must neither climb out of
  ``/openai/`` on the upstream nor reach it in a spelling the upstream may read differently.
* ``--header-timeout`` is the process's own slowloris deadline, not a library default.
* A chunked body is counted as it streams in: the route's limit refuses it before it ends.
* A client that abandons a non-stream request cancels the upstream call at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.harness import GatewayProcess, wait_until
from tests.integration.rawnet import (
    RawResponse,
    ScriptedUpstream,
    chat_body,
    chunk,
    error_of,
    for_each_request,
    gateway_to,
    post,
    post_head,
    raw_request,
    read_head_of_request,
    read_response,
)

HEADER_TIMEOUT_S = 1
BODY_LIMIT = 512
LIMITED_PATH = "/limited/chat/completions"
API_VERSION = "2024-10-21"

PASSTHROUGH_ROUTE = """route:
  name: passthrough
  paths: [/openai/*]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: preserve
          auth: {{header_name: api-key, header_value: upstream-secret-key}}
          model:
            provider: azure
            options:
              upstream_url: {upstream}/
"""

LIMITED_ROUTE = """route:
  name: limited
  paths: [{path}]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:
      max_request_body_size: {limit}
      targets:
        - route_type: llm/v1/chat
          auth: {{header_name: api-key, header_value: upstream-secret-key}}
          model:
            provider: azure
            name: limited
            options:
              upstream_url: {upstream}/openai/deployments/limited/chat/completions
"""

_OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


class RecordingUpstream(ScriptedUpstream):
    """Answers every request 200 on a keep-alive connection and records its request line."""

    def __init__(self) -> None:
        super().__init__(for_each_request(self._answer))
        self.request_lines: list[str] = []

    async def _answer(self, head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        self.request_lines.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
        writer.write(_OK)


@dataclass
class Edge:
    """A gateway with a pass-through route and a body-limited chat route, and its upstream."""

    gateway: GatewayProcess
    upstream: RecordingUpstream


@pytest.fixture(scope="module")
def edge_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    conf = tmp_path_factory.mktemp("guards-conf")
    upstream = RecordingUpstream()
    with upstream:
        (conf / "passthrough.yaml").write_text(PASSTHROUGH_ROUTE.format(upstream=upstream.url))
        (conf / "limited.yaml").write_text(
            LIMITED_ROUTE.format(path=LIMITED_PATH, limit=BODY_LIMIT, upstream=upstream.url)
        )
        gateway = GatewayProcess(conf, "--header-timeout", str(HEADER_TIMEOUT_S))
        try:
            yield Edge(gateway, upstream)
        finally:
            gateway.close()


@pytest.fixture
def edge(edge_process: Edge) -> Edge:
    edge_process.upstream.request_lines.clear()
    return edge_process


# -- path normalisation before routing --------------------------------------------------

UPSTREAM_LINE = "POST {path}?api-version=" + API_VERSION + " HTTP/1.1"

# (client spelling, what reaches the upstream or None, client status, error code)
SPELLINGS = [
    pytest.param("/openai/v1/chat", "/openai/v1/chat", 200, None, id="canonical"),
    # Dot-segments are resolved before routing: these leave /openai/ and match no route.
    pytest.param("/openai/../admin/secret", None, 404, "route_not_found", id="dot-dot"),
    pytest.param("/openai/%2e%2e/admin/secret", None, 404, "route_not_found", id="enc-dot-dot"),
    pytest.param("/openai/%2E%2E/admin/secret", None, 404, "route_not_found", id="ENC-DOT-DOT"),
    pytest.param("/openai/.%2e/admin/secret", None, 404, "route_not_found", id="half-encoded"),
    pytest.param("/openai/v1/../../admin/secret", None, 404, "route_not_found", id="two-up"),
    pytest.param("/openai/..", None, 404, "route_not_found", id="up-to-root"),
    # Whatever could make two parsers disagree about segments is refused outright.
    pytest.param("/openai/..%2fadmin/secret", None, 400, "invalid_path", id="enc-slash"),
    pytest.param("/openai/..%2Fadmin/secret", None, 400, "invalid_path", id="ENC-SLASH"),
    pytest.param("/openai/..%5cadmin/secret", None, 400, "invalid_path", id="enc-backslash"),
    pytest.param("/openai/..\\admin/secret", None, 400, "invalid_path", id="backslash"),
    pytest.param("/openai/%252e%252e/admin", None, 400, "invalid_path", id="double-encoded"),
    pytest.param("/openai/%c0%ae%c0%ae/admin", None, 400, "invalid_path", id="overlong-utf8"),
    pytest.param("/openai;x=1/v1/chat", None, 400, "invalid_path", id="path-parameter"),
    pytest.param("/../openai/v1/chat", None, 400, "invalid_path", id="above-root"),
    # Spellings of a path inside the route reach the upstream in canonical form only.
    pytest.param("//openai//v1//chat", "/openai/v1/chat", 200, None, id="double-slashes"),
    pytest.param("/openai/./v1/chat", "/openai/v1/chat", 200, None, id="dot"),
    pytest.param("/openai/x/%2E%2E/v1/chat", "/openai/v1/chat", 200, None, id="enc-dot-dot-in"),
    pytest.param("/openai/%76%31/%63hat", "/openai/v1/chat", 200, None, id="enc-unreserved"),
    pytest.param("/openai/v1/%7e%41", "/openai/v1/~A", 200, None, id="enc-tilde"),
]


@pytest.mark.parametrize(("spelling", "forwarded", "status", "code"), SPELLINGS)
def test_passthrough_forwards_only_the_normalised_path(
    edge: Edge, spelling: str, forwarded: str | None, status: int, code: str | None
) -> None:
    response = raw_request(edge.gateway.port, post(target=f"{spelling}?api-version={API_VERSION}"))
    assert response.status == status, response.body
    if forwarded is None:
        assert error_of(response)["code"] == code
        assert edge.upstream.request_lines == []
    else:
        assert response.body == b'{"ok":true}'
        assert edge.upstream.request_lines == [UPSTREAM_LINE.format(path=forwarded)]


def test_not_found_names_the_normalised_path(edge: Edge) -> None:
    """The 404 says which path was looked up: the resolved one, not the client's spelling."""
    response = raw_request(edge.gateway.port, post(target="/openai/%2e%2e/admin/./secret"))
    assert error_of(response)["message"] == "no route for POST /admin/secret"


# -- the request-head deadline of the real process ----------------------------------------


def test_half_sent_head_is_answered_408_within_the_header_timeout(edge: Edge) -> None:
    with socket.create_connection(("127.0.0.1", edge.gateway.port), timeout=10) as sock:
        sock.sendall(f"POST {LIMITED_PATH} HTTP/1.1\r\nHost: aigw\r\n".encode())
        started = time.monotonic()
        response = read_response(sock, timeout=10)
        elapsed = time.monotonic() - started
        assert response.status == 408
        assert sock.recv(1) == b"", "the connection is closed after the 408"
    # The deadline is --header-timeout (1 s), not the 10 s default; slack for a loaded machine.
    assert elapsed < HEADER_TIMEOUT_S + 2.5, elapsed


def test_silent_connection_is_closed_within_the_header_timeout(edge: Edge) -> None:
    with socket.create_connection(("127.0.0.1", edge.gateway.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 2.5


# -- a chunked body is counted as it streams ---------------------------------------------


LIMITED_CHUNKED_HEAD = post_head(None, target=f"{LIMITED_PATH}?api-version={API_VERSION}")


def _assert_too_large(response: RawResponse) -> None:
    assert response.status == 413, response.body
    error = error_of(response)
    assert error["code"] == "request_too_large"
    assert f"max_request_body_size ({BODY_LIMIT} bytes)" in str(error["message"])


def test_complete_chunked_body_over_the_limit_is_413(edge: Edge) -> None:
    """Valid JSON, so only the byte count stands between it and the upstream."""
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 2 * BODY_LIMIT}]}).encode()
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
    request = LIMITED_CHUNKED_HEAD + b"".join(map(chunk, pieces)) + b"0\r\n\r\n"
    _assert_too_large(raw_request(edge.gateway.port, request))
    assert edge.upstream.request_lines == []


def test_chunked_body_is_refused_once_it_crosses_the_limit_not_at_its_end(edge: Edge) -> None:
    """No Content-Length to refuse up front: the bytes must be counted as they arrive."""
    with socket.create_connection(("127.0.0.1", edge.gateway.port), timeout=10) as sock:
        sock.sendall(LIMITED_CHUNKED_HEAD)
        sock.sendall(chunk(b'{"messages": [{"role": "user", "content": "'))
        for _ in range(BODY_LIMIT // 100 + 2):
            sock.sendall(chunk(b"x" * 100))
        # The body never ends: only counting the streamed bytes can answer it.
        _assert_too_large(read_response(sock, timeout=5))
    assert edge.upstream.request_lines == []


# -- a client that abandons a non-stream request -----------------------------------------


@dataclass
class StalledUpstream:
    """Reads the request, then waits up to 10 s for the gateway to hang up before answering."""

    received: threading.Event = field(default_factory=threading.Event)
    closed_at: list[float] = field(default_factory=list)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head_of_request(reader)
        self.received.set()
        try:
            if await asyncio.wait_for(reader.read(1), 10) == b"":
                self.closed_at.append(time.monotonic())
                return
        except TimeoutError:
            pass
        writer.write(_OK)
        await writer.drain()


def test_abandoned_non_stream_request_cancels_the_upstream_call(tmp_path: Path) -> None:
    stalled = StalledUpstream()
    with (
        ScriptedUpstream(stalled) as upstream,
        gateway_to(upstream.url, tmp_path / "conf", read_timeout=30000) as gateway,
    ):
        request = post(chat_body(), request_id="abandoned")
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(request)
            assert stalled.received.wait(5), "the request reached the upstream"
            time.sleep(0.3)
        left_at = time.monotonic()  # the client's socket is closed
        wait_until(lambda: stalled.closed_at, timeout=5)
        assert stalled.closed_at[0] - left_at < 2.0
        line = gateway.access_log("abandoned")
        assert (line["status"], line["outcome"], line["stream"]) == (
            499,
            "client_disconnect",
            False,
        )
