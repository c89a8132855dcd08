"""The terminal stage of a realtime route: one client WebSocket relayed to Azure.

A session, in order:

1. The request must be a WebSocket upgrade (else 400 ``websocket_required``).
   It has been through the route's chain like any request: key-auth, acl and
   the credential stage ran, so a stranger is refused with a JSON 401 before
   any upgrade, and ``ex.extra_headers`` holds the route's credential.
2. The upstream is dialled first (:mod:`aigw.realtime.handshake` builds the
   URL, headers and subprotocols): a failure is answered as the HTTP relay
   answers it (502/504 JSON, with the same outcome in ``ex.outcome``, so a
   balanced route fails over), and an upstream that refuses the upgrade has
   its status relayed; the client is still plain HTTP at that point.
3. The client is accepted, echoing the subprotocol the upstream chose.
4. Two pumps (:mod:`aigw.realtime.pump`) relay frames both ways until one
   side ends; the relay then closes both with the codes the ending names: a
   close code passes through, an upstream that vanished closes the client
   with 1011, a client that vanished (or whose handler aiohttp cancelled)
   closes the upstream with 1001, a frame over ``limits.max_event_size``
   closes with 1009, and no frame either way for the target's
   ``read_timeout`` closes both with 1001.

The access-log line is written when this handler returns, at the session's
end: its duration, ``ex.session``'s counters, and the tokens summed from
``response.done`` events (:mod:`aigw.realtime.usage`) in ``ex.usage``, which
the token limit charges as it charges an HTTP answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, web
from multidict import CIMultiDict

from aigw.chain.exchange import Exchange, Handler
from aigw.errors import BadRequest, UpstreamTimeout, UpstreamUnavailable
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.listener.connection import Shutdown, client_connection
from aigw.logs import get_logger
from aigw.realtime.handshake import client_protocols, upstream_headers, upstream_url
from aigw.realtime.pump import (
    CLIENT_GONE,
    ClientSocket,
    Ending,
    client_to_upstream,
    upstream_to_client,
)
from aigw.realtime.stats import SessionStats
from aigw.realtime.upgrade import is_websocket_handshake
from aigw.realtime.usage import SessionUsage
from aigw.upstream.headers import RESPONSE_POLICY
from aigw.upstream.relay import RetryableAnswer
from aigw.upstream.retry_after import retry_after_s
from aigw.upstream.target import UpstreamTarget
from aigw.upstream.websocket import HandshakeRefused, UpstreamSocket

__all__ = ["HEARTBEAT_S", "make_realtime_relay"]

_log = get_logger("aigw.realtime")

HEARTBEAT_S = 30.0
"""Seconds between pings on each side: a peer that stops answering them is gone."""

# How long a close handshake may take on each side before the socket is dropped.
_CLOSE_TIMEOUT = 3.0
# The idle bound is checked this many times per bound (a session is cut between
# one bound and 1 + 1/_IDLE_CHECKS bounds of silence).
_IDLE_CHECKS = 4

_IDLE = Ending(
    "gateway", WSCloseCode.GOING_AWAY, WSCloseCode.GOING_AWAY, WSCloseCode.GOING_AWAY, b"idle"
)
_SHUTDOWN = Ending(
    "gateway",
    WSCloseCode.GOING_AWAY,
    WSCloseCode.GOING_AWAY,
    WSCloseCode.GOING_AWAY,
    b"the gateway is shutting down",
)
_FAULT = Ending(
    "gateway",
    WSCloseCode.INTERNAL_ERROR,
    WSCloseCode.INTERNAL_ERROR,
    WSCloseCode.GOING_AWAY,
    b"gateway error",
)


def make_realtime_relay(target: UpstreamTarget, *, limits: Limits = DEFAULT_LIMITS) -> Handler:
    """Builds the terminal handler of a realtime route.

    Args:
        target: The route's target (a balanced route's attempt sets ``ex.target``;
            a templated route's request, ``ex.resolved``).
        limits: The process's bounds; ``max_event_size`` bounds a frame each way.
    """
    max_frame = limits.max_event_size

    async def relay(ex: Exchange) -> web.StreamResponse:
        request = ex.request
        if not is_websocket_handshake(request):
            raise BadRequest(
                "websocket_required",
                "this path serves the Realtime API over a WebSocket: connect with a "
                "WebSocket upgrade (GET with Upgrade: websocket and Sec-WebSocket-Key)",
            )
        chosen = ex.target
        if chosen is None:
            resolved = ex.resolved
            chosen = target if resolved is None else resolved.target
        upstream = await _dial(ex, chosen, max_frame)
        if isinstance(upstream, web.Response):
            return upstream  # the upstream refused the upgrade: its status, relayed
        try:
            # Typed by its alias: aiohttp's constructor does not narrow decode_text.
            client = ClientSocket(
                protocols=(upstream.protocol,) if upstream.protocol else (),
                heartbeat=HEARTBEAT_S,
                max_msg_size=max_frame,
                autoclose=False,
                decode_text=False,
                # CPU per frame: relay frames as they are, never deflate them again.
                compress=False,
                timeout=_CLOSE_TIMEOUT,
            )
            # The 101 carries what any answer does: the id to quote, a quota's state.
            headers = client.headers
            headers["x-request-id"] = ex.request_id
            for name, value in ex.response_headers:
                headers[name] = value
            await client.prepare(request)
        except BaseException:
            await _bounded(upstream.close(code=WSCloseCode.GOING_AWAY))
            raise
        stats = SessionStats()
        ex.session = stats
        # The session runs in a task of its own: aiohttp cancels this handler
        # whenever the client's connection is lost, which is also how every
        # clean close ends (the close handshake done, aigw closes the socket);
        # the session must still close the upstream properly then.
        connection = client_connection(request)
        shutdown = connection.shutdown if connection is not None else None
        session = asyncio.create_task(
            _run(ex, client, upstream, chosen.read_timeout, stats, shutdown)
        )
        try:
            await asyncio.shield(session)
        except asyncio.CancelledError:
            if stats.closed_by is None:
                session.cancel()  # cut mid-session: it closes the upstream, 1001
            with contextlib.suppress(asyncio.CancelledError):
                await session
            if stats.close_code is None:
                raise  # the client vanished, stalled, or a shutdown cut it: logged so
        return client

    return relay


def _quoting(ex: Exchange, what: str) -> str:
    """A client-facing message that gives no upstream detail, only the id to quote."""
    return f"{what}; quote request id {ex.request_id}"


async def _dial(
    ex: Exchange, target: UpstreamTarget, max_frame: int
) -> UpstreamSocket | web.Response:
    """Opens the upstream socket; a failure is the HTTP relay's error, same words, same
    ``ex.outcome``; an upstream's refusal is the response to relay."""
    url = upstream_url(ex, target)
    origin = target.origin
    where = f"{origin.host}:{origin.port}"
    ex.upstream_sent_ns = time.perf_counter_ns()
    try:
        upstream = await ex.pool.websockets.dial(
            url,
            upstream_headers(ex),
            protocols=client_protocols(ex.request),
            handshake_timeout=target.connect_timeout,
            max_frame=max_frame,
            heartbeat=HEARTBEAT_S,
        )
    except HandshakeRefused as refused:
        return _refused(ex, refused)
    except TimeoutError as exc:
        ex.outcome = "upstream_connect_timeout"
        ex.error = f"no WebSocket handshake with the upstream {where} in time"
        raise UpstreamTimeout(
            "upstream_timeout", _quoting(ex, "the upstream did not answer in time")
        ) from exc
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        ex.outcome = "upstream_tls_error"
        ex.error = f"TLS handshake with {where} failed: {type(exc).__name__}"
        raise UpstreamUnavailable(
            "upstream_tls_error", _quoting(ex, "the TLS handshake with the upstream failed")
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        ex.outcome = "upstream_unreachable"
        ex.error = f"cannot connect to the upstream {where}: {exc.strerror or 'error'}"
        raise UpstreamUnavailable(
            "upstream_unreachable", _quoting(ex, "the upstream could not be reached")
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        ex.outcome = "upstream_error"
        ex.error = (
            f"the upstream {where} closed the connection or broke the WebSocket handshake "
            f"({type(exc).__name__})"
        )
        raise UpstreamUnavailable(
            "upstream_error", _quoting(ex, "the upstream failed before answering")
        ) from exc
    ex.upstream_headers_ns = time.perf_counter_ns()
    ex.upstream_status = 101
    return upstream


def _refused(ex: Exchange, refused: HandshakeRefused) -> web.Response:
    """The answer when the upstream did not switch protocols: never a session.

    A 4xx/5xx is relayed with its status and headers (``retry-after``,
    ``x-ratelimit-*``: what a client acts on); its body is not available
    (aiohttp's client drops it), so the body is aigw's, naming the status.
    """
    status = refused.status
    ex.upstream_status = status
    headers = refused.headers
    if status in ex.failover_statuses:
        raise RetryableAnswer(
            status, retry_after_s(headers.items()) if headers is not None else None
        )
    if 300 <= status < 400:
        raise UpstreamUnavailable(
            "upstream_redirect",
            f"the upstream answered {status} with a redirect; aigw never follows "
            "upstream redirects (they would carry the injected credential)",
        )
    if status < 400:  # 101 with a broken handshake, or a 2xx: not a WebSocket
        ex.outcome = "upstream_error"
        ex.error = f"the upstream answered the WebSocket upgrade with {status}"
        raise UpstreamUnavailable(
            "upstream_error", _quoting(ex, "the upstream failed the WebSocket handshake")
        )
    kept = RESPONSE_POLICY.filter(headers.items()) if headers is not None else []
    kept.append(("x-request-id", ex.request_id))
    kept.append(("Content-Type", "application/json"))
    error = {
        "error": {
            "code": "upstream_refused_websocket",
            "message": _quoting(ex, f"the upstream refused the WebSocket upgrade with {status}"),
            "param": None,
            "type": "upstream_error",
        }
    }
    body = json.dumps(error).encode()
    ex.bytes_out = len(body)
    return web.Response(status=status, body=body, headers=CIMultiDict(kept))


async def _run(
    ex: Exchange,
    client: ClientSocket,
    upstream: UpstreamSocket,
    idle: float,
    stats: SessionStats,
    shutdown: Shutdown | None,
) -> None:
    """Relays the session until it ends, then closes both sides and fills in the log.

    ``stats.closed_by`` is set the moment the ending is known, before any close.
    """
    usage = SessionUsage()
    pumps = (
        asyncio.create_task(client_to_upstream(client, upstream, stats)),
        asyncio.create_task(upstream_to_client(upstream, client, stats, usage)),
    )
    ending = _FAULT
    try:
        ending = await _first_ending(pumps, stats, idle, shutdown)
    except asyncio.CancelledError:
        # The handler was cancelled mid-session: the client's connection was
        # lost (or cut by the send deadline), or a shutdown's drain budget ran out.
        ending = _ended(pumps) or _cut(ex)
        raise
    except Exception:
        ex.outcome = "internal_error"
        _log.exception("realtime_relay_failed", request_id=ex.request_id)
    finally:
        stats.closed_by = ending.closed_by
        stats.close_code = ending.code
        if ending is _IDLE:
            ex.outcome = "idle_timeout"
        elif ending is _SHUTDOWN:
            ex.outcome = "shutdown"
        elif ending.closed_by == "upstream" and ending.code is None:
            ex.outcome = "upstream_reset"
            ex.error = "the upstream WebSocket connection was lost"
        await _close_both(client, upstream, ending)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        stats.responses = usage.responses
        ex.usage = usage.usage
        ex.bytes_out = stats.bytes_out


def _ended(pumps: tuple[asyncio.Task[Ending], asyncio.Task[Ending]]) -> Ending | None:
    """The ending of a pump that has already returned, if one has.

    aiohttp closes a socket itself in some endings (it answers a frame over the
    bound with 1009, and completes a close handshake); the connection's loss
    then cancels the handler in the same turn of the loop as the pump returns.
    """
    for pump in pumps:
        if pump.done() and not pump.cancelled() and pump.exception() is None:
            return pump.result()
    return None


def _cut(ex: Exchange) -> Ending:
    """The ending of a session cut with no pump ended: the client left, or a shutdown."""
    transport = ex.request.transport
    if transport is None or transport.is_closing():
        return CLIENT_GONE
    return Ending("gateway", None, WSCloseCode.GOING_AWAY, WSCloseCode.GOING_AWAY, b"shutdown")


async def _first_ending(
    pumps: tuple[asyncio.Task[Ending], asyncio.Task[Ending]],
    stats: SessionStats,
    idle: float,
    shutdown: Shutdown | None,
) -> Ending:
    """The first pump's ending; the idle bound's when no frame moved for *idle* s; the
    shutdown's when the listener starts stopping (a session has no end of its own to
    drain to: it is told to go away at once, so its client reconnects elsewhere)."""
    loop = asyncio.get_running_loop()
    check = idle / _IDLE_CHECKS
    seen = 0
    quiet_since = loop.time()
    stopping = None if shutdown is None else asyncio.ensure_future(shutdown.wait())
    waits: tuple[asyncio.Future[Any], ...] = pumps if stopping is None else (*pumps, stopping)
    try:
        while True:
            done, _ = await asyncio.wait(waits, timeout=check, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                if pump in done:
                    return pump.result()
            if done:
                return _SHUTDOWN
            # PERF: the pumps count frames anyway; comparing counts here costs them nothing.
            frames = stats.frames_in + stats.frames_out
            now = loop.time()
            if frames != seen:
                seen, quiet_since = frames, now
            elif now - quiet_since >= idle:
                return _IDLE
    finally:
        if stopping is not None:
            stopping.cancel()


async def _close_both(client: ClientSocket, upstream: UpstreamSocket, ending: Ending) -> None:
    """Closes each side with the code *ending* names (a side already closed stays so)."""
    closing = [
        upstream.close(code=ending.to_upstream or WSCloseCode.GOING_AWAY, message=ending.reason),
        client.close(code=ending.to_client or WSCloseCode.GOING_AWAY, message=ending.reason),
    ]
    await _bounded(asyncio.gather(*closing, return_exceptions=True))


async def _bounded(closing: Awaitable[object]) -> None:
    """Awaits a close for at most a close handshake's time (a stalled peer may never
    answer, nor read the close frame)."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(_CLOSE_TIMEOUT + 1):
            await closing
