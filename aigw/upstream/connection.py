"""One keep-alive HTTP/1.1 connection to an upstream, as an ``asyncio.Protocol``.

The protocol frames the response as bytes arrive (head, then a body delimited
by Content-Length, chunked coding or the close) and hands body bytes to one
reader at a time. It never reads ahead of a slow reader by more than
``_HIGH_WATER`` bytes: past that the socket is paused, so a client reading a
stream slowly holds back Azure rather than aigw's memory.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from dataclasses import dataclass, field
from typing import cast

from aigw.upstream.http1 import (
    MAX_HEAD_BYTES,
    ChunkedDecoder,
    ProtocolError,
    ResponseHead,
    parse_response_head,
)

__all__ = ["Origin", "UpstreamConnection", "UpstreamDisconnected"]

_MAX_INTERIM = 10
"""Interim (1xx) responses tolerated before the real one."""

_HIGH_WATER = 256 * 1024
"""Body bytes buffered from the upstream before its socket is paused."""


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
        "_deadline",
        "_deadline_what",
        "_drain_waiter",
        "_error",
        "_head_buffer",
        "_head_request",
        "_in_flight",
        "_interim",
        "_loop",
        "_paused",
        "_remaining",
        "_timer",
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
        self._in_flight = False
        self._interim = 0
        self._body_queue: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._remaining = 0  # Content-Length bytes still due
        self._chunked: ChunkedDecoder | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: float | None = None
        self._deadline_what = ""
        self._timer: asyncio.TimerHandle | None = None
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
        if not self._in_flight:
            # Bytes on an idle connection answer nothing aigw asked: read as
            # the next request's response they would be a smuggled answer.
            self.close()
            return
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
        self._stop_timer()
        if self.head is not None and not self.body_done:
            if self._chunked is None and self.head.content_length is None and exc is None:
                self._finish_body()  # a close-delimited body ends with a clean close
            else:
                self._fail(UpstreamDisconnected("the upstream closed the connection mid-body"))
        elif self.head is None and self._in_flight:
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
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end > MAX_HEAD_BYTES or (end < 0 and len(buffer) > MAX_HEAD_BYTES):
                raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
            if end < 0:
                self._head_buffer = buffer
                return
            head = parse_response_head(buffer[:end], head_request=self._head_request)
            buffer = buffer[end + 4 :]
            if head.status >= 200:
                break
            # 1xx interim responses (103 Early Hints): skip to the real one.
            if head.status == 101:
                raise ProtocolError("the upstream switched protocols unasked")
            self._interim += 1
            if self._interim > _MAX_INTERIM:
                raise ProtocolError(f"more than {_MAX_INTERIM} interim (1xx) responses")
        self._head_buffer = b""
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
        if buffer:
            self._receive_body(buffer)

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

    def _arm(self, within: float | None, what: str) -> asyncio.Future[None]:
        """A future for the next event (bytes, end, error) that fails after *within* s of silence.

        The caller awaits it. (Not a coroutine: one frame less on a path
        taken once per stream delta.) Once done it may stay in ``_waiter``:
        everything that resolves the waiter first checks it is not done.

        PERF: a stream waits once per delta, tens of times a second per
        connection. Arming and cancelling a timer for every wait cost ~13 % of
        a busy worker's CPU; instead one timer per connection stays armed and,
        when it fires early (data came meanwhile), re-arms for the wait now in
        progress. Over a long stream that is one timer per ``within`` seconds.
        """
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        if within is not None:
            deadline = loop.time() + within
            self._deadline = deadline
            self._deadline_what = what
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(deadline, self._on_deadline)
        else:
            self._deadline = None
        return waiter

    def _on_deadline(self) -> None:
        self._timer = None
        waiter, deadline = self._waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # nobody is waiting: the next wait arms a timer again
        if self._loop.time() >= deadline:
            waiter.set_exception(TimeoutError(self._deadline_what))
        else:
            self._timer = self._loop.call_at(deadline, self._on_deadline)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- used by UpstreamPool and UpstreamResponse --------------------------

    def start(self, request: bytes, *, head_request: bool) -> None:
        """Sends one request; the connection must be idle."""
        self._clear_response()
        self._head_request = head_request
        self._in_flight = True
        assert self.transport is not None
        self.transport.write(request)

    def _clear_response(self) -> None:
        self.head = None
        self.body_done = False
        self._error = None
        self._chunked = None
        self._head_buffer = b""
        self._remaining = 0
        self._interim = 0
        self._body_queue.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    @property
    def writing_paused(self) -> bool:
        """The kernel's send buffer is full: the request is still being sent."""
        return self._drain_waiter is not None

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
            await self._arm(within, "the upstream did not answer in time")
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
            await self._arm(within, "the upstream stopped sending (read timeout)")

    @property
    def body_consumed(self) -> bool:
        """The whole response body arrived and was read."""
        return self.body_done and not self._body_queue

    def close(self) -> None:
        """Closes the socket now (never reused).

        ``abort``, not ``close``: a closed transport still sends what it has
        buffered, so a request abandoned half-sent (write timeout, client
        gone) would reach Azure whole and be acted on, and billed, after aigw
        has reported it failed.
        """
        self.reusable = False
        self._in_flight = False
        self._stop_timer()
        if self.transport is not None and not self.closed:
            self.transport.abort()
            self.closed = True

    def reset_for_reuse(self) -> None:
        """Back to idle after a response read to its end.

        The response state is cleared by the next ``start``; until then
        ``_in_flight`` is off, so nothing arriving can reach it.
        """
        self._stop_timer()
        self._in_flight = False
