"""One realtime session, from the client's acceptance to both sockets closed.

Two pumps (:mod:`aigw.realtime.pump`) relay frames both ways; the session
waits for the first ending: a pump's (a close, a vanished side, a frame over
the bound), the idle bound's (no frame either way for the target's
``read_timeout``: 1001 both ways), or the listener's shutdown (1001 both ways
at once). It then closes both sockets with the codes the ending names, and
fills in what the access log and the token limit read: ``ex.session``'s
counters, ``ex.usage`` summed from ``response.done`` events, ``ex.outcome``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from aiohttp import WSCloseCode

from aigw.chain.exchange import Exchange
from aigw.listener.connection import Shutdown
from aigw.logs import get_logger
from aigw.realtime.pump import (
    CLIENT_GONE,
    ClientSocket,
    Ending,
    client_to_upstream,
    upstream_to_client,
)
from aigw.realtime.stats import SessionStats
from aigw.realtime.usage import SessionUsage
from aigw.upstream.websocket import CLOSE_TIMEOUT_S, UpstreamSocket

__all__ = ["bounded", "run_session"]

_log = get_logger("aigw.realtime")

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


async def run_session(
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
        elif ending.closed_by == "gateway" and ending.code == WSCloseCode.MESSAGE_TOO_BIG:
            # The side whose socket aiohttp closed itself sent it (no code is owed it).
            sender = "client" if ending.to_client is None else "upstream"
            ex.outcome = "frame_too_large"
            ex.error = f"a frame from the {sender} was larger than --max-event-size"
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
    await bounded(asyncio.gather(*closing, return_exceptions=True))


async def bounded(closing: Awaitable[object]) -> None:
    """Awaits a close for at most a close handshake's time (a stalled peer may never
    answer, nor read the close frame)."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
            await closing
