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

A request is never retried: a POST to a model may have been acted on (and
billed) even if its connection died before the answer.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import cast

from aigw.upstream.http1 import (
    MAX_HEAD_BYTES,
    ChunkedDecoder,
    ProtocolError,
    ResponseHead,
    encode_request,
    parse_response_head,
)

__all__ = [
    "ConnectError",
    "Origin",
    "ProtocolError",
    "UpstreamDisconnected",
    "UpstreamPool",
    "UpstreamResponse",
]

_HIGH_WATER = 256 * 1024
"""Body bytes buffered from the upstream before its socket is paused."""


class ConnectError(OSError):
    """No connection could be opened to the upstream (refused, unreachable, DNS)."""


class UpstreamDisconnected(ConnectionError):
    """The upstream closed the connection before the response was complete."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where connections go, resolved at load time.

    Attributes:
        scheme: ``http`` or ``https``.
        host: Host name or address to connect to (and to verify TLS against).
        port: TCP port.
    """

    scheme: str
    host: str
    port: int
    host_header: str = field(init=False)
    """The ``Host`` header value (the port is omitted when it is the scheme's default)."""

    def __post_init__(self) -> None:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(
            self, "host_header", host if self.port == default else f"{host}:{self.port}"
        )

    @property
    def tls(self) -> bool:
        """Connections are TLS."""
        return self.scheme == "https"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}"


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection: sends a request, frames the response as it arrives."""

    __slots__ = (
        "_body_queue",
        "_buffered",
        "_chunked",
        "_drain_waiter",
        "_error",
        "_head_buffer",
        "_head_request",
        "_loop",
        "_paused",
        "_remaining",
        "_waiter",
        "body_done",
        "closed",
        "head",
        "idle_since",
        "origin",
        "reusable",
        "transport",
    )

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self.head: ResponseHead | None = None
        self.body_done = False
        self._head_buffer = b""
        self._head_request = False
        self._body_queue: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._remaining = 0  # Content-Length bytes still due
        self._chunked: ChunkedDecoder | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Stream deltas are small writes; Nagle would hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            if self.head is None:
                self._receive_head(data)
            elif not self.body_done:
                self._receive_body(data)
            else:
                # Bytes nobody asked for: the framing is off, never reuse.
                raise ProtocolError("the upstream sent data after the response was complete")
        except ProtocolError as exc:
            self._fail(exc)
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self.head is not None and not self.body_done:
            if self._chunked is None and self.head.content_length is None:
                self._finish_body()  # a close-delimited body ends here
            else:
                self._fail(UpstreamDisconnected("the upstream closed the connection mid-body"))
        elif self.head is None and self._waiter is not None:
            self._fail(UpstreamDisconnected("the upstream closed the connection before answering"))
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(UpstreamDisconnected("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._drain_waiter = self._loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain_waiter = self._drain_waiter, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- framing ------------------------------------------------------------

    def _receive_head(self, data: bytes) -> None:
        buffer = self._head_buffer + data if self._head_buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
            self._head_buffer = buffer
            return
        self._head_buffer = b""
        head = parse_response_head(buffer[:end], head_request=self._head_request)
        rest = buffer[end + 4 :]
        if head.status < 200:
            # 1xx interim responses (103 Early Hints): skip to the real one.
            if head.status == 101:
                raise ProtocolError("the upstream switched protocols unasked")
            if rest:
                self._receive_head(rest)
            return
        self.head = head
        if not head.keep_alive:
            self.reusable = False
        if head.chunked:
            self._chunked = ChunkedDecoder()
        elif head.content_length is not None:
            self._remaining = head.content_length
            if self._remaining == 0:
                self._finish_body()
        self._wake()
        if rest:
            self._receive_body(rest)

    def _receive_body(self, data: bytes) -> None:
        decoder = self._chunked
        if decoder is not None:
            payload = decoder.feed(data)
            if payload:
                self._queue(payload)
            if decoder.done:
                if decoder.leftover:
                    raise ProtocolError("the upstream sent data after the response was complete")
                self._finish_body()
        elif self.head is not None and self.head.content_length is not None:
            size = len(data)
            if size > self._remaining:
                raise ProtocolError("the upstream sent more than its Content-Length")
            self._remaining -= size
            if size:
                self._queue(data)
            if self._remaining == 0:
                self._finish_body()
        else:
            self._queue(data)

    def _queue(self, data: bytes) -> None:
        self._body_queue.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish_body(self) -> None:
        self.body_done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, within: float | None, what: str) -> None:
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(within, _expire, waiter, what) if within is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    # -- used by UpstreamPool and UpstreamResponse --------------------------

    def start(self, request: bytes, *, head_request: bool) -> None:
        """Sends one request; the connection must be idle."""
        self.head = None
        self.body_done = False
        self._head_request = head_request
        self._error = None
        self._chunked = None
        assert self.transport is not None
        self.transport.write(request)

    async def drain(self, within: float | None) -> None:
        """Waits until the kernel has taken the request (bounded by the write timeout)."""
        drain = self._drain_waiter
        if drain is not None:
            try:
                async with asyncio.timeout(within):
                    await asyncio.shield(drain)
            except TimeoutError:
                raise TimeoutError("the upstream did not accept the request body in time") from None

    async def read_head(self, within: float | None) -> ResponseHead:
        """Waits for the response head (bounded by the read timeout)."""
        while self.head is None:
            if self._error is not None:
                raise self._error
            await self._wait(within, "the upstream did not answer in time")
        return self.head

    async def read_chunk(self, within: float | None) -> bytes:
        """The next body bytes received, or ``b""`` once the body is complete."""
        while True:
            queue = self._body_queue
            if queue:
                data = queue.popleft()
                self._buffered -= len(data)
                if self._paused and self._buffered <= _HIGH_WATER // 4:
                    self._paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                return data
            if self.body_done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(within, "the upstream stopped sending (read timeout)")

    def close(self) -> None:
        """Closes the socket now (never reused)."""
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()
            self.closed = True

    def reset_for_reuse(self) -> None:
        """Back to idle after a complete response."""
        self.head = None
        self._body_queue.clear()
        self._buffered = 0


def _expire(waiter: asyncio.Future[None], what: str) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(what))


class UpstreamResponse:
    """An upstream response being received: head now, body on demand.

    Exactly one of ``release()`` (after the whole body was read) or
    ``close()`` must follow; ``release`` returns the connection to the pool.
    """

    __slots__ = ("_conn", "_pool", "_read_timeout", "_settled", "head", "status")

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

    async def readany(self) -> bytes:
        """The next bytes of the body as they arrived, ``b""`` at its end."""
        return await self._conn.read_chunk(self._read_timeout)

    def release(self) -> None:
        """Hands the connection back for reuse if the body was read to its end."""
        if not self._settled:
            self._settled = True
            self._pool._release(self._conn)

    def close(self) -> None:
        """Closes the connection (the response was not, or could not be, read whole)."""
        if not self._settled:
            self._settled = True
            self._conn.close()
            self._pool._forget(self._conn)


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
        body: bytes,
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
            body: The request body.
            connect_timeout: Bound on getting a connection (pool wait,
                connect and TLS handshake together).
            read_timeout: Bound on each wait for bytes: the response head,
                then every read of the body.
            write_timeout: Bound on the kernel accepting a large body.

        Raises:
            ConnectError: the upstream could not be reached.
            ssl.SSLError: the TLS handshake failed (e.g. certificate not trusted).
            TimeoutError: connect, write or the response head took too long.
            UpstreamDisconnected: the connection closed before the head.
            ProtocolError: the upstream's answer is not valid HTTP/1.1, or a
                header value holds a line break.
        """
        wire = encode_request(method, target, origin.host_header, headers, body)
        conn = self._take_idle(origin)
        if conn is None:
            conn = await self._connect(origin, connect_timeout)
        try:
            conn.start(wire, head_request=method == "HEAD")
            if conn._drain_waiter is not None:
                await conn.drain(write_timeout)
            head = await conn.read_head(read_timeout)
        except BaseException:
            conn.close()
            self._forget(conn)
            raise
        return UpstreamResponse(self, conn, head, read_timeout)

    async def close(self) -> None:
        """Closes every idle connection; busy ones close as their responses finish."""
        self._closed = True
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
            if not conn.closed and conn.idle_since >= cutoff:
                return conn
            conn.close()
            self._open -= 1
        return None

    async def _connect(self, origin: Origin, within: float | None) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within):
                await self._reserve(origin)
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
            raise TimeoutError(f"no connection to {origin} within the connect timeout") from None
        except ssl.SSLError:
            raise
        except socket.gaierror as exc:
            raise ConnectError(exc.errno, f"cannot resolve {origin.host}: {exc.strerror}") from exc
        except OSError as exc:
            raise ConnectError(exc.errno, exc.strerror or str(exc)) from exc
        self._schedule_sweep()
        return conn

    async def _reserve(self, origin: Origin) -> None:
        """Counts one more connection, waiting for room (or making it) under the cap."""
        while self._open >= self._limit:
            if self._closed:
                raise ConnectError("the upstream pool is closed")
            if self._evict_one_idle():
                continue
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
        self._open += 1

    def _evict_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                conn = idle.pop(0)  # the coldest
                conn.close()
                self._open -= 1
                return True
        return False

    def _release(self, conn: UpstreamConnection) -> None:
        if conn.reusable and conn.body_done and not conn.closed and not self._closed:
            conn.reset_for_reuse()
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, []).append(conn)
            if self._waiters:
                # A waiter for another origin can evict this idle one.
                self._notify_waiter()
            return
        conn.close()
        self._forget(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
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
            fresh = [c for c in idle if not c.closed and c.idle_since >= cutoff]
            for conn in idle:
                if conn.closed or conn.idle_since < cutoff:
                    conn.close()
                    self._open -= 1
            idle[:] = fresh
            remaining += len(fresh)
        if remaining or self._open:
            self._schedule_sweep()
