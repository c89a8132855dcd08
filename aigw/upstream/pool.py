"""The upstream connection pool: keep-alive HTTP/1.1 connections to Azure, owned by the app.

Why aigw has its own client rather than ``aiohttp.ClientSession``: measured
under load, aiohttp's client spent about twice as much CPU per proxied request
as everything else in the gateway together (URL objects, cookie and tracing
hooks, payload registries, per-request timer contexts; see
docs/performance.md). A gateway sends one kind of request to a handful of
origins it knows at load time, so almost all of that work can be done once per
route instead of once per request. What is left per request: one write of a
pre-built head, one parse of the response head, and the body bytes.

Shape:

* ``UpstreamPool`` owns every connection. Idle connections are kept per
  origin, reused most-recent-first (the coldest ones age out), and closed
  after ``idle_timeout``; the total number of connections is capped.
* ``UpstreamConnection`` is an ``asyncio.Protocol``: it parses the response
  head and frames the body (Content-Length, chunked, or until close) as bytes
  arrive, and pauses the socket when the consumer falls behind.
* ``UpstreamResponse`` is what the relay sees: status, headers, ``read()``
  for a whole body, ``readany()`` for a stream, then ``release()`` or
  ``close()``.

A request is retried at most once, and only in the keep-alive race that Go's
``net/http`` transport retries too (``shouldRetryRequest``): the upstream
closed an idle connection just as aigw reused it. A connection that closed
before reuse is never used (``_take_idle``: its state, then a poll for a FIN,
a reset or stray bytes the event loop has not read yet). The retry goes to a
new connection to the same origin, whatever the route's failover criteria,
when the request failed on a *reused* connection with not one byte of
response read back, and either

* none of it was written: the send itself failed (Go's
  ``nothingWrittenError``; see ``UpstreamConnection._send_failed``). Any
  method, a POST included: the upstream provably received nothing, so
  nothing can have been acted on or billed; or
* the method is idempotent (GET, HEAD, OPTIONS, TRACE) and the connection was
  closed or reset before the answer (Go's ``errServerClosedIdle``).

A streamed body (``BodyStream``, a multipart upload) is resent only in the
first case, and only while none of it was taken from the stream: its pieces
come from the client once (``_request_stream``).

A POST that was written and then met a closed connection is not retried: a
server that read it and died is indistinguishable from one that closed first,
and a model call may have been acted on (and billed). Go does the same for a
request it cannot replay. (Failover to another target is the balancer's
decision, by its criteria.) A fresh connection is never retried either: a
server has no reason to close a connection it has not used.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial

from aigw.upstream.body_stream import BodyStream
from aigw.upstream.connection import Origin, UpstreamConnection, UpstreamDisconnected
from aigw.upstream.http1 import ProtocolError, ResponseHead, encode_request, encode_stream_head
from aigw.upstream.stream_send import send_stream
from aigw.upstream.websocket import WebSocketDialer

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "Origin",
    "ProtocolError",
    "UpstreamDisconnected",
    "UpstreamPool",
    "UpstreamResponse",
]


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods resent after a reused connection closed before answering (Go's ``isReplayable``)."""


class ConnectError(OSError):
    """No connection could be opened to the upstream (refused, unreachable, DNS)."""


class ConnectTimeout(TimeoutError):
    """No connection to the upstream within the connect timeout: nothing of the request was sent."""


class UpstreamResponse:
    """An upstream response being received: head now, body on demand.

    ``readany()`` returns the next bytes of the body as they arrived, ``b""``
    at its end (a stream's relay calls it once per delta, so it is the
    connection's own reader, bound here, with no wrapper frame). Exactly one of
    ``release()`` (after the whole body was read) or ``close()`` must follow;
    ``release`` returns the connection to the pool.
    """

    __slots__ = ("_conn", "_pool", "_read_timeout", "_settled", "head", "readany", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        conn: UpstreamConnection,
        head: ResponseHead,
        read_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self._settled = False
        self.head = head
        self.status = head.status
        self.readany: Callable[[], Awaitable[bytes]] = partial(conn.read_chunk, read_timeout)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Response headers in arrival order."""
        return self.head.headers

    @property
    def content_type(self) -> str:
        """``Content-Type`` (empty when absent)."""
        return self.head.content_type

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body.

        Args:
            limit: Largest body accepted; a longer one raises ProtocolError.
        """
        conn = self._conn
        parts: list[bytes] = []
        size = 0
        while True:
            data = await conn.read_chunk(self._read_timeout)
            if not data:
                break
            parts.append(data)
            size += len(data)
            if limit is not None and size > limit:
                raise ProtocolError(f"the upstream response body is larger than {limit} bytes")
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def release(self) -> None:
        """Hands the connection back for reuse if the body was read to its end."""
        if not self._settled:
            self._settled = True
            self._pool._release(self._conn)

    def close(self) -> None:
        """Closes the connection (the response was not, or could not be, read whole)."""
        if not self._settled:
            self._settled = True
            self._pool._discard(self._conn)


class UpstreamPool:
    """Keep-alive connections to every upstream origin; one per app, shared by all routes.

    Args:
        limit: Most connections open at once (idle and busy, all origins).
        idle_timeout: An idle connection older than this is closed rather than
            reused (shorter than Azure's own idle timeout, so aigw closes first).
        ssl_context: For ``https`` origins; the default verifies certificates
            against the system store.
    """

    def __init__(
        self,
        *,
        limit: int = 1000,
        idle_timeout: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._ssl = ssl_context
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.websockets = WebSocketDialer(ssl_context=ssl_context, limit=limit)
        """Upstream WebSocket sessions (the Realtime API), closed with the pool."""

    @property
    def open_connections(self) -> int:
        """Connections open now (idle, busy and being opened)."""
        return self._open

    def idle_connections(self, origin: Origin) -> int:
        """Idle connections kept for *origin*."""
        return len(self._idle.get(origin, ()))

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | BodyStream,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
        write_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Sends one request and returns once the response head has arrived.

        Args:
            origin: Where to send it.
            method: HTTP method.
            target: Path and query (``/openai/...?api-version=...``).
            headers: Headers to send besides ``Host`` and ``Content-Length``.
            body: The request body: bytes, or a stream sent as it arrives
                (``aigw.upstream.stream_send``: Content-Length or chunked,
                paced by the upstream; an early answer stops it).
            connect_timeout: Bound on getting a connection (pool wait,
                connect and TLS handshake together).
            read_timeout: Bound on each wait for bytes: the response head,
                then every read of the body.
            write_timeout: Bound on the kernel accepting a large body.

        Raises:
            ConnectError: the upstream could not be reached.
            ssl.SSLError: the TLS handshake failed (e.g. certificate not trusted).
            ConnectTimeout: no connection within *connect_timeout* (a TimeoutError).
            TimeoutError: the write or the response head took too long.
            UpstreamDisconnected: the connection closed before the head (on a
                reused connection, after the one resend the keep-alive race
                allows: see the module docstring).
            ProtocolError: the upstream's answer is not valid HTTP/1.1, or a
                header value holds a line break.
            GatewayError: a streamed body's client broke a bound (413, 408);
                the upstream connection is closed.
        """
        if not isinstance(body, bytes):
            return await self._request_stream(
                origin,
                method,
                encode_stream_head(method, target, origin.host_header, headers, body.length),
                body,
                connect_timeout,
                read_timeout,
                write_timeout,
            )
        wire = encode_request(method, target, origin.host_header, headers, body)
        conn = self._take_idle(origin)
        if conn is None:
            conn = await self._acquire(origin, connect_timeout)
        try:
            return await self._exchange(conn, method, wire, read_timeout, write_timeout)
        except UpstreamDisconnected:
            # The keep-alive race (module docstring): once, on a new connection.
            if not (
                conn.reused and conn.answered_nothing and (conn.unsent or method in _IDEMPOTENT)
            ):
                raise
        conn = await self._acquire(origin, connect_timeout, new=True)
        return await self._exchange(conn, method, wire, read_timeout, write_timeout)

    async def _exchange(
        self,
        conn: UpstreamConnection,
        method: str,
        wire: bytes,
        read_timeout: float | None,
        write_timeout: float | None,
    ) -> UpstreamResponse:
        """Sends *wire* on *conn* and waits for the response head; a failure closes *conn*."""
        try:
            conn.start(wire, head_request=method == "HEAD")
            if conn.unsent:
                raise UpstreamDisconnected("the upstream had closed the reused connection")
            if conn.writing_paused:
                await conn.send_rest(write_timeout)
            head = await conn.read_head(read_timeout)
        except BaseException:
            self._discard(conn)
            raise
        return UpstreamResponse(self, conn, head, read_timeout)

    async def _request_stream(
        self,
        origin: Origin,
        method: str,
        head: bytes,
        body: BodyStream,
        connect_timeout: float | None,
        read_timeout: float | None,
        write_timeout: float | None,
    ) -> UpstreamResponse:
        """``request`` for a body sent as it arrives (``aigw.upstream.stream_send``).

        The keep-alive race allows one resend only while nothing of the body
        was asked of the stream: the head's send failed on a reused
        connection. Once a piece was taken it is gone (the client sent it
        once), so any later failure is final.
        """
        conn = self._take_idle(origin)
        if conn is None:
            conn = await self._acquire(origin, connect_timeout)
        if not self._start(conn, method, head):
            # The keep-alive race (module docstring): once, on a new connection
            # (whose send is never found unsent: only a reused one's is checked).
            conn = await self._acquire(origin, connect_timeout, new=True)
            self._start(conn, method, head)
        try:
            await send_stream(conn, body, write_timeout)
            response_head = await conn.read_head(read_timeout)
        except BaseException:
            # Also a client body that broke a bound: the upstream has part of
            # a request that will never be complete.
            self._discard(conn)
            raise
        return UpstreamResponse(self, conn, response_head, read_timeout)

    def _start(self, conn: UpstreamConnection, method: str, head: bytes) -> bool:
        """Sends a request head; False (and *conn* closed) when it never left."""
        try:
            conn.start(head, head_request=method == "HEAD")
        except BaseException:
            self._discard(conn)
            raise
        if conn.unsent:
            self._discard(conn)
            return False
        return True

    async def close(self) -> None:
        """Closes every idle connection; busy ones close as their responses finish."""
        self._closed = True
        await self.websockets.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
                self._open -= 1
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectError("the upstream pool is closed"))

    # -- connections ----------------------------------------------------------

    def _take_idle(self, origin: Origin) -> UpstreamConnection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        cutoff = time.monotonic() - self._idle_timeout
        while idle:
            conn = idle.pop()  # most recently used first
            # The check catches an upstream's close that the event loop has
            # not read yet: under load, the gap between the FIN arriving and
            # connection_lost running is when a request would be sent into it.
            # PERF: one poll(2), ~1.5 µs a request under load.
            if conn.reusable and _fresh(conn, cutoff) and not conn.has_pending_input():
                return conn
            conn.close()
            self._open -= 1
        return None

    async def _acquire(
        self, origin: Origin, within: float | None, *, new: bool = False
    ) -> UpstreamConnection:
        """A connection to *origin*: an idle one, else a new one under the cap, else waits.

        Bounded by *within* as a whole (pool wait, connect and TLS handshake).
        With *new*, never an idle one (a retry after the keep-alive race: the
        idle ones may have been closed by the same upstream at the same time).
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within):
                while True:
                    # Checked again after every wait: the wake-up may be a
                    # connection to this origin released for reuse.
                    idle = None if new else self._take_idle(origin)
                    if idle is not None:
                        return idle
                    if self._closed:
                        raise ConnectError("the upstream pool is closed")
                    if self._open < self._limit or self._evict_one_idle():
                        break
                    await self._wait_for_room()
                self._open += 1
                try:
                    _, conn = await loop.create_connection(
                        lambda: UpstreamConnection(origin, loop),
                        origin.host,
                        origin.port,
                        ssl=self._ssl_context() if origin.tls else None,
                        server_hostname=origin.host if origin.tls else None,
                    )
                except BaseException:
                    self._open -= 1
                    self._notify_waiter()
                    raise
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {origin} within the connect timeout") from None
        except ssl.SSLError:
            raise
        except socket.gaierror as exc:
            raise ConnectError(exc.errno, f"cannot resolve {origin.host}: {exc.strerror}") from exc
        except OSError as exc:
            raise ConnectError(exc.errno, exc.strerror or str(exc)) from exc
        self._schedule_sweep()
        return conn

    async def _wait_for_room(self) -> None:
        """Waits until a connection is released or closed."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._notify_waiter()  # woken but leaving: pass the turn on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _evict_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                conn = idle.pop(0)  # the coldest
                conn.close()
                self._open -= 1
                return True
        return False

    def _release(self, conn: UpstreamConnection) -> None:
        if conn.reusable and conn.body_consumed and not conn.closed and not self._closed:
            conn.reset_for_reuse()
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, []).append(conn)
            if self._waiters:
                # A waiter for another origin can evict this idle one.
                self._notify_waiter()
            return
        self._discard(conn)

    def _discard(self, conn: UpstreamConnection) -> None:
        """Closes a connection that will not be reused and frees its slot."""
        conn.close()
        self._open -= 1
        self._notify_waiter()

    def _notify_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl = context
        return self._ssl

    def _schedule_sweep(self) -> None:
        if self._sweeper is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Closes connections idle for longer than ``idle_timeout``."""
        self._sweeper = None
        cutoff = time.monotonic() - self._idle_timeout
        remaining = 0
        for idle in self._idle.values():
            fresh = []
            for conn in idle:
                if _fresh(conn, cutoff):
                    fresh.append(conn)
                else:
                    conn.close()
                    self._open -= 1
            idle[:] = fresh
            remaining += len(fresh)
        if remaining or self._open:
            self._schedule_sweep()


def _fresh(conn: UpstreamConnection, cutoff: float) -> bool:
    """An idle connection still worth reusing: open, and idle since *cutoff* or later."""
    return not conn.closed and conn.idle_since >= cutoff
