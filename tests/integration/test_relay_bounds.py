"""What an upstream's answer can cost the gateway: bounded memory and time, whatever its size.

Each test drives a real ``aigw serve`` from a raw socket against a scripted raw upstream and
asserts what crossed the client's wire (status, framing, bytes, the error event) and what the
gateway's resident memory did meanwhile (read from /proc while the transfer runs).

* A non-streaming body is relayed as it arrives with the upstream's framing, so RSS does not
  grow with the body (256 MiB) and the first bytes reach the client before the last are sent.
* ``--max-response-size`` refuses an announced length with a 502 before anything is sent,
  and cuts a body (or stream) that grows past it as an error the client notices.
* One SSE event is capped (``--max-event-size``, default 1 MiB): a huge one ends the stream
  with an error event at once, in linear time and bounded memory, hidden usage chunk or not.
* SSE is recognised whatever the media type's case, and CR-only line ends split events.
* A 502 says nothing about the upstream (no host, port or fragment of its head) but the
  request id; the access log has the detail.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import pytest

from tests.integration.harness import GatewayProcess
from tests.integration.rawnet import (
    PeakRss,
    RawResponse,
    ScriptedUpstream,
    case_request,
    chunk,
    for_each_request,
    gateway_to,
    new_request_id,
    raw_request,
    read_response,
    rss_kib,
)

MiB = 1024 * 1024
MAX_RESPONSE = 1 * MiB  # the limited gateway's --max-response-size
PAYLOADS_PATH = "/openai/deployments/payloads/chat/completions"
PAYLOADS_TARGET = f"{PAYLOADS_PATH}?api-version=2024-10-21"

Case = Callable[[asyncio.StreamWriter], Awaitable[None]]
"""What the scripted upstream answers for one request (its request already read)."""

CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    """Registers an upstream answer under its function name (the request's ``user`` field)."""
    CASES[function.__name__] = function
    return function


async def _answer_case(_head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
    await CASES[json.loads(body)["user"]](writer)


# -- upstream answers ----------------------------------------------------------------------

USAGE = {"completion_tokens": 5, "prompt_tokens": 3, "total_tokens": 8}
BODY_PREFIX = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"'
BODY_SUFFIX = (
    b'"}}],"created":1,"id":"x","model":"gpt-big","object":"chat.completion","usage":'
    + json.dumps(USAGE).encode()
    + b"}"
)
BLOCK = b"a" * MiB


def _head(content_type: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n".encode()


async def _json_body(writer: asyncio.StreamWriter, size: int, *, chunked: bool) -> None:
    """A completion of exactly *size* body bytes, written a block at a time (never held whole)."""
    filler = size - len(BODY_PREFIX) - len(BODY_SUFFIX)
    assert filler >= 0, size
    wrap = chunk if chunked else bytes
    writer.write(_head("application/json", None if chunked else size) + wrap(BODY_PREFIX))
    while filler > 0:
        block = BLOCK[: min(filler, len(BLOCK))]
        filler -= len(block)
        writer.write(wrap(block))
        await writer.drain()
    writer.write(wrap(BODY_SUFFIX) + (b"0\r\n\r\n" if chunked else b""))


@case
async def json_256mib(writer: asyncio.StreamWriter) -> None:
    await _json_body(writer, 256 * MiB, chunked=False)


@case
async def json_chunked_pieces(writer: asyncio.StreamWriter) -> None:
    await _json_body(writer, 3 * MiB // 4, chunked=True)


@case
async def json_announced_too_large(writer: asyncio.StreamWriter) -> None:
    await _json_body(writer, 2 * MiB, chunked=False)


@case
async def json_small(writer: asyncio.StreamWriter) -> None:
    await _json_body(writer, 400, chunked=False)


@case
async def json_payload_logged(writer: asyncio.StreamWriter) -> None:
    await _json_body(writer, MiB // 2, chunked=False)


CLIENT_SAW_BODY = threading.Event()
"""Set by the paced test's client on its first body bytes."""

UPSTREAM_WAITED_OUT: dict[str, bool] = {}


@case
async def json_paced(writer: asyncio.StreamWriter) -> None:
    """Sends 1 of 4 MiB, then holds the rest until the client has seen body bytes."""
    size = 4 * MiB
    writer.write(_head("application/json", size) + BODY_PREFIX + BLOCK[: MiB - len(BODY_PREFIX)])
    await writer.drain()
    seen = await asyncio.to_thread(CLIENT_SAW_BODY.wait, 5)
    UPSTREAM_WAITED_OUT["paced"] = not seen
    writer.write(BLOCK + BLOCK + BLOCK[: MiB - len(BODY_SUFFIX)] + BODY_SUFFIX)


SENT: dict[str, int] = {}


@case
async def json_chunked_endless(writer: asyncio.StreamWriter) -> None:
    """Chunks of 256 KiB, up to 64 MiB or until the gateway hangs up."""
    writer.write(_head("application/json", None))
    SENT["endless"] = 0
    piece = chunk(BLOCK[: 256 * 1024])
    for _ in range(256):
        writer.write(piece)
        SENT["endless"] += 256 * 1024
        await writer.drain()
    writer.write(b"0\r\n\r\n")


def _delta(content: str, *, model: str = "gpt-sse") -> bytes:
    event = {"choices": [{"delta": {"content": content}, "index": 0}], "model": model}
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


USAGE_EVENT = (
    b'data: {"choices":[],"model":"gpt-sse","usage":' + json.dumps(USAGE).encode() + b"}\n\n"
)


@case
async def sse_huge_event(writer: asyncio.StreamWriter) -> None:
    """Two deltas, then one event that never ends (up to 256 MiB, or until hung up on)."""
    writer.write(_head("text/event-stream", None) + chunk(_delta("Hel") + _delta("lo")))
    writer.write(chunk(b'data: {"choices":[{"delta":{"content":"'))
    SENT["huge_event"] = 0
    piece = chunk(b"x" * (64 * 1024))
    for _ in range(4096):
        writer.write(piece)
        SENT["huge_event"] += 64 * 1024
        await writer.drain()


@case
async def sse_too_long(writer: asyncio.StreamWriter) -> None:
    """Up to 8 MiB of 4 KiB deltas: past the limited gateway's 1 MiB response size."""
    writer.write(_head("text/event-stream", None))
    event = chunk(_delta("y" * 4000))
    for _ in range(2048):
        writer.write(event)
        await writer.drain()
    writer.write(chunk(USAGE_EVENT + b"data: [DONE]\n\n") + b"0\r\n\r\n")


CR_EVENTS = [
    _delta("Hi").replace(b"\n", b"\r"),
    b": a comment\rdata: "
    + json.dumps({"choices": [{"delta": {"content": "!"}}]}).encode()
    + b"\r\r",
    USAGE_EVENT.replace(b"\n", b"\r"),
    b"data: [DONE]\r\r",
]


@case
async def sse_cr_only(writer: asyncio.StreamWriter) -> None:
    """CR-only line ends, cut mid-event and between the two CRs of a blank line."""
    wire = b"".join(CR_EVENTS)
    writer.write(_head("text/event-stream", None))
    cut = len(CR_EVENTS[0]) - 1
    for piece in (wire[:7], wire[7:cut], wire[cut:]):
        writer.write(chunk(piece))
        await writer.drain()
        await asyncio.sleep(0.05)  # separate reads at the gateway
    writer.write(b"0\r\n\r\n")


MIXED_CASE_EVENTS = [_delta("Hi"), _delta(" there"), USAGE_EVENT, b"data: [DONE]\n\n"]


@case
async def sse_mixed_case_type(writer: asyncio.StreamWriter) -> None:
    writer.write(_head("Text/Event-Stream; Charset=UTF-8", None))
    for event in MIXED_CASE_EVENTS:
        writer.write(chunk(event))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


@case
async def broken_head(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: leaked-fragment-7f3a\r\n\r\n")


# -- fixtures and client helpers -----------------------------------------------------------

PAYLOADS_ROUTE = """route:
  name: payloads
  paths: [{path}]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: llm/v1/chat
          auth: {{header_name: api-key, header_value: upstream-secret-key}}
          logging: {{log_payloads: true}}
          model:
            provider: azure
            name: payloads
            options:
              upstream_url: {upstream}/openai/deployments/payloads/chat/completions
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(for_each_request(_answer_case)) as server:
        yield server


@pytest.fixture(scope="module")
def limited(
    upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway with ``--max-response-size 1 MiB`` and the default 1 MiB event cap."""
    conf = tmp_path_factory.mktemp("limited")
    (conf / "payloads.yaml").write_text(
        PAYLOADS_ROUTE.format(path=PAYLOADS_PATH, upstream=upstream.url)
    )
    with gateway_to(upstream.url, conf, "--max-response-size", str(MAX_RESPONSE)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def unlimited(
    upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway with the default limits."""
    with gateway_to(upstream.url, tmp_path_factory.mktemp("unlimited")) as gateway:
        yield gateway


@dataclass
class CountedResponse:
    """A response whose body was counted, not kept: its size, first and last bytes."""

    response: RawResponse
    size: int = 0
    first: bytes = b""
    last: bytes = b""


class _Counter:
    def __init__(self, counted: CountedResponse, on_body: Callable[[], None]) -> None:
        self.counted = counted
        self.on_body_seen = on_body

    def on_header(self, name: bytes, value: bytes) -> None:
        self.counted.response.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        counted = self.counted
        if len(counted.first) < 256:
            counted.first = (counted.first + body)[:256]
        counted.last = (counted.last + body)[-256:]
        counted.size += len(body)
        self.on_body_seen()

    def on_message_complete(self) -> None:
        self.counted.response.complete = True


def read_counted(
    sock: socket.socket, timeout: float, on_body: Callable[[], None] = lambda: None
) -> CountedResponse:
    """Reads one response of any size from *sock*, keeping only its framing and ends."""
    counted = CountedResponse(RawResponse())
    parser = httptools.HttpResponseParser(_Counter(counted, on_body))
    deadline = time.monotonic() + timeout
    while not counted.response.complete:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        data = sock.recv(MiB)
        if not data:
            break
        parser.feed_data(data)
    counted.response.status = parser.get_status_code()
    return counted


def _idle_rss(gateway: GatewayProcess, upstream: ScriptedUpstream) -> int:
    """RSS after one small request has warmed every code path."""
    assert raw_request(gateway.port, case_request("json_small", new_request_id())).status == 200
    return rss_kib(gateway.proc.pid)


def _error_event(body: bytes) -> dict[str, object]:
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"data: "), body[-300:]
    error: dict[str, object] = json.loads(last[6:])["error"]
    return error


# -- non-streaming bodies ------------------------------------------------------------------


def test_256_mib_body_is_relayed_with_bounded_rss(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    """The default limits relay 256 MiB with the upstream's length; RSS stays < idle + 64 MiB."""
    with gateway_to(upstream.url, tmp_path / "conf") as gateway:
        idle = _idle_rss(gateway, upstream)
        request_id = new_request_id()
        started = time.monotonic()
        with (
            PeakRss(gateway.proc.pid) as rss,
            socket.create_connection(("127.0.0.1", gateway.port)) as sock,
        ):
            sock.sendall(case_request("json_256mib", request_id))
            counted = read_counted(sock, timeout=60)
        elapsed = time.monotonic() - started
        response = counted.response
        assert response.status == 200
        assert response.complete
        assert response.header("Content-Length") == str(256 * MiB)
        assert response.header("Transfer-Encoding") is None
        assert counted.size == 256 * MiB
        assert counted.first == BODY_PREFIX + b"a" * (256 - len(BODY_PREFIX))
        assert counted.last.endswith(BODY_SUFFIX)
        growth_mib = (rss.peak - idle) / 1024
        assert growth_mib < 64, f"RSS grew {growth_mib:.0f} MiB for a 256 MiB body"
        line = gateway.access_log(request_id)
        assert (line["status"], line["outcome"], line["bytes_out"]) == (200, "ok", 256 * MiB)
        # usage is the body's last key: read from the kept tail.
        assert (line["response_model"], line["total_tokens"]) == ("gpt-big", 8)
        print(
            f"256 MiB relayed in {elapsed:.1f} s, RSS idle {idle} KiB, peak +{growth_mib:.1f} MiB"
        )


def test_body_reaches_the_client_while_the_upstream_still_sends(
    unlimited: GatewayProcess,
) -> None:
    CLIENT_SAW_BODY.clear()
    UPSTREAM_WAITED_OUT.clear()
    with socket.create_connection(("127.0.0.1", unlimited.port)) as sock:
        sock.sendall(case_request("json_paced", new_request_id()))
        counted = read_counted(sock, timeout=15, on_body=CLIENT_SAW_BODY.set)
    assert UPSTREAM_WAITED_OUT["paced"] is False, "no body byte reached the client before the end"
    assert counted.response.complete
    assert counted.size == 4 * MiB
    assert counted.last.endswith(BODY_SUFFIX)


def test_chunked_body_keeps_chunked_framing_and_its_usage(unlimited: GatewayProcess) -> None:
    request_id = new_request_id()
    with socket.create_connection(("127.0.0.1", unlimited.port)) as sock:
        sock.sendall(case_request("json_chunked_pieces", request_id))
        counted = read_counted(sock, timeout=10)
        response = counted.response
        assert response.status == 200 and response.complete
        assert response.header("Transfer-Encoding") == "chunked"
        assert response.header("Content-Length") is None
        assert counted.size == 3 * MiB // 4
        # The connection is still in step: the next answer on it is whole and correct.
        sock.sendall(case_request("json_small", new_request_id()))
        following = read_response(sock)
        assert following.status == 200 and following.body.endswith(BODY_SUFFIX)
    line = unlimited.access_log(request_id)
    assert (line["outcome"], line["response_model"], line["prompt_tokens"]) == ("ok", "gpt-big", 3)


def test_announced_length_over_the_limit_is_refused_before_relaying(
    limited: GatewayProcess,
) -> None:
    request_id = new_request_id()
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(case_request("json_announced_too_large", request_id))
        response = read_response(sock)
        assert response.status == 502
        error = json.loads(response.body)["error"]
        assert error["code"] == "upstream_response_too_large"
        assert request_id in error["message"]
        # Answered whole, so the client's connection goes on.
        sock.sendall(case_request("json_small", new_request_id()))
        assert read_response(sock).status == 200
    line = limited.access_log(request_id)
    assert (line["status"], line["outcome"]) == (502, "upstream_response_too_large")
    assert str(2 * MiB) in line["error"]


def test_body_growing_past_the_limit_is_cut_as_an_error(limited: GatewayProcess) -> None:
    request_id = new_request_id()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(case_request("json_chunked_endless", request_id))
        counted = read_counted(sock, timeout=10)
    assert time.monotonic() - started < 5
    response = counted.response
    assert response.status == 200  # the head had gone out before the limit was crossed
    assert not response.complete, "a cut body must not end with a clean chunked terminator"
    assert counted.size <= MAX_RESPONSE
    line = limited.access_log(request_id)
    assert line["outcome"] == "upstream_response_too_large"
    # The gateway hung up on the upstream instead of draining its 64 MiB.
    assert SENT["endless"] < 32 * MiB


def test_logged_payload_is_capped(limited: GatewayProcess) -> None:
    request_id = new_request_id()
    response = raw_request(
        limited.port, case_request("json_payload_logged", request_id, target=PAYLOADS_TARGET)
    )
    assert response.status == 200 and len(response.body) == MiB // 2
    logged = limited.access_log(request_id)["response_body"]
    assert logged.startswith(BODY_PREFIX.decode())
    assert len(logged) < 65 * 1024
    assert logged.endswith(f"...[aigw: {MiB // 2 - 64 * 1024} more bytes not logged]")


# -- streams -------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True], ids=["usage-hidden", "usage-asked"])
def test_huge_event_ends_the_stream_with_an_error_event(
    unlimited: GatewayProcess, include_usage: bool
) -> None:
    """Default 1 MiB event cap: an endless event is refused at once, in bounded memory."""
    idle = rss_kib(unlimited.proc.pid)
    request_id = new_request_id()
    # Without stream_options the gateway asks for usage itself and hides the chunk.
    asked: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    started = time.monotonic()
    with PeakRss(unlimited.proc.pid) as rss:
        response = raw_request(
            unlimited.port, case_request("sse_huge_event", request_id, stream=True, **asked)
        )
    elapsed = time.monotonic() - started
    assert elapsed < 5
    assert response.status == 200
    assert not response.complete
    # Whole events only: the error event follows the two deltas, no byte of the huge one.
    deltas = _delta("Hel") + _delta("lo")
    assert response.body.startswith(deltas)
    assert b"xxxx" not in response.body
    error = _error_event(response.body)
    assert error["code"] == "upstream_event_too_large"
    assert response.body == deltas + response.body[len(deltas) :]
    assert (rss.peak - idle) / 1024 < 32
    line = unlimited.access_log(request_id)
    assert line["outcome"] == "upstream_event_too_large"
    assert SENT["huge_event"] < 64 * MiB


def test_stream_growing_past_the_limit_ends_with_an_error_event(limited: GatewayProcess) -> None:
    request_id = new_request_id()
    response = raw_request(limited.port, case_request("sse_too_long", request_id, stream=True))
    assert response.status == 200
    assert not response.complete
    assert _error_event(response.body)["code"] == "upstream_response_too_large"
    assert len(response.body) <= MAX_RESPONSE + 1024
    assert limited.access_log(request_id)["outcome"] == "upstream_response_too_large"


def test_cr_only_stream_is_split_relayed_and_its_usage_logged(unlimited: GatewayProcess) -> None:
    request_id = new_request_id()
    response = raw_request(unlimited.port, case_request("sse_cr_only", request_id, stream=True))
    assert response.status == 200 and response.complete
    # Byte for byte, less the usage chunk aigw asked for on the client's behalf.
    assert response.body == b"".join(e for e in CR_EVENTS if e != CR_EVENTS[2])
    line = unlimited.access_log(request_id)
    assert line["outcome"] == "ok"
    assert (line["response_model"], line["prompt_tokens"], line["total_tokens"]) == (
        "gpt-sse",
        3,
        8,
    )
    assert line["ttft_ms"] is not None


def test_event_stream_media_type_is_case_insensitive(unlimited: GatewayProcess) -> None:
    request_id = new_request_id()
    response = raw_request(
        unlimited.port, case_request("sse_mixed_case_type", request_id, stream=True)
    )
    assert response.status == 200 and response.complete
    assert response.header("X-Accel-Buffering") == "no"  # relayed as a stream
    assert response.body == b"".join(e for e in MIXED_CASE_EVENTS if e != USAGE_EVENT)
    line = unlimited.access_log(request_id)
    assert (line["outcome"], line["total_tokens"]) == ("ok", 8)


# -- what a 502 tells the client -----------------------------------------------------------


def test_502_names_the_request_id_and_nothing_of_the_upstream(
    unlimited: GatewayProcess, upstream: ScriptedUpstream
) -> None:
    request_id = new_request_id()
    response = raw_request(unlimited.port, case_request("broken_head", request_id))
    assert response.status == 502
    error = json.loads(response.body)["error"]
    assert error["code"] == "upstream_error"
    assert (
        error["message"] == f"the upstream failed before answering; quote request id {request_id}"
    )
    for secret in (b"leaked-fragment", b"127.0.0.1", str(upstream.port).encode()):
        assert secret not in response.body
    detail = unlimited.access_log(request_id)["error"]
    assert f"127.0.0.1:{upstream.port}" in detail


def test_unreachable_502_does_not_name_host_or_port(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with gateway_to(f"http://127.0.0.1:{port}", tmp_path / "conf") as gateway:
        request_id = new_request_id()
        response = raw_request(gateway.port, case_request("json_small", request_id))
        assert response.status == 502
        error = json.loads(response.body)["error"]
        assert error["code"] == "upstream_unreachable"
        assert request_id in error["message"]
        assert str(port).encode() not in response.body and b"127.0.0.1" not in response.body
        assert f"127.0.0.1:{port}" in gateway.access_log(request_id)["error"]
