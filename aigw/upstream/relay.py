"""The terminal stage of every route: forward to the upstream, relay its answer.

Two shapes of answer:

* a JSON (or any non-SSE) body is read whole, scanned for usage, and sent on
  as one response;
* an SSE stream is relayed chunk by chunk as it arrives, never buffered whole,
  with a side-channel observer reading usage and the first token.

Failure mapping at this boundary: cannot connect → 502, no answer in time →
504, an upstream redirect → 502 (never followed: following it would resend
the injected ``api-key`` to the new origin). Once a stream has started the status
line is gone, so an upstream that dies mid-stream gets an SSE error event and
the connection is closed without the chunked terminator: the client sees an
error, never a clean but truncated finish.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import time
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from aiohttp.tcp_helpers import tcp_nodelay
from multidict import CIMultiDict

from aigw.chain.exchange import Exchange, Handler
from aigw.errors import BadRequest, UpstreamTimeout, UpstreamUnavailable
from aigw.metrics import StreamsInFlight
from aigw.upstream.headers import REQUEST_POLICY, RESPONSE_POLICY
from aigw.upstream.pool import ConnectError, ProtocolError, UpstreamResponse
from aigw.upstream.sse import SSESplitter, StreamObserver
from aigw.upstream.target import UpstreamTarget, valid_api_version

__all__ = ["MODEL_HEADER", "make_relay", "read_body_usage"]

MODEL_HEADER = "X-AIGW-LLM-Model"
"""Names the ``provider/model`` a response came from (Kong: ``X-Kong-LLM-Model``)."""

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]*)"')
_decoder = json.JSONDecoder()


def make_relay(
    target: UpstreamTarget,
    *,
    require_done: bool,
    model_header: bool,
    capture_body: bool = False,
    streams_in_flight: StreamsInFlight | None = None,
) -> Handler:
    """Builds the terminal handler for one route.

    Args:
        target: Where and how to forward.
        require_done: The stream protocol ends with ``data: [DONE]`` (chat and
            completions); a stream that ends without it was cut upstream.
        model_header: Add ``X-AIGW-LLM-Model`` to successful responses.
        capture_body: Keep the response body for the access log
            (``log_payloads``); streams are then accumulated as relayed.
        streams_in_flight: Counts this route's open streams (a context manager).
    """
    label = target.label

    async def relay(ex: Exchange) -> web.StreamResponse:
        upstream = await _send(ex, target)
        healthy = False
        try:
            status = upstream.status
            if 300 <= status < 400:
                raise UpstreamUnavailable(
                    "upstream_redirect",
                    f"the upstream answered {status} with a redirect; aigw never follows "
                    "upstream redirects (they would carry the injected credential)",
                )
            headers = RESPONSE_POLICY.filter(upstream.headers)
            headers.append(("x-request-id", ex.request_id))
            if model_header and status < 300:
                headers.append((MODEL_HEADER, label))
            if upstream.content_type.startswith("text/event-stream"):
                tracking = (
                    streams_in_flight if streams_in_flight is not None else contextlib.nullcontext()
                )
                with tracking:
                    response = await _relay_stream(
                        ex, upstream, headers, require_done, capture_body
                    )
            else:
                response = await _relay_body(ex, upstream, headers, capture_body)
            healthy = True
            return response
        finally:
            # A fully read response goes back to the pool; anything else
            # (client gone, upstream fault) closes the upstream connection,
            # which is what stops Azure generating tokens nobody will read.
            if healthy:
                upstream.release()
            else:
                upstream.close()

    return relay


async def _send(ex: Exchange, target: UpstreamTarget) -> UpstreamResponse:
    request = ex.request
    api_version = request.query.get("api-version") if request.query_string else None
    if api_version is None:
        api_version = target.default_api_version
    elif not valid_api_version(api_version):
        raise BadRequest(
            "invalid_api_version",
            f"api-version {api_version[:40]!r} is not an Azure OpenAI API version "
            "(expected YYYY-MM-DD, YYYY-MM-DD-preview, v1 or preview)",
            param="api-version",
        )
    ex.api_version = api_version
    # The version passed the syntax check above: it needs no escaping.
    path = f"{target.path(ex.path)}?api-version={api_version}"
    if ex.extra_query:
        path += "".join(f"&{quote(k, safe='')}={quote(v, safe='')}" for k, v in ex.extra_query)
    headers = REQUEST_POLICY.filter(request.headers.items())
    headers += ex.extra_headers
    # The relay reads usage from every body and forwards bytes unchanged, so it
    # asks for them uncompressed rather than inflate-then-forward.
    headers.append(("Accept-Encoding", "identity"))
    origin = target.origin
    ex.upstream_sent_ns = time.perf_counter_ns()
    try:
        upstream = await ex.pool.request(
            origin,
            request.method,
            path,
            headers,
            ex.upstream_body,
            connect_timeout=target.connect_timeout,
            read_timeout=target.read_timeout,
            write_timeout=target.write_timeout,
        )
    except TimeoutError as exc:
        ex.outcome = "upstream_timeout"
        raise UpstreamTimeout(
            "upstream_timeout", f"the upstream {origin.host} did not answer in time ({exc})"
        ) from exc
    except ssl.SSLError as exc:
        ex.outcome = "upstream_tls_error"
        raise UpstreamUnavailable(
            "upstream_tls_error",
            f"TLS handshake with {origin.host} failed: {exc.reason or type(exc).__name__}",
        ) from exc
    except ConnectError as exc:
        ex.outcome = "upstream_unreachable"
        raise UpstreamUnavailable(
            "upstream_unreachable",
            f"cannot connect to the upstream {origin.host}:{origin.port}: "
            f"{exc.strerror or 'error'}",
        ) from exc
    except (OSError, ProtocolError) as exc:
        ex.outcome = "upstream_error"
        raise UpstreamUnavailable(
            "upstream_error",
            f"the upstream {origin.host} closed the connection or broke HTTP before "
            f"answering ({type(exc).__name__}: {exc})",
        ) from exc
    ex.upstream_headers_ns = time.perf_counter_ns()
    ex.upstream_status = upstream.status
    ex.upstream_request_id = upstream.head.get("apim-request-id")
    return upstream


async def _relay_body(
    ex: Exchange, upstream: UpstreamResponse, headers: list[tuple[str, str]], capture: bool
) -> web.Response:
    try:
        body = await upstream.read()
    except TimeoutError as exc:
        ex.outcome = "upstream_timeout"
        raise UpstreamTimeout(
            "upstream_timeout", "the upstream stopped sending its response body"
        ) from exc
    except (OSError, ProtocolError) as exc:
        ex.outcome = "upstream_error"
        raise UpstreamUnavailable(
            "upstream_error",
            f"the upstream connection failed while reading its response ({type(exc).__name__})",
        ) from exc
    if upstream.status < 300 and "json" in upstream.content_type:
        ex.response_model, ex.usage = read_body_usage(body)
    if capture:
        ex.response_body = body
    ex.bytes_out = len(body)
    return web.Response(status=upstream.status, body=body, headers=CIMultiDict(headers))


async def _relay_stream(
    ex: Exchange,
    upstream: UpstreamResponse,
    headers: list[tuple[str, str]],
    require_done: bool,
    capture: bool,
) -> web.StreamResponse:
    headers.append(("Cache-Control", "no-cache"))
    headers.append(("X-Accel-Buffering", "no"))  # tell any proxy in front not to buffer
    response = web.StreamResponse(status=upstream.status, headers=CIMultiDict(headers))
    transport = ex.request.transport
    if transport is not None:
        tcp_nodelay(transport, True)
    await response.prepare(ex.request)
    observer = StreamObserver(hide_usage_chunk=ex.hide_usage_chunk)
    splitter = SSESplitter()
    captured = bytearray() if capture else None
    # PERF: this loop runs once per delta; everything it calls is bound once.
    read, write, feed, observe = upstream.readany, response.write, splitter.feed, observer.observe
    hide = observer.hide_usage_chunk
    try:
        while True:
            try:
                chunk = await read()
            except TimeoutError:
                ex.outcome = "upstream_idle_timeout"
                await _fail_stream(ex, response, "the upstream stopped sending (idle timeout)")
                return response
            except (OSError, ProtocolError) as exc:
                ex.outcome = "upstream_reset"
                await _fail_stream(
                    ex, response, f"the upstream connection was lost ({type(exc).__name__})"
                )
                return response
            if not chunk:
                break
            if hide:
                out = b"".join([e for e in feed(chunk) if observe(e)])
            else:
                for event in feed(chunk):
                    observe(event)
                out = chunk
            if out:
                try:
                    await write(out)
                except ConnectionResetError:
                    ex.outcome = "client_disconnect"
                    raise
                ex.bytes_out += len(out)
                if captured is not None:
                    captured += out
        if hide and splitter.pending:
            await _write(ex, response, splitter.pending)
        if require_done and upstream.status < 300 and not observer.saw_done:
            ex.outcome = "upstream_truncated"
            await _fail_stream(ex, response, "the upstream ended the stream without [DONE]")
            return response
        await response.write_eof()
        return response
    finally:
        ex.usage = observer.usage
        ex.response_model = observer.model
        ex.first_token_ns = observer.first_token_ns
        if captured is not None:
            ex.response_body = bytes(captured)


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


def read_body_usage(body: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """Reads ``model`` and ``usage`` from a JSON completion body.

    PERF: Azure serialises keys alphabetically, so ``usage`` is the last key;
    it is decoded from the tail alone instead of parsing a body that can be
    megabytes of embedding floats. Escaped quotes inside strings cannot match
    the ``"usage"`` or ``"model"`` patterns, so text content cannot fake them.
    """
    model_match = _MODEL_FIELD.search(body)
    model = model_match.group(1).decode("utf-8", "replace") if model_match else None
    usage: dict[str, Any] | None = None
    at = body.rfind(b'"usage"')
    if at >= 0:
        start = body.find(b"{", at)
        if start > 0 and body[at + 7 : start].strip() == b":":
            value = _usage_object(body, start)
            if isinstance(value, dict):
                usage = value
    return model, usage


def _usage_object(body: bytes, start: int) -> Any:
    # The usual case: usage is the body's last key, so its object ends just
    # before the body's closing brace and orjson can take exactly that slice.
    end = body.rstrip().rfind(b"}")
    if end > start:
        try:
            return orjson.loads(body[start:end])
        except orjson.JSONDecodeError:
            pass
    # Otherwise decode one value from its start, wherever it ends.
    try:
        value, _ = _decoder.raw_decode(body[start:].decode("utf-8", "replace"))
    except ValueError:
        return None
    return value
