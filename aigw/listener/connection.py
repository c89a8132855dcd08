"""One client connection: request-head deadline, client send deadline, connection slot.

:class:`ClientConnection` is the ``asyncio.Protocol`` the event loop talks to
for each accepted client connection. It forwards every transport callback,
unchanged, to aiohttp's ``RequestHandler`` (which writes to the transport
directly), and adds what aiohttp lacks:

* SECURITY: **request-head deadline (slowloris).** aiohttp has no timeout for
  reading a request head: a connection that sends nothing, or one header byte a
  second, stays open for ever. From connection open, and on a keep-alive
  connection from the first byte of each new request, the complete head must
  arrive within ``header_timeout`` or the connection is closed (with a JSON
  ``408`` and an access-log line if the client had started sending a head).
  Idle keep-alive connections stay governed by ``keepalive_timeout``; a
  running handler or a long streaming response is never cut by this timer.
* SECURITY: **client send deadline.** A client that stops reading its
  response (a stream, a large body) would hold its connection, the handler
  and the handler's upstream connection for ever. A client whose TCP
  acknowledges no byte for ``client_send_timeout`` while the write buffer is
  full is cut (reset): the handler is cancelled, which closes its upstream
  connection and frees its pool slot; the access log says ``client_stalled``
  (:func:`cut_outcome`). Like nginx's ``send_timeout``, the clock measures
  the client's silence, not the whole response: a slow reader is served.
* **Why a request was cut** (:func:`cut_outcome`): the client went away
  (``client_disconnect``), stopped reading (``client_stalled``), or the
  listener's drain budget ran out on shutdown (``shutdown``), so the access
  log blames the right party.
* **Connection slot**: the acceptor's ``release`` callback is called once,
  when the connection is lost, so the next queued connection can be accepted.
  At the connection limit the acceptor may *reclaim* the slot of an idle
  connection (:meth:`ClientConnection.reclaim_order`,
  :meth:`ClientConnection.reclaim`), as nginx reuses its "reusable" ones.

An upgraded connection (a realtime WebSocket, ``aigw.realtime``) is a request
in flight for its whole session: its handler runs until the session ends, so
neither the head deadline nor reclaiming ever touches it, and aiohttp's
keep-alive timer waits for the handler too; the send deadline still cuts a
client that stops reading its frames (tests/unit/test_realtime_relay.py).

The aiohttp internals read here (``head_count``, ``is_idle``, ``idle_order``)
live in ``aigw.listener.aiohttp_internals``, checked at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable
from email.utils import formatdate

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from aigw.chain.request_id import new_request_id
from aigw.errors import RequestTimeout
from aigw.listener.aiohttp_internals import SERVER_HEADER, head_count, idle_order, is_idle
from aigw.listener.refusals import log_refusal

__all__ = ["ClientConnection", "Shutdown", "client_connection", "cut_outcome"]

_log = logging.getLogger("aigw.listener")


class Shutdown:
    """Shared by the connections of one listener: whether it has started shutting down.

    Set once by ``Listener.stop()`` (:meth:`begin`); read when a request is cut,
    to tell a drain cut from a client that left, and awaited by what has no end
    of its own to drain to (a realtime WebSocket session closes with 1001 at once).
    """

    __slots__ = ("_begun", "started")

    def __init__(self) -> None:
        self.started = False
        self._begun: asyncio.Event | None = None  # created by the first waiter

    def begin(self) -> None:
        """Marks the shutdown as started and wakes every :meth:`wait`."""
        self.started = True
        if self._begun is not None:
            self._begun.set()

    async def wait(self) -> None:
        """Returns once the shutdown has started."""
        if self._begun is None:
            self._begun = asyncio.Event()
            if self.started:
                self._begun.set()
        await self._begun.wait()


# The answer to a client that started a request head and ran out of time,
# written straight to the transport: nothing of a response exists at that
# point (the connection is idle between requests), so it cannot corrupt one.
_HEAD_408 = (
    "HTTP/1.1 408 Request Timeout\r\n"
    "Connection: close\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: {length}\r\n"
    "x-request-id: {request_id}\r\n"
    "Date: {date}\r\n"
    "Server: {server}\r\n"
    "\r\n"
)

# ``struct tcp_info`` (Linux 4.1+): ``tcpi_bytes_acked``, the bytes of the
# response the client's TCP has acknowledged, a u64 at offset 120. A client
# that reads, however slowly, moves it; one that stopped reading cannot
# (its receive window is zero).
_TCP_INFO_SIZE = 128
# SO_LINGER on, zero seconds: close() sends a reset and frees the send buffer.
_LINGER_RESET = struct.pack("ii", 1, 0)
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
# How often per send deadline the acknowledged bytes are read while writing is
# paused: a client that stopped reading is cut at most 1/_SEND_CHECKS of the
# deadline late (a few microseconds of getsockopt per check).
_SEND_CHECKS = 10
# asyncio may run a timer this early (its clock resolution is about 1 ms).
_TIMER_SLACK = 0.002
# ``ioctl(FIONREAD)``: an int, the bytes waiting in the socket's receive queue.
_FIONREAD = struct.Struct("i")
_FIONREAD_ZERO = _FIONREAD.pack(0)


class ClientConnection(asyncio.Protocol):
    """Wraps one aiohttp ``RequestHandler``: head deadline, send deadline, connection slot.

    The transport talks to this object; every callback is forwarded unchanged,
    and aiohttp writes to the transport directly. The additions:

    **Request-head deadline**: one ``TimerHandle``, armed

    * at ``connection_made`` (the first head is due within the deadline), and
    * when bytes arrive while the handler is idle and they do *not* complete a
      head (a new request has started arriving slowly),

    and cancelled as soon as the parser completes a head. On the hot path (a
    request head arriving in one segment on an idle connection) no timer is
    touched at all: the head completes within the same ``data_received`` call.

    Known gap, by design: bytes of a further request that arrive before the
    previous one is done (pipelining, or the tail of the same TCP segment) do
    not arm the timer; we cannot tell them from body bytes without more parser
    internals. Such a connection is still bounded: the first byte received
    after the handler goes idle arms the timer, and silence is ended by
    aiohttp's keep-alive timer (``keepalive_timeout``).

    **Send deadline**: a second timer, running while the transport's write
    buffer is past its high-water mark (from ``pause_writing`` until
    ``resume_writing``). Ten times per deadline it asks the kernel how many
    bytes the client has acknowledged (``TCP_INFO``): a client that reads,
    however slowly, moves the count, and its silence starts again (the
    writable wake-up comes only once the kernel's queue has drained below
    its low-water mark, which takes longer than the deadline at a slow pace).
    A client that acknowledged nothing for ``client_send_timeout`` stopped
    reading, and is cut between one deadline and 1.1 deadlines after its last
    acknowledgement: the transport is aborted, which aiohttp turns into the
    handler's cancellation. :attr:`send_timed_out` records why. (Where
    ``TCP_INFO`` is unavailable, the deadline runs from ``pause_writing``.)

    **Who cut it**: ``connection_lost`` notes whether the transport was still
    the handler's when it was lost (the client closed or reset it) or aiohttp
    had already let go of it (aiohttp closed it: a drain cut, a deadline, the
    end of a ``Connection: close`` response). :func:`cut_outcome` combines
    that with :attr:`send_timed_out` and the listener's :class:`Shutdown`.

    **Slot**: ``release`` is called once, when the connection is lost, so the
    acceptor may accept the next one. A connection is *reclaimable* while it
    is idle between requests and no byte of a next request has arrived: a
    keep-alive connection after its response, or a new one that has sent
    nothing yet. One with a request in flight (a head in part, a body, a
    handler running, a response being written) never is. The known gap above
    applies here too: pipelined bytes of a next head that arrived during the
    previous response are not seen, and such a connection counts as idle.
    """

    __slots__ = (
        "_acked",
        "_armed_count",
        "_bytes_seen",
        "_handler",
        "_loop",
        "_peer_closed",
        "_quiet_since",
        "_release",
        "_send_check",
        "_send_timeout",
        "_send_timer",
        "_shutdown",
        "_timeout",
        "_timer",
        "send_timed_out",
    )

    def __init__(
        self,
        handler: RequestHandler,
        loop: asyncio.AbstractEventLoop,
        header_timeout: float,
        send_timeout: float,
        release: Callable[[], None] | None = None,
        shutdown: Shutdown | None = None,
    ) -> None:
        self._handler = handler
        self._shutdown = shutdown
        self._loop = loop
        self._timeout = header_timeout
        self._send_timeout = send_timeout
        self._release = release
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._armed_count = 0
        # Whether the client sent any byte of the overdue head: a 408 answers a
        # request that was started; a connection that never sent anything gets
        # a silent close, like an idle keep-alive connection does.
        self._bytes_seen = False
        self._acked: int | None = None  # the client's acknowledged bytes when last checked
        self._quiet_since = 0.0  # loop time since which it acknowledged nothing
        self._send_check = send_timeout / _SEND_CHECKS
        self.send_timed_out = False
        """The connection was closed because the client stopped reading."""
        self._peer_closed = False  # the client closed or reset the connection

    def cut_outcome(self) -> str:
        """Why a request on this connection was cut short (see :func:`cut_outcome`)."""
        if self.send_timed_out:
            return "client_stalled"
        shutdown = self._shutdown
        if shutdown is not None and shutdown.started and not self._peer_closed:
            return "shutdown"
        return "client_disconnect"

    @property
    def shutdown(self) -> Shutdown | None:
        """The listener's shutdown state (None for a connection served without one)."""
        return self._shutdown

    def reclaim_order(self) -> float | None:
        """None unless the connection is reclaimable; then lowest = idle longest.

        Called by the acceptor only when it is at its connection limit, for
        every open connection: a few attribute reads, no system call.
        """
        handler = self._handler
        if handler.transport is None or not is_idle(handler):
            return None
        if self._timer is not None and self._bytes_seen:
            return None  # part of a request head has arrived
        return idle_order(handler)

    def reclaim(self) -> bool:
        """Closes this reclaimable connection to free its slot; False if it must be kept.

        Kept if bytes of a request are waiting unread in the socket: the
        connection was accepted, or went idle, and its request is already
        here (it would otherwise be dropped unanswered). Closed silently, as
        aiohttp's keep-alive timer closes an idle connection.
        """
        handler = self._handler
        transport = handler.transport
        if transport is None:
            return False
        if _unread_bytes(transport):
            return False
        handler.force_close()
        return True

    def _arm(self, bytes_seen: bool) -> None:
        self._armed_count = head_count(self._handler)
        self._bytes_seen = bytes_seen
        self._timer = self._loop.call_at(self._loop.time() + self._timeout, self._on_deadline)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        self._timer = None
        handler = self._handler
        transport = handler.transport
        if transport is None:
            return  # already closed
        if head_count(handler) != self._armed_count:
            return  # a head completed by a path we do not observe (resumed reading)
        if not is_idle(handler):
            # Not expected: the timer only runs while no request is in flight.
            # Never cut a response; close once the current one is done.
            handler.close()
            return
        _log.debug(
            "request head timeout, closing connection",
            extra={"peer": transport.get_extra_info("peername"), "sent_bytes": self._bytes_seen},
        )
        if self._bytes_seen:
            transport.write(_head_timeout_response(transport, self._timeout))
        # force_close() closes the transport, which flushes the 408 first.
        handler.force_close()

    def _arm_send(self, transport: asyncio.BaseTransport) -> None:
        now = self._loop.time()
        self._acked = _bytes_acked(transport)
        self._quiet_since = now
        self._send_timer = self._loop.call_at(now + self._send_check, self._on_send_check)

    def _on_send_check(self) -> None:
        self._send_timer = None
        transport = self._handler.transport
        if transport is None:
            return
        loop = self._loop
        now = loop.time()
        if self._acked is not None:
            acked = _bytes_acked(transport)
            if acked != self._acked:
                # Reading, slowly: the silence starts again now (at the latest
                # moment the acknowledgement can have come, so a client is
                # never cut before a whole deadline of silence).
                self._acked = acked
                self._quiet_since = now
        deadline = self._quiet_since + self._send_timeout
        if now < deadline - _TIMER_SLACK:
            self._send_timer = loop.call_at(
                min(now + self._send_check, deadline), self._on_send_check
            )
            return
        self.send_timed_out = True
        # abort(), not close(): close() would wait to flush the very bytes the
        # client is not reading. And a reset, not a FIN: closed normally, the
        # kernel would keep the socket and its send buffer (up to 4 MiB) for
        # minutes, probing the zero window (nginx: reset_timedout_connection).
        # connection_lost follows, then aiohttp cancels the handler.
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)
        self._arm(bytes_seen=False)

    def data_received(self, data: bytes) -> None:
        handler = self._handler
        if self._timer is not None:
            # A head is due: feed, then stop the clock if it (or an error) arrived.
            self._bytes_seen = True
            handler.data_received(data)
            if head_count(handler) != self._armed_count:
                self._disarm()
            return
        # Sample before feeding: a completed head wakes the handler.
        idle = is_idle(handler)
        count = head_count(handler)
        handler.data_received(data)
        if idle and head_count(handler) == count and handler.transport is not None:
            # The first bytes of a new request, but not yet a full head.
            self._arm(bytes_seen=True)

    def eof_received(self) -> bool | None:
        # Typed loosely so a future aiohttp returning True (keep half-open) is honoured.
        forward: Callable[[], bool | None] = self._handler.eof_received
        return forward()

    def connection_lost(self, exc: Exception | None) -> None:
        # aiohttp drops its transport (force_close) before closing it itself;
        # still held, the loss came from the client's side (or our abort).
        self._peer_closed = self._handler.transport is not None
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._handler.connection_lost(exc)
        release = self._release
        if release is not None:
            self._release = None
            release()

    def pause_writing(self) -> None:
        self._handler.pause_writing()
        transport = self._handler.transport
        if self._send_timer is None and transport is not None:
            self._arm_send(transport)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._handler.resume_writing()


def _head_timeout_response(transport: asyncio.BaseTransport, timeout: float) -> bytes:
    """The JSON 408 for a head that did not arrive in time; writes its access-log line."""
    error = RequestTimeout(
        "request_timeout", f"the request head did not arrive within {timeout:g} s"
    )
    request_id = new_request_id()
    body = error.body()
    peer = transport.get_extra_info("peername")
    client = peer[0] if isinstance(peer, tuple) else None
    log_refusal(request_id, error, client=client, bytes_out=len(body))
    head = _HEAD_408.format(
        length=len(body), request_id=request_id, date=formatdate(usegmt=True), server=SERVER_HEADER
    )
    return head.encode() + body


def _unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes received on *transport*'s socket that it has not read yet (0 if unknown)."""
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        # FIONREAD on the descriptor: uvloop's socket stand-in has no recv(MSG_PEEK).
        answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, _FIONREAD_ZERO)
    except OSError:
        return 0
    unread: int = _FIONREAD.unpack(answer)[0]
    return unread


def _bytes_acked(transport: asyncio.BaseTransport) -> int | None:
    """Bytes the peer has acknowledged on *transport*'s TCP socket; None if unknown."""
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None  # a kernel before 4.1
    acked: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]
    return acked


def client_connection(request: web.BaseRequest) -> ClientConnection | None:
    """The connection *request* arrived on, while it is open (None once lost).

    Cheap enough to call once per request: the access log keeps the result to
    ask :func:`cut_outcome` if the request ends in a cancellation.
    """
    transport = request.transport
    if transport is None:
        return None
    connection = transport.get_protocol()
    return connection if isinstance(connection, ClientConnection) else None


def cut_outcome(connection: ClientConnection | None) -> str:
    """The access-log outcome of a request cut short on *connection*.

    ``client_stalled`` if the send deadline cut a client that stopped reading;
    ``shutdown`` if the listener is shutting down and the client had not left
    (the drain budget ran out: aiohttp cancelled the handler and closed the
    connection); ``client_disconnect`` otherwise.
    """
    return "client_disconnect" if connection is None else connection.cut_outcome()
