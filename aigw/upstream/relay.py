"""The terminal stage of every route: forward to the upstream, relay its answer.

Two shapes of answer, both relayed as they arrive, never held whole:

* a JSON (or any non-SSE) body: the usual small one is sent as it came, in one
  response; a longer one is streamed on with the upstream's framing (its
  Content-Length when it gave one, chunked otherwise), while a bounded window
  of it (``body_window``) is kept for the usage reader;
* an SSE stream, relayed event by event, with a side-channel observer reading
  usage and the first token (``aigw.upstream.sse_relay``).

Failure mapping at this boundary: cannot connect → 502, no answer in time →
504, an upstream redirect → 502 (never followed: following it would resend
the injected ``api-key`` to the new origin), a body larger than
``max_response_size`` → 502. The client's message is generic and quotes the
request id; what went wrong, and with which host, goes to the access log only
(an upstream's broken head or its address is no business of the client's).

Once a response has started the status line is gone, so an upstream that dies
mid-body, or a body that grows past a limit, ends the client's response as an
error: an SSE error event on a stream, then the connection is closed without
completing the body, so the client sees an error, never a clean but truncated
finish.

Balanced routes (``aigw.balancer.stage``) use two more fields of the exchange:
``ex.target``, the attempt's target, preferred over the route's own; and
``ex.failover_statuses``: an upstream status in it is not relayed, the relay
closes that response and raises :class:`RetryableAnswer` before anything
reached the client, so the next target can be tried. Connect-phase failures
(nothing of the request left aigw) are told apart in ``ex.outcome``:
``upstream_unreachable``, ``upstream_connect_timeout``, ``upstream_tls_error``.
"""

from __future__ import annotations

import contextlib
import ssl
import sys
import time
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDict

from aigw.apis.operations import Operation
from aigw.chain.exchange import Exchange, Handler
from aigw.errors import UpstreamTimeout, UpstreamUnavailable
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.metrics import StreamsInFlight
from aigw.upstream.body_window import BodyWindow, PayloadCapture, read_body_usage
from aigw.upstream.failures import TOO_LARGE, quoting, upstream_failure
from aigw.upstream.headers import ANSWERED_RESPONSE_POLICY, REQUEST_POLICY, RESPONSE_POLICY
from aigw.upstream.pool import ConnectError, ConnectTimeout, ProtocolError, UpstreamResponse
from aigw.upstream.query import passthrough_query
from aigw.upstream.retry_after import retry_after_s
from aigw.upstream.sse_relay import relay_stream, stream_observer
from aigw.upstream.target import UpstreamTarget, client_api_version

__all__ = [
    "CONNECT_PHASE_OUTCOMES",
    "MODEL_HEADER",
    "RetryableAnswer",
    "make_relay",
    "read_body_usage",
]

MODEL_HEADER = "X-AIGW-LLM-Model"
"""Names the ``provider/model`` a response came from (Kong: ``X-Kong-LLM-Model``)."""

_SSE = "text/event-stream"
_V1_PREFIX = "/openai/v1/"

CONNECT_PHASE_OUTCOMES = frozenset(
    {"upstream_unreachable", "upstream_connect_timeout", "upstream_tls_error"}
)
"""``ex.outcome`` of a failure before any byte of the request was sent upstream."""


class RetryableAnswer(Exception):
    """The upstream answered a status in ``ex.failover_statuses``; nothing was relayed.

    The relay closed that upstream response before raising; the client has
    seen nothing, so the balancer may try another target.

    Attributes:
        status: The upstream's status.
        retry_after_s: Its ``retry-after-ms`` / ``retry-after``, in seconds, when given.
    """

    def __init__(self, status: int, retry_after_s: float | None) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.retry_after_s = retry_after_s


def make_relay(
    target: UpstreamTarget,
    *,
    require_done: bool,
    model_header: bool,
    capture_body: bool = False,
    streams_in_flight: StreamsInFlight | None = None,
    limits: Limits = DEFAULT_LIMITS,
    operation: Operation | None = None,
) -> Handler:
    """Builds the terminal handler for one route.

    Args:
        target: Where and how to forward.
        require_done: The stream protocol ends with ``data: [DONE]`` (chat and
            completions); a stream that ends without it was cut upstream. A request
            whose operation is known per request (``ex.operation``, a model route)
            takes its operation's instead.
        model_header: Add ``X-AIGW-LLM-Model`` to successful responses.
        capture_body: Keep the response body's start for the access log
            (``log_payloads``), up to ``body_window.CAPTURE_BYTES``.
        streams_in_flight: Counts this route's open streams (a context manager).
        limits: The process's bounds; ``max_response_size`` and
            ``max_event_size`` apply here.
        operation: The route's operation when its route_type names one (a model
            route's request may name its own, ``ex.operation``): a Responses stream
            is read by ``ResponsesObserver``, any other by ``StreamObserver``.
    """
    # PERF: one comparison per read instead of "is there a limit, and is it crossed".
    max_body = limits.max_response_size or sys.maxsize
    max_event = limits.max_event_size

    async def relay(ex: Exchange) -> web.StreamResponse:
        # A balanced route's attempt names its target; a templated route's
        # target is resolved per request (aigw.templates).
        chosen = ex.target
        if chosen is None:
            resolved = ex.resolved
            chosen = target if resolved is None else resolved.target
        upstream = await _send(ex, chosen)
        healthy = False
        try:
            status = upstream.status
            if status in ex.failover_statuses:
                # Closed unread (finally below): the next target is tried at once.
                raise RetryableAnswer(status, retry_after_s(upstream.headers))
            if 300 <= status < 400:
                raise UpstreamUnavailable(
                    "upstream_redirect",
                    f"the upstream answered {status} with a redirect; aigw never follows "
                    "upstream redirects (they would carry the injected credential)",
                )
            length = upstream.head.content_length
            if length is not None and length > max_body:
                ex.error = f"the upstream announced a body of {length} bytes"
                raise _too_large(ex, max_body)
            answer_headers = ex.response_headers
            if answer_headers:
                # aigw's own x-ratelimit-*-tokens replace the upstream's.
                headers = ANSWERED_RESPONSE_POLICY.filter(upstream.headers)
                headers += answer_headers
            else:
                headers = RESPONSE_POLICY.filter(upstream.headers)
            headers.append(("x-request-id", ex.request_id))
            if model_header and status < 300:
                headers.append((MODEL_HEADER, chosen.label))
            media_type = _media_type(upstream.content_type)
            if media_type == _SSE:
                tracking = (
                    streams_in_flight if streams_in_flight is not None else contextlib.nullcontext()
                )
                op = ex.operation or operation
                with tracking:
                    response = await relay_stream(
                        ex,
                        upstream,
                        headers,
                        require_done if op is None else op.require_done,
                        stream_observer(ex, op),
                        capture_body,
                        max_body,
                        max_event,
                    )
            else:
                wants_usage = status < 300 and "json" in media_type
                response = await _relay_body(
                    ex,
                    upstream,
                    headers,
                    capture_body,
                    wants_usage,
                    max_body,
                    media_type.startswith("audio/"),
                )
            healthy = True
            return response
        finally:
            # A fully read response goes back to the pool (release() checks
            # that); anything else (client gone, upstream fault, a limit
            # crossed) closes the upstream connection, which is what stops
            # Azure generating tokens nobody will read.
            if healthy:
                upstream.release()
            else:
                upstream.close()

    return relay


def _media_type(content_type: str) -> str:
    """``type/subtype`` of a Content-Type, lower-cased (media types are case-insensitive)."""
    return content_type.partition(";")[0].strip().lower()


def _too_large(ex: Exchange, limit: int) -> UpstreamUnavailable:
    ex.outcome = TOO_LARGE
    return UpstreamUnavailable(
        TOO_LARGE,
        quoting(ex, f"the upstream response is larger than this gateway relays ({limit} bytes)"),
    )


async def _send(ex: Exchange, target: UpstreamTarget) -> UpstreamResponse:
    request = ex.request
    api_version = client_api_version(request)
    style, operation = ex.api_style, ex.operation
    if style is None or operation is None:
        # A path route: its upstream path and default version were fixed at load.
        path = target.path(ex.path)
        # The v1 API needs no version: a v1 path (a preserve route's /openai/v1/models)
        # carries only the client's.
        if api_version is None and not path.startswith(_V1_PREFIX):
            api_version = target.default_api_version
    else:
        # A model route keeps the client's API style (aigw.upstream.target).
        path = target.operation_path(operation, style, ex.path)
        api_version = target.operation_api_version(operation, style, api_version)
    if api_version is not None:
        # The version passed the syntax check above: it needs no escaping.
        path = f"{path}?api-version={api_version}"
    ex.api_version = api_version
    extra = ex.extra_query
    if target.fixed_path is None and request.query_string:
        # A pass-through (files, batches, stored responses) keeps the client's listing
        # options (aigw.upstream.query); never a parameter that could carry a key.
        extra = (*passthrough_query(request.query.items()), *extra)
    if extra:
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in extra)
        path += f"&{query}" if api_version is not None else f"?{query}"
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
            ex.upstream_stream if ex.upstream_stream is not None else ex.upstream_body,
            connect_timeout=target.connect_timeout,
            read_timeout=target.read_timeout,
            write_timeout=target.write_timeout,
        )
    except ConnectTimeout as exc:
        where = f"{origin.host}:{origin.port}"
        detail = f"no connection to the upstream {where} in time ({exc})"
        raise upstream_failure(ex, "upstream_connect_timeout", detail) from exc
    except TimeoutError as exc:
        detail = f"the upstream {origin.host}:{origin.port} did not answer in time ({exc})"
        raise upstream_failure(ex, "upstream_timeout", detail) from exc
    except ssl.SSLError as exc:
        detail = (
            f"TLS handshake with {origin.host}:{origin.port} failed: "
            f"{exc.reason or type(exc).__name__}"
        )
        raise upstream_failure(ex, "upstream_tls_error", detail) from exc
    except ConnectError as exc:
        detail = (
            f"cannot connect to the upstream {origin.host}:{origin.port}: {exc.strerror or 'error'}"
        )
        raise upstream_failure(ex, "upstream_unreachable", detail) from exc
    except (OSError, ProtocolError) as exc:
        detail = (
            f"the upstream {origin.host}:{origin.port} closed the connection or broke HTTP "
            f"before answering ({type(exc).__name__}: {exc})"
        )
        raise upstream_failure(ex, "upstream_error", detail) from exc
    ex.upstream_headers_ns = time.perf_counter_ns()
    ex.upstream_status = upstream.status
    ex.upstream_request_id = upstream.head.get("apim-request-id")
    return upstream


async def _relay_body(
    ex: Exchange,
    upstream: UpstreamResponse,
    headers: list[tuple[str, str]],
    capture: bool,
    wants_usage: bool,
    max_body: int,
    piecewise: bool,
) -> web.StreamResponse:
    """Relays a non-SSE body: in one response when it arrived whole, else as it comes.

    *piecewise* (audio: text-to-speech is played as it arrives) sends the first
    piece at once instead of waiting for a second read to tell a whole body.
    """
    read = upstream.readany
    try:
        first = await read()
        rest = await read() if first and not piecewise else b""
    except (TimeoutError, OSError, ProtocolError) as exc:
        raise _body_failed(ex, exc) from exc
    if piecewise and first:
        return await _stream_body(
            ex, upstream, headers, (first, rest), capture, wants_usage, max_body
        )
    if len(first) + len(rest) > max_body:
        ex.error = f"the upstream body passed {max_body} bytes before aigw answered"
        raise _too_large(ex, max_body)
    if not rest:
        # PERF: the usual answer arrived whole in one read: one response, one write.
        if wants_usage:
            ex.response_model, ex.usage = read_body_usage(first)
        if capture:
            ex.response_body = _captured(first)
        ex.bytes_out = len(first)
        return web.Response(status=upstream.status, body=first, headers=CIMultiDict(headers))
    return await _stream_body(ex, upstream, headers, (first, rest), capture, wants_usage, max_body)


async def _stream_body(
    ex: Exchange,
    upstream: UpstreamResponse,
    headers: list[tuple[str, str]],
    received: tuple[bytes, bytes],
    capture: bool,
    wants_usage: bool,
    max_body: int,
) -> web.StreamResponse:
    """Relays a body that did not come in one read, keeping only bounded windows of it."""
    response = web.StreamResponse(status=upstream.status, headers=CIMultiDict(headers))
    # The client gets the upstream's framing: its length when it gave one,
    # else chunked (aiohttp's default for a response of unknown length).
    response.content_length = upstream.head.content_length
    await response.prepare(ex.request)
    window = BodyWindow() if wants_usage else None
    captured = PayloadCapture() if capture else None
    # PERF: this loop runs once per read; the client write is _write inlined,
    # so a piece costs no extra coroutine (as in _relay_stream).
    read, write = upstream.readany, response.write
    data, following = received
    size = 0
    while True:
        size += len(data)
        if size > max_body:
            ex.error = f"the upstream body passed {max_body} bytes; the response was cut"
            ex.outcome = TOO_LARGE
            return _abort(ex, upstream, response)
        if window is not None:
            window.add(data)
        if captured is not None:
            captured.add(data)
        try:
            await write(data)
        except ConnectionResetError:
            ex.outcome = "client_disconnect"
            raise
        ex.bytes_out += len(data)
        if following:
            data, following = following, b""
            continue
        try:
            data = await read()
        except (TimeoutError, OSError, ProtocolError) as exc:
            _body_failed(ex, exc)
            return _abort(ex, upstream, response)
        if not data:
            break
    await response.write_eof()
    if window is not None:
        ex.response_model, ex.usage = window.usage()
    if captured is not None:
        ex.response_body = captured.value()
    return response


def _body_failed(ex: Exchange, exc: BaseException) -> UpstreamTimeout | UpstreamUnavailable:
    """Notes why the body could not be read; returns the error to answer if nothing was sent."""
    if isinstance(exc, TimeoutError):
        ex.outcome = "upstream_timeout"
        ex.error = "the upstream stopped sending its response body (read timeout)"
        return UpstreamTimeout(
            "upstream_timeout", quoting(ex, "the upstream stopped sending its response")
        )
    ex.outcome = "upstream_error"
    ex.error = (
        f"the upstream connection failed while reading its response ({type(exc).__name__}: {exc})"
    )
    return UpstreamUnavailable(
        "upstream_error", quoting(ex, "the upstream failed while sending its response")
    )


def _abort(
    ex: Exchange, upstream: UpstreamResponse, response: web.StreamResponse
) -> web.StreamResponse:
    """Ends a started non-SSE body as incomplete: both connections are closed.

    The client then sees fewer bytes than the Content-Length, or chunks
    without their terminator, which every HTTP client reports as an error.
    """
    upstream.close()
    transport = ex.request.transport
    if transport is not None:
        transport.close()
    return response


def _captured(body: bytes) -> bytes:
    capture = PayloadCapture()
    capture.add(body)
    return capture.value()
