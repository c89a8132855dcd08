"""Upstream WebSocket connections (the Realtime API), owned by the app's upstream pool.

The HTTP pool speaks HTTP/1.1 request/response only; a WebSocket session is
dialled with aiohttp's client, whose session is created on first use and
closed with the pool, never with a route table.

SECURITY: an upstream redirect is never followed. aiohttp's client follows
redirects by default and would resend the handshake, with the route's
``api-key``, to whatever origin the ``Location`` names; here a redirect ends
the dial as :class:`HandshakeRefused` with its 3xx status.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Literal, TypeAlias

import aiohttp
from multidict import MultiMapping

__all__ = ["CLOSE_TIMEOUT_S", "HandshakeRefused", "UpstreamSocket", "WebSocketDialer"]

UpstreamSocket: TypeAlias = aiohttp.ClientWebSocketResponse[Literal[False]]
"""An upstream WebSocket whose text frames are read as bytes (never decoded)."""

CLOSE_TIMEOUT_S = 3.0
"""How long a close handshake may take on each side (client and upstream) before the
socket is dropped (aiohttp's default is 10 s)."""


class HandshakeRefused(Exception):
    """The upstream answered the upgrade with something other than ``101``.

    Attributes:
        status: Its status (a 3xx when it tried to redirect).
        headers: Its response headers.
    """

    def __init__(self, status: int, headers: MultiMapping[str] | None) -> None:
        super().__init__(f"the upstream answered the WebSocket upgrade with {status}")
        self.status = status
        self.headers = headers


async def _refuse_redirect(
    _session: aiohttp.ClientSession,
    _context: SimpleNamespace,
    params: aiohttp.TraceRequestRedirectParams,
) -> None:
    # Called by aiohttp before it follows a redirect: raising here stops it.
    response = params.response
    response.close()
    raise HandshakeRefused(response.status, response.headers)


class WebSocketDialer:
    """The app's aiohttp client session for upstream WebSockets, created lazily.

    Args:
        ssl_context: For ``wss`` origins; the default verifies certificates against
            the system store (the same context the HTTP pool uses).
        limit: Most upstream WebSocket connections open at once.
    """

    __slots__ = ("_limit", "_session", "_ssl")

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, limit: int = 1000) -> None:
        self._ssl = ssl_context
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The client session (created on first use, on the running loop)."""
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, ssl=self._ssl if self._ssl is not None else True
            )
            trace = aiohttp.TraceConfig()
            trace.on_request_redirect.append(_refuse_redirect)
            # No cookies: an upstream's Set-Cookie must never reach another session.
            # No session-wide deadline: each dial has its own, and a session lasts
            # as long as its client keeps it.
            session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
                trace_configs=[trace],
            )
            self._session = session
        return session

    async def dial(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        *,
        protocols: Sequence[str],
        handshake_timeout: float,
        max_frame: int,
        heartbeat: float | None,
    ) -> UpstreamSocket:
        """Opens one upstream WebSocket.

        Args:
            url: ``ws://`` or ``wss://`` URL, query included.
            headers: Sent with the upgrade request (aiohttp adds the WebSocket ones).
            protocols: Subprotocols offered (``Sec-WebSocket-Protocol``).
            handshake_timeout: Seconds for the whole handshake: connect, TLS, ``101``.
            max_frame: Largest message accepted from the upstream; a larger one makes
                ``receive()`` return an error and closes the socket with 1009.
            heartbeat: Seconds between pings (a missing pong closes the socket).

        Raises:
            HandshakeRefused: The upstream answered without switching protocols.
            TimeoutError: The handshake took longer than *handshake_timeout*.
            aiohttp.ClientError: Connecting, TLS or the handshake failed.
        """
        try:
            async with asyncio.timeout(handshake_timeout):
                return await self.session().ws_connect(
                    url,
                    headers=headers,
                    protocols=protocols,
                    max_msg_size=max_frame,
                    heartbeat=heartbeat,
                    # The relay answers each close itself, with the other side's code.
                    autoclose=False,
                    # Frames are relayed as bytes: no decode here, no encode on the way out.
                    decode_text=False,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise HandshakeRefused(exc.status, exc.headers) from exc

    async def close(self) -> None:
        """Closes the session and every upstream WebSocket still open."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
