"""The terminal stage of a realtime route: one client WebSocket relayed to Azure.

A session, in order:

1. The request must be a WebSocket upgrade (else 400 ``websocket_required``).
   It has been through the route's chain like any request: key-auth, acl and
   the credential stage ran, so a stranger is refused with a JSON 401 before
   any upgrade, and ``ex.extra_headers`` holds the route's credential.
2. The upstream is dialled first (:mod:`aigw.realtime.dial`;
   :mod:`aigw.realtime.handshake` builds the URL, headers and subprotocols):
   a failure is answered as the HTTP relay answers it (502/504 JSON, with the
   same outcome in ``ex.outcome``, so a balanced route fails over), and an
   upstream that refuses the upgrade has its status relayed; the client is
   still plain HTTP at that point.
3. The client is accepted, echoing the subprotocol the upstream chose.
4. The session (:mod:`aigw.realtime.session`): two pumps
   (:mod:`aigw.realtime.pump`) relay frames both ways until one side ends,
   then both sockets are closed with the codes the ending names: a close
   code passes through, an upstream that vanished closes the client with
   1011, a client that vanished (or whose handler aiohttp cancelled) closes
   the upstream with 1001, a frame over ``limits.max_event_size`` closes with
   1009, and no frame either way for the target's ``read_timeout``, or the
   listener's shutdown, closes both with 1001.

The access-log line is written when this handler returns, at the session's
end: its duration, ``ex.session``'s counters, and the tokens summed from
``response.done`` events (:mod:`aigw.realtime.usage`) in ``ex.usage``, which
the token limit charges as it charges an HTTP answer.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSCloseCode, web

from aigw.chain.exchange import Exchange, Handler
from aigw.errors import BadRequest
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.listener.connection import client_connection
from aigw.realtime.dial import dial_upstream
from aigw.realtime.pump import ClientSocket
from aigw.realtime.session import bounded, run_session
from aigw.realtime.stats import SessionStats
from aigw.realtime.upgrade import is_websocket_handshake
from aigw.upstream.target import UpstreamTarget
from aigw.upstream.websocket import CLOSE_TIMEOUT_S

__all__ = ["HEARTBEAT_S", "make_realtime_relay"]

HEARTBEAT_S = 30.0
"""Seconds between pings on each side: a peer that stops answering them is gone."""


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
        upstream = await dial_upstream(ex, chosen, max_frame=max_frame, heartbeat=HEARTBEAT_S)
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
                timeout=CLOSE_TIMEOUT_S,
            )
            # The 101 carries what any answer does: the id to quote, a quota's state.
            headers = client.headers
            headers["x-request-id"] = ex.request_id
            for name, value in ex.response_headers:
                headers[name] = value
            await client.prepare(request)
        except BaseException:
            await bounded(upstream.close(code=WSCloseCode.GOING_AWAY))
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
            run_session(ex, client, upstream, chosen.read_timeout, stats, shutdown)
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
