"""One keep-alive HTTP/1.1 connection to an upstream, as an ``asyncio.Protocol``.

Response bytes go to llhttp (``httptools.HttpResponseParser``) as they arrive;
its callbacks land here: the head is read once llhttp says it is complete,
body bytes are queued for one reader at a time, and the end of the message
ends the body. What llhttp does not refuse by itself is checked here (head
size, interim responses, bytes after the response) and in
``aigw.upstream.http1`` (version, status range, ``Transfer-Encoding``).

It never reads ahead of a slow reader by more than ``_HIGH_WATER`` bytes: past
that the socket is paused, so a client reading a stream slowly holds back
Azure rather than aigw's memory. A connection is only reused after a response
whose framing was exact: any fault, bytes after the response, an answer that
came before the request was fully sent, or ``Connection: close`` retire it.
"""

from __future__ import annotations

import asyncio
import collections
import select
import socket
from dataclasses import dataclass, field
from typing import cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

from aigw.upstream.http1 import (
    MAX_HEAD_BYTES,
    Framing,
    ProtocolError,
    ResponseHead,
    check_status_line,
    read_head,
)

__all__ = ["Origin", "UpstreamConnection", "UpstreamDisconnected"]

_MAX_INTERIM = 10
"""Interim (1xx) responses tolerated before the real one."""

_HIGH_WATER = 256 * 1024
"""Body bytes buffered from the upstream before its socket is paused."""

_CHUNK_FRAMING_SLACK = 64 * 1024
"""Chunk framing bytes a chunked body may send beyond its per-payload-byte allowance."""

_CHUNK_FRAMING_PER_BYTE = 32
"""Framing bytes allowed per payload byte: a 1-byte chunk with a short extension fits."""

_CLEAN_CHUNKED_END = b"\r\n\r\n"
"""How a chunked message ends: the last-chunk (or trailer) line, then the empty line."""


_AFTER_THE_END = "the upstream sent data after the response was complete"

_BROKEN = select.POLLERR | select.POLLHUP | select.POLLNVAL
"""Poll events of a socket reset by the peer (or closed by its transport after a failed send)."""


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
    """One keep-alive connection: sends a request, frames the response as it arrives.

    Also the callback object of its llhttp parser (``on_headers_complete``,
    ``on_body``, ``on_message_complete``). It has no ``on_message_begin`` (one
    call per response saved: a second message is caught at its head) and no
    ``on_header``: llhttp then collects no header strings in Python (whose
    piecewise concatenation is quadratic for a trickled head); the head's
    bytes are kept here and split once, when llhttp says it is complete.
    """

    __slots__ = (
        "_body_queue",
        "_buffered",
        "_chunk_slack",
        "_deadline",
        "_deadline_what",
        "_ended",
        "_error",
        "_head_buffer",
        "_head_request",
        "_head_start",
        "_in_flight",
        "_interim",
        "_loop",
        "_parser",
        "_parser_spent",
        "_paused",
        "_poller",
        "_remaining",
        "_tail",
        "_timer",
        "_waiter",
        "_writing_paused",
        "body_done",
        "closed",
        "head",
        "idle_since",
        "origin",
        "reusable",
        "reused",
        "transport",
        "unsent",
    )

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.reused = False
        self.unsent = False
        self.idle_since = 0.0
        self.head: ResponseHead | None = None
        self.body_done = False
        self._parser = HttpResponseParser(self)
        self._parser_spent = False
        self._head_buffer: bytes | bytearray = b""
        self._head_start = 0
        self._head_request = False
        self._in_flight = False
        self._interim = 0
        self._remaining = 0  # Content-Length bytes still due (LENGTH framing)
        self._tail = b""  # the last bytes received (CHUNKED framing)
        self._ended = False  # llhttp saw the end of the final response in this read
        self._chunk_slack = _CHUNK_FRAMING_SLACK
        self._body_queue: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: float | None = None
        self._deadline_what = ""
        self._timer: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._error: BaseException | None = None
        self._paused = False
        self._poller: select.poll | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                # Stream deltas are small writes; Nagle would hold them back.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Polls the socket itself before reuse (see has_pending_input); the
            # transport owns the descriptor, the poll object only names it.
            self._poller = select.poll()
            self._poller.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if not self._in_flight:
            # Bytes on an idle connection answer nothing aigw asked: read as
            # the next request's response they would be a smuggled answer.
            self.close()
            return
        try:
            if self.body_done:
                raise ProtocolError(_AFTER_THE_END)
            head = self.head
            if head is None:
                self._keep_head_bytes(data)
            elif head.framing is Framing.LENGTH:
                # Checked before llhttp sees them: it would read the excess
                # as the start of a next response.
                if len(data) > self._remaining:
                    raise ProtocolError("the upstream sent more than its Content-Length")
                self._remaining -= len(data)
            buffered = self._buffered
            self._parser.feed_data(data)
            if self.head is None:
                if len(self._head_buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
                return
            if self.head.framing is Framing.CHUNKED:
                if head is not None:  # the read that ended the head is bounded anyway
                    self._count_chunk_framing(len(data), self._buffered - buffered)
                self._check_chunked_end(data)
            if self._ended:
                # Only now: a fault anywhere in this read fails the response
                # rather than leaving a complete-looking body behind.
                self._finish_body()
        except (HttpParserError, HttpParserUpgrade) as exc:
            self._refuse(self._parse_error(exc))
        except ProtocolError as exc:
            self._refuse(exc)

    def eof_received(self) -> bool:
        self.reusable = False
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._stop_timer()
        head = self.head
        if head is not None and not self.body_done:
            if head.framing is Framing.CLOSE and exc is None:
                self._finish_body()  # a close-delimited body ends with a clean close
            else:
                self._fail(UpstreamDisconnected("the upstream closed the connection mid-body"))
        elif head is None and self._in_flight:
            self._fail(UpstreamDisconnected("the upstream closed the connection before answering"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    # -- llhttp callbacks ---------------------------------------------------

    def on_headers_complete(self) -> None:
        if self.head is not None:
            # A second message after the final response, in the same read: a
            # smuggled answer. (A cut-off one fails the checks after the read.)
            raise ProtocolError(_AFTER_THE_END)
        buffer = self._head_buffer
        start = self._head_start
        # llhttp skips empty lines before a message (RFC 9112 2.2).
        while buffer[start] in b"\r\n":
            start += 1
        # llhttp accepted the head: CRLF line ends only, so its first blank
        # line is its end.
        end = buffer.find(b"\r\n\r\n", start) + 4
        if end > MAX_HEAD_BYTES:
            raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            # 1xx interim responses (103 Early Hints): skip to the real one.
            # (A 101 is refused by llhttp itself: it stops at the upgrade.)
            check_status_line(buffer, start, status)
            self._interim += 1
            if self._interim > _MAX_INTERIM:
                raise ProtocolError(f"more than {_MAX_INTERIM} interim (1xx) responses")
            self._head_start = end
            return
        head = read_head(
            buffer[start : end - 4],
            status,
            keep_alive=parser.should_keep_alive(),
            head_request=self._head_request,
        )
        # Bytes of this read after the head: the body's first bytes, or more.
        after = len(buffer) - end
        self._head_buffer = b""
        self._head_start = 0
        self._interim = 0
        self.head = head
        transport = self.transport
        if not head.keep_alive or (transport is not None and transport.get_write_buffer_size()):
            # Also an early answer (413 before the body was sent): the rest
            # of the request is still queued and must never reach the
            # upstream ahead of another request.
            self.reusable = False
        framing = head.framing
        if framing is Framing.LENGTH:
            assert head.content_length is not None
            self._remaining = head.content_length - after
            if self._remaining < 0:
                raise ProtocolError("the upstream sent more than its Content-Length")
        elif framing is Framing.CHUNKED:
            self._tail = b""
            self._chunk_slack = _CHUNK_FRAMING_SLACK
        elif framing is Framing.NONE:
            if self._head_request:
                # llhttp does not know the request was HEAD: it would wait
                # for the body the headers announce. A new parser next time.
                self._parser_spent = True
            if after:
                raise ProtocolError(_AFTER_THE_END)
            self.body_done = True
        self._wake()

    def on_body(self, data: bytes) -> None:
        self._body_queue.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head is not None:  # else an interim response ended
            self._ended = True

    # -- framing ------------------------------------------------------------

    def _count_chunk_framing(self, size: int, body: int) -> None:
        """Bounds what a chunked body may send besides its payload.

        llhttp keeps nothing of chunk-size lines, extensions and trailers, so
        they cost no memory, but an endless one would hold the connection
        with no body byte to count against a size limit. Allowed: 64 KiB, plus
        32 bytes of framing per byte of payload: legal HTTP even made of
        1-byte chunks with short extensions passes (Azure's chunks carry
        hundreds of payload bytes), while framing with no payload ends.
        """
        self._chunk_slack += _CHUNK_FRAMING_PER_BYTE * body - (size - body)
        if self._chunk_slack < 0:
            raise ProtocolError(
                "chunk framing (size lines, extensions, trailers) far exceeds the payload"
            )

    def _keep_head_bytes(self, data: bytes) -> None:
        """Keeps the bytes of an incomplete head: llhttp reports where it ends, not its bytes."""
        buffer = self._head_buffer
        if not buffer:
            self._head_buffer = data  # usually the whole head: no copy
        else:
            if isinstance(buffer, bytes):
                buffer = self._head_buffer = bytearray(buffer)
            buffer += data  # amortised: a trickled head costs linear time

    def _check_chunked_end(self, data: bytes) -> None:
        """Refuses empty lines after a chunked body that llhttp skipped silently.

        llhttp reads CR and LF before a message as empty lines to ignore, so a
        stray CRLF after the last chunk in the same read raises nothing. A
        clean end is exactly ``0\\r\\n`` (trailers) ``\\r\\n``: its last four
        bytes are CRLF CRLF and the byte before them is not CR or LF.
        """
        # PERF: the previous read is kept whole, by reference; only a read
        # shorter than five bytes needs the end of the one before.
        tail = data if len(data) >= 5 else self._tail[-5:] + data
        if not self._ended:
            self._tail = tail
        elif tail[-4:] != _CLEAN_CHUNKED_END or tail[-5:-4] in (b"\r", b"\n"):
            raise ProtocolError(_AFTER_THE_END)

    def _finish_body(self) -> None:
        self.body_done = True
        self._wake()

    def _parse_error(self, exc: Exception) -> ProtocolError:
        """The error to report for what llhttp refused (or a callback raised in it)."""
        if self._ended:
            # Whatever llhttp made of them, these bytes came after the end.
            return ProtocolError(_AFTER_THE_END)
        if isinstance(exc, HttpParserUpgrade):
            return ProtocolError("the upstream switched protocols unasked")
        if isinstance(exc, HttpParserCallbackError) and isinstance(exc.__context__, ProtocolError):
            return exc.__context__  # aigw's own check, raised in a callback
        # llhttp's reasons name the rule broken ("Invalid header value char"),
        # never the bytes that broke it.
        return ProtocolError(f"invalid HTTP/1.1 response: {exc}")

    def _refuse(self, exc: ProtocolError) -> None:
        self._fail(exc)
        self.close()

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
        transport = self.transport
        assert transport is not None
        transport.write(request)
        if self.reused:
            self.unsent = self._send_failed()

    def _send_failed(self) -> bool:
        """The request just written never left: the socket was reset before the send.

        Both asyncio's and uvloop's transports send at once when nothing is
        queued (always so on an idle connection, also below TLS), and a send
        that fails accepts no byte; the transport then closes (uvloop closes
        the descriptor: POLLNVAL) or the socket reports the reset (POLLHUP,
        POLLERR). Seen microseconds after a send that succeeded, a reset
        cannot answer bytes that have not had time to cross the network; on
        loopback it answers bytes that hit a closed socket, which no server
        read either.

        PERF: one poll(2) with a zero timeout per request on a reused
        connection (~0.5 µs).
        """
        poller = self._poller
        if poller is None:
            return False
        events = poller.poll(0)
        return bool(events) and bool(events[0][1] & _BROKEN)

    def _clear_response(self) -> None:
        # Only a connection whose response was read whole and without fault
        # is reused (the pool checks): the head state was reset when the
        # final head came, the body queue is empty, no error is set.
        self.head = None
        self.body_done = False
        self._ended = False
        if self._parser_spent:
            self._parser = HttpResponseParser(self)
            self._parser_spent = False
        if self._paused:
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def send_more(self, parts: list[bytes]) -> None:
        """Writes more of a request body sent as it arrives (after ``start`` sent its head).

        Raises:
            UpstreamDisconnected, ProtocolError: the connection failed meanwhile.
        """
        if self._error is not None:
            raise self._error
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise UpstreamDisconnected("the upstream closed the connection during the request body")
        transport.writelines(parts)

    @property
    def writing_paused(self) -> bool:
        """The kernel's send buffer is full: the request is still being sent."""
        return self._writing_paused

    async def send_rest(self, within: float | None) -> None:
        """Waits until the kernel has taken the request, or the response head came first.

        An upstream may answer (413, 401) without reading a large body; the
        answer is then the response, and waiting for the upstream to take
        the rest would only end in the write timeout.

        Raises:
            TimeoutError: neither happened within *within* seconds.
            UpstreamDisconnected, ProtocolError: the connection failed first.
        """
        while self._writing_paused and self.head is None:
            if self._error is not None:
                raise self._error
            await self._arm(within, "the upstream did not accept the request body in time")

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
    def answered_nothing(self) -> bool:
        """Not one byte of a response to the request in flight has arrived."""
        return self.head is None and not self._head_buffer

    @property
    def body_consumed(self) -> bool:
        """The whole response body arrived and was read."""
        return self.body_done and not self._body_queue

    def has_pending_input(self) -> bool:
        """Bytes or a FIN wait in the socket although the connection is idle.

        The event loop has not read them yet (it is busy, or they arrived in
        this very iteration): an upstream that closed an idle connection a
        moment ago. Reusing it would send a request into a closing socket.

        PERF: one ``poll`` with a zero timeout, ~0.5 µs: no socket object, no
        exception raised (a ``recv(MSG_PEEK)`` costs ~2 µs plus a socket
        wrapper that must never close the transport's descriptor).
        """
        poller = self._poller
        return poller is not None and bool(poller.poll(0))

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
        self.reused = True
