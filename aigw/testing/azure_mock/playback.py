"""Playing faults and streams: immediate fault answers, SSE streams that a fault may cut,
end early or break with an error event, and dropped connections."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final, TypeVar

from aiohttp import web

from .call import Call
from .faults import Fault
from .records import RequestRecord
from .wire import (
    SSE_CT,
    content_filter_body,
    generic_error_body,
    rate_limit_body,
    server_error_body,
)

__all__ = [
    "STREAM_KINDS",
    "drop_connection",
    "format_seconds",
    "immediate_fault",
    "play_stream",
    "wait_until_client_leaves",
]

# Defaults for stream faults when the test gives no ``after_events``: the first chunk, the
# role chunk and one content chunk, so clients have seen real content before it breaks.
_DEFAULT_BREAK_AFTER: Final = 3
_HANG_POLL_S: Final = 0.05
#: Fault kinds played by the stream writer rather than answered at once.
STREAM_KINDS: Final = frozenset({"cut_stream", "eof_stream", "stream_error_event"})

T = TypeVar("T")


def format_seconds(value: float) -> str:
    """``1`` for 1.0, ``0.5`` for 0.5: how Azure writes retry delays."""
    return str(int(value)) if value == int(value) else str(value)


async def wait_until_client_leaves(request: web.Request, record: RequestRecord) -> None:
    """The ``hang`` fault: answer nothing until the client gives up."""
    # Polling also notices a client that left when handler_cancellation is off.
    # aiohttp exposes no "peer closed" event, hence the poll.
    while (transport := request.transport) is not None and not transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(_HANG_POLL_S)
    record.client_gone()


async def immediate_fault(call: Call, fault: Fault) -> web.StreamResponse:
    """Answer *fault* at once (every kind but delays and the stream kinds)."""
    request, record, headers = call.request, call.record, call.headers
    if fault.kind == "hang":
        await wait_until_client_leaves(request, record)
        return web.Response()
    if fault.kind == "close":
        drop_connection(request, rst=fault.rst)
        return web.Response()

    status = 200
    body = fault.body
    if fault.kind == "status":
        assert fault.status is not None
        status = fault.status
        if body is None:
            body = _status_body(status, call, fault)
        if fault.content_type is not None:
            headers["Content-Type"] = fault.content_type
        if status == 429:
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-remaining-tokens"] = "0"
        if fault.retry_after is not None:
            headers["retry-after"] = format_seconds(fault.retry_after)
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = format_seconds(fault.retry_after_ms)
    elif fault.kind == "content_filter":
        status, body = 400, content_filter_body()
    elif fault.kind == "redirect":
        assert fault.status is not None
        status, body = fault.status, b""
        headers["Location"] = fault.location or _other_origin(request)
    elif fault.kind == "malformed":
        if record.stream:
            headers["Content-Type"] = SSE_CT
            body = body if body is not None else b'data: {"choices": [\n\n'
        else:
            body = body if body is not None else b'{"choices": [{"index": 0, "message": '
    headers.update(fault.headers)
    record.status = status
    return web.Response(status=status, body=body, headers=headers)


def _status_body(status: int, call: Call, fault: Fault) -> bytes:
    if status == 429:
        return rate_limit_body(call.op, call.api_version, fault.retry_after)
    if status == 500:
        return server_error_body(call.headers["x-request-id"])
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return generic_error_body(status, reason)


async def play_stream(
    call: Call,
    events: Sequence[T],
    render: Callable[[T], bytes],
    content: Sequence[bool],
    *,
    done: bytes | None,
    error_event: Callable[[Mapping[str, Any] | None, int], bytes],
) -> web.StreamResponse:
    """Send *events* as SSE, as the call's fault says (cut, end early, break with
    ``error_event(error, events sent)``), then *done* when given.

    Token delays are only inserted between two events whose ``content`` flag is set.
    """
    request, record, fault = call.request, call.record, call.fault
    kind = fault.kind if fault is not None else None
    after = fault.after_events if fault is not None else None
    if kind == "cut_stream":
        limit = min(_DEFAULT_BREAK_AFTER if after is None else after, len(events) + 1)
    elif kind == "eof_stream":
        limit = len(events) if after is None else min(after, len(events))
    elif kind == "stream_error_event":
        limit = min(_DEFAULT_BREAK_AFTER if after is None else after, len(events))
    else:
        limit = len(events) + 1

    if call.latency_ms:
        await asyncio.sleep(call.latency_ms / 1000)
    headers = call.headers
    headers["Content-Type"] = SSE_CT
    headers["x-accel-buffering"] = "no"
    response = web.StreamResponse(status=200, headers=headers)
    response.enable_chunked_encoding()
    record.status = 200
    delay = call.token_delay_ms / 1000
    try:
        await response.prepare(request)
        for index in range(limit):
            if index == len(events):
                if done is not None:
                    await response.write(done)
                break
            if delay and index and content[index] and content[index - 1]:
                await asyncio.sleep(delay)
            await response.write(render(events[index]))
        if kind == "stream_error_event":
            assert fault is not None
            await response.write(error_event(fault.error, limit))
        if kind == "cut_stream":
            assert fault is not None
            record.stream_outcome = "cut"
            await _wait_flushed(request)
            drop_connection(request, rst=fault.rst)
            return response
        await response.write_eof()
    except ConnectionError:
        # Writing to a client that left; re-raising would only make aiohttp log it.
        record.client_gone()
        return response
    record.stream_outcome = "completed"
    return response


async def _wait_flushed(request: web.Request) -> None:
    # An abort discards unsent bytes, yet the events before the cut must reach the client;
    # asyncio transports have no "buffer empty" event, hence the poll.
    transport = request.transport
    while transport is not None and transport.get_write_buffer_size():
        if transport.is_closing():
            return
        await asyncio.sleep(0.001)


def drop_connection(request: web.Request, *, rst: bool) -> None:
    """Close the client's connection without a word (a TCP RST when *rst*)."""
    transport = request.transport
    if transport is None:
        return
    if rst:
        # Zero linger turns close() into a TCP RST instead of a FIN.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _other_origin(request: web.Request) -> str:
    # localhost and 127.0.0.1 are different origins that both reach this mock, so a
    # client that follows the redirect shows up in the recorded requests.
    host = "127.0.0.1" if request.url.host == "localhost" else "localhost"
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if sockname else request.url.port
    return f"http://{host}:{port}{request.rel_url.raw_path_qs}"
