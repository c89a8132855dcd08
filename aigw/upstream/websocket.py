"""Upstream WebSocket connections (the Realtime API), owned by the app's upstream pool.

The HTTP pool speaks HTTP/1.1 request/response only; a WebSocket session is
dialled with aiohttp's client, whose session is created on first use and
closed with the pool, never with a route table.
"""

from __future__ import annotations

import ssl

import aiohttp

__all__ = ["WebSocketDialer"]


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
            # No cookies: an upstream's Set-Cookie must never reach another session.
            session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
            self._session = session
        return session

    async def close(self) -> None:
        """Closes the session and every upstream WebSocket still open."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
