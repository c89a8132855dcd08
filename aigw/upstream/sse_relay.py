"""The SSE half of the relay: an upstream event stream relayed event by event.

Only whole events are forwarded, as they arrive (never buffered): an error
event written after a failure then starts on an event boundary of the
client's parser. A side-channel observer reads usage, the served model and
the first token (chat's ``StreamObserver``, or the typed Responses events'
``ResponsesObserver``). A stream that breaks after it started ends as an
error the SDK raises (an SSE error event, then the connection is closed
without the chunked terminator), never as a clean but truncated finish.
"""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.tcp_helpers import tcp_nodelay
from multidict import CIMultiDict

from aigw.apis.operations import Operation
from aigw.chain.exchange import Exchange
from aigw.upstream.body_window import PayloadCapture
from aigw.upstream.failures import TOO_LARGE
from aigw.upstream.pool import ProtocolError, UpstreamResponse
from aigw.upstream.sse import EventTooLarge, SSESplitter, StreamObserver
from aigw.upstream.sse_responses import ResponsesObserver

__all__ = ["relay_stream", "stream_observer"]


def stream_observer(
    ex: Exchange, operation: Operation | None
) -> StreamObserver | ResponsesObserver:
    """The stream's usage reader: Responses events are typed, anything else is chat's."""
    if operation is not None and operation.usage == "responses":
        return ResponsesObserver()
    return StreamObserver(hide_usage_chunk=ex.hide_usage_chunk)


async def relay_stream(
    ex: Exchange,
    upstream: UpstreamResponse,
    headers: list[tuple[str, str]],
    require_done: bool,
    observer: StreamObserver | ResponsesObserver,
    capture: bool,
    max_body: int,
    max_event: int,
) -> web.StreamResponse:
    """Relays *upstream*'s event stream to the client; sets ``ex.usage``, the model and
    the first token's time from what *observer* read, however the stream ends."""
    headers.append(("Cache-Control", "no-cache"))
    headers.append(("X-Accel-Buffering", "no"))  # tell any proxy in front not to buffer
    response = web.StreamResponse(status=upstream.status, headers=CIMultiDict(headers))
    transport = ex.request.transport
    if transport is not None:
        tcp_nodelay(transport, True)
    await response.prepare(ex.request)
    splitter = SSESplitter(max_event)
    captured = PayloadCapture() if capture else None
    # PERF: this loop runs once per delta; everything it calls is bound once.
    read, write, feed, observe = upstream.readany, response.write, splitter.feed, observer.observe
    hide = observer.hide_usage_chunk
    size = 0
    try:
        while True:
            try:
                chunk = await read()
            except (TimeoutError, OSError, ProtocolError) as exc:
                if isinstance(exc, TimeoutError):
                    ex.outcome = "upstream_idle_timeout"
                    message = "the upstream stopped sending (idle timeout)"
                else:
                    ex.outcome = "upstream_reset"
                    message = f"the upstream connection was lost ({type(exc).__name__})"
                await _fail_stream(ex, response, message)
                return response
            if not chunk:
                break
            size += len(chunk)
            if size > max_body:
                ex.outcome = TOO_LARGE
                upstream.close()
                await _fail_stream(ex, response, f"the upstream stream grew past {max_body} bytes")
                return response
            # Only whole events are forwarded: an error event written after a
            # failure then starts on an event boundary of the client's parser.
            try:
                events = feed(chunk)
            except EventTooLarge:
                ex.outcome = "upstream_event_too_large"
                upstream.close()
                await _fail_stream(
                    ex, response, f"an upstream event is larger than {max_event} bytes"
                )
                return response
            if hide:  # leave out the usage chunk aigw asked for on its own
                out = b"".join([event for event in events if observe(event)])
            else:
                for event in events:
                    observe(event)
                # PERF: joining one event returns it, no copy (the usual delta).
                out = b"".join(events)
            if out:
                try:
                    await write(out)
                except ConnectionResetError:
                    ex.outcome = "client_disconnect"
                    raise
                ex.bytes_out += len(out)
                if captured is not None:
                    captured.add(out)
        await _end_stream(ex, response, splitter.pending, captured, require_done, observer)
        return response
    finally:
        ex.usage = observer.usage
        ex.response_model = observer.model
        ex.first_token_ns = observer.first_token_ns
        if captured is not None:
            ex.response_body = captured.value()


async def _end_stream(
    ex: Exchange,
    response: web.StreamResponse,
    tail: bytes,
    captured: PayloadCapture | None,
    require_done: bool,
    observer: StreamObserver | ResponsesObserver,
) -> None:
    """Finishes a stream the upstream ended: cleanly, or as cut if [DONE] never came."""
    if tail:
        # An unterminated last event: the bytes are the client's to judge.
        await _write(ex, response, tail)
        if captured is not None:
            captured.add(tail)
    if require_done and response.status < 300 and not observer.saw_done:
        ex.outcome = "upstream_truncated"
        await _fail_stream(ex, response, "the upstream ended the stream without [DONE]")
        return
    await response.write_eof()


async def _write(ex: Exchange, response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionResetError:
        ex.outcome = "client_disconnect"
        raise
    ex.bytes_out += len(data)


async def _fail_stream(ex: Exchange, response: web.StreamResponse, message: str) -> None:
    """Ends a started stream as an error the SDK raises, not as a clean finish."""
    ex.error = message
    error = {"error": {"code": ex.outcome, "message": message, "type": "upstream_error"}}
    try:
        await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
    except ConnectionResetError:
        return
    # Closing without the chunked terminator makes the HTTP client report an
    # incomplete body even if it ignores the error event.
    transport = ex.request.transport
    if transport is not None:
        transport.close()
