"""The socket layer: serve one ``aiohttp.web.Application`` with proxy-safe defaults.

aiohttp's server defaults are not safe for an internet-facing proxy (see
``notes/reliability.md`` §0.3-0.4, §2.2, §2.4; all measured on aiohttp 3.14.5).
This module closes the gaps that belong to the socket layer, independently of
whatever the application does:

* SECURITY: **request-head deadline (slowloris).** aiohttp has no timeout for
  reading a request head: a connection that sends nothing, or one header byte a
  second, stays open for ever. Every connection gets one timer: from connection
  open, and on a keep-alive connection from the first byte of each new request,
  the complete head must arrive within ``header_timeout`` or the connection is
  closed (with a JSON ``408`` and an access-log line if the client had started
  sending a head). Idle keep-alive connections stay governed by
  ``keepalive_timeout``; a running handler or a long streaming response is
  never cut by this timer.
* SECURITY: **client send deadline.** A client that stops reading its
  response (a stream, a large body) would hold its connection, the handler
  and the handler's upstream connection for ever. While the transport's
  write buffer is full (``pause_writing`` to ``resume_writing``), a client
  whose TCP acknowledges no byte for ``client_send_timeout`` is cut: the
  connection is aborted, which cancels the handler (see
  ``handler_cancellation``) and so closes its upstream connection and frees
  its pool slot. The access log says ``client_stalled``
  (:func:`send_timed_out`). Like nginx's ``send_timeout``, the clock measures
  the client's silence, not the whole response: a slow reader is served.
* SECURITY: **connection limit.** At most ``max_connections`` client
  connections are open at once (default: derived from ``RLIMIT_NOFILE``);
  past it the listener stops accepting and new connections wait in the
  kernel's listen queue (``aigw.acceptor``). Counted in
  ``aigw_connection_limit_reached_total``.
* SECURITY: **HTTP version allowlist.** llhttp accepts ``HTTP/2.0`` request
  lines and versionless ``GET /`` (HTTP/0.9), and aiohttp answers them with a
  ``HTTP/2.0 200`` / ``HTTP/0.9 200`` status line. Anything but HTTP/1.0 and
  HTTP/1.1 gets ``HTTP/1.1 505`` (JSON) and the connection is closed, before
  the application sees the request.
* SECURITY: **refused requests** (the parser's 400s: a header line over 8190
  bytes, too many headers, a control character, a garbage request line, the
  HTTP/2 preface) get a JSON error and one access-log line, never aiohttp's
  text/plain answer and stderr traceback that quote the request's bytes
  (``aigw.refusals``).
* ``Server: aigw``, without versions, instead of aiohttp's
  ``Python/3.11 aiohttp/3.14.5``: naming the product tells a client which
  hop answered (aigw or something in front of it), as nginx's
  ``server_tokens off`` does; the versions only help someone looking for a
  known vulnerability.
* SECURITY: **C parser required.** Most of aiohttp's request-smuggling
  advisories were in the pure-Python parser, which ``AIOHTTP_NO_EXTENSIONS``
  (or a wheel without the extension) silently switches to. We refuse to start.
* SECURITY: **no aiohttp access log.** Its default format logs ``%r``, the
  request line including the query string, which can carry secrets. The
  gateway writes its own structured access log.
* ``handler_cancellation=True``: a client disconnect cancels the handler, so an
  abandoned request stops its upstream call instead of running to completion.
* ``TCP_NODELAY`` is set on every accepted socket by aiohttp itself
  (``BaseProtocol.connection_made``); a test checks it so a change is noticed.

How it hooks in: ``web.AppRunner`` still builds the low-level ``web.Server`` and
runs the app's startup/shutdown/cleanup signals. Instead of ``web.TCPSite``
(which hard-wires ``runner.server`` as the protocol factory, leaving no
per-connection hook, and cannot stop accepting) the ``aigw.acceptor`` accepts
and hands each connection to a :class:`ClientConnection`, a thin
``asyncio.Protocol`` that forwards every transport callback to aiohttp's
``RequestHandler`` and watches request heads and write pauses go by. The
handler is a :class:`~aigw.refusals.RefusingRequestHandler`, a subclass that
only overrides the public ``handle_error``, built with the same options
``web.Server`` would pass (``Application(handler_args=...)`` is therefore not
honoured). The version check wraps the ``request_factory`` /
``request_handler`` public attributes of that ``web.Server`` instance, which
every ``RequestHandler`` reads when it is built.

The module relies on a few aiohttp internals. They are named in one place
(:data:`_PRIVATE_HANDLER_ATTRS`, the accessors below, ``web_protocol.ERROR``
and ``web_response.SERVER_SOFTWARE``), checked at start-up by
:func:`_check_aiohttp_internals`, and their meaning is checked by tests
against live connections, so an aiohttp upgrade that changes them fails
loudly instead of silently disabling a guard.

Not covered here: the request-*body* deadline (``aigw.chain.body_reader``) and TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import struct
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiohttp import http_parser, web, web_protocol, web_response
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from aigw.acceptor import Acceptor, bind, default_max_connections
from aigw.chain.request_id import new_request_id
from aigw.errors import RequestTimeout
from aigw.metrics import METRICS, Metrics
from aigw.refusals import RefusingRequestHandler, log_refusal, refuse, version_refusal

__all__ = [
    "ClientConnection",
    "Listener",
    "ListenerSettings",
    "RequestHandlerFunc",
    "client_connection",
    "default_max_connections",
    "require_c_parser",
    "send_timed_out",
    "start_listener",
]

RequestHandlerFunc = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
"""A request handler served without an ``Application`` (see :func:`start_listener`)."""

_log = logging.getLogger(__name__)

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

# The listen queue. aiohttp's default (128) overflows under a connection burst
# long before the process is busy; the kernel caps this at net.core.somaxconn.
_DEFAULT_BACKLOG = 1024


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """How to bind and guard the listening socket.

    Attributes:
        host: Address to bind. ``"127.0.0.1"`` by default: exposing the gateway
            is an explicit decision.
        port: TCP port; ``0`` picks a free port (read it from ``Listener.port``).
        header_timeout: Seconds a connection has to deliver one complete request
            head, counted from connection open and, on keep-alive connections,
            from the first byte of each further request (slowloris defence).
        keepalive_timeout: Seconds an idle keep-alive connection is kept open
            between requests.
        reuse_port: Set ``SO_REUSEPORT`` so several worker processes can bind
            the same port.
        shutdown_timeout: Seconds ``Listener.stop()`` waits for in-flight
            requests before cancelling them. aiohttp applies it twice at worst:
            once waiting for the handler, once waiting for the cancelled handler.
        backlog: Listen queue length (capped by ``net.core.somaxconn``).
        client_send_timeout: Seconds a response write may wait for a client
            that stopped reading before both sides are closed (nginx
            ``send_timeout``).
        max_connections: Most client connections served at once; past it the
            listener stops accepting until one closes. None derives it from
            ``RLIMIT_NOFILE`` (see :func:`default_max_connections`).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    reuse_port: bool = False
    shutdown_timeout: float = 30.0
    backlog: int = _DEFAULT_BACKLOG
    client_send_timeout: float = 60.0
    max_connections: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        # A zero or negative head timeout would mean "no deadline" in some
        # readings and "close at once" in others; neither is a safe default.
        if not self.header_timeout > 0:
            raise ValueError(f"header_timeout must be > 0, got {self.header_timeout}")
        if not self.keepalive_timeout > 0:
            raise ValueError(f"keepalive_timeout must be > 0, got {self.keepalive_timeout}")
        if not self.shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout}")
        if self.backlog < 1:
            raise ValueError(f"backlog must be >= 1, got {self.backlog}")
        if not self.client_send_timeout > 0:
            raise ValueError(f"client_send_timeout must be > 0, got {self.client_send_timeout}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")


# ---------------------------------------------------------------------------
# The only aiohttp internals this module relies on. Keep them here.
# ---------------------------------------------------------------------------

#: Private ``RequestHandler`` slots read by the head-deadline wrapper:
#:
#: * ``_request_count``: incremented by ``data_received`` each time the parser
#:   completes a request *head* (llhttp emits the message at headers-complete,
#:   before the body) or reports a parse error. A change means "a head arrived".
#: * ``_waiter``: the future ``RequestHandler.start()`` awaits while it has no
#:   parsed request to handle. Pending means the connection is idle between
#:   requests: no handler running, no response being written. aiohttp's own
#:   keep-alive timer (``_process_keepalive``) uses the same test.
_PRIVATE_HANDLER_ATTRS = ("_request_count", "_waiter")

#: The request message ``RequestHandler.start()`` builds the request of a parse
#: error from (``web_protocol.ERROR``, version HTTP/1.0). Recognised by identity
#: in the request factory so a refusal is answered in HTTP/1.1 like the rest.
_PARSE_ERROR_MESSAGE: object = getattr(web_protocol, "ERROR", None)

#: ``handle_error``'s parameters, which :class:`RefusingRequestHandler` overrides.
_HANDLE_ERROR_PARAMS = ("self", "request", "status", "exc", "message")

#: What the ``Server`` header says (aiohttp: ``Python/3.11 aiohttp/3.14.5``).
#: ``StreamResponse._prepare_headers`` reads the ``web_response`` module global
#: ``SERVER_SOFTWARE`` for every response it sends: replacing that one value
#: costs nothing per response.
SERVER_HEADER = "aigw"


def _head_count(handler: RequestHandler) -> int:
    """Number of request heads (or parse errors) seen on this connection so far."""
    count: int = handler._request_count
    return count


def _is_idle(handler: RequestHandler) -> bool:
    """Whether the handler is waiting for the next request, with nothing in flight."""
    waiter: asyncio.Future[None] | None = handler._waiter
    return waiter is not None and not waiter.done()


def _check_aiohttp_internals() -> None:
    """Fails start-up if the aiohttp internals named above are gone or changed.

    Raises:
        RuntimeError: An aiohttp upgrade removed, renamed or reshaped one of them.
    """
    missing = [
        name
        for name in _PRIVATE_HANDLER_ATTRS
        if not isinstance(getattr(RequestHandler, name, None), types.MemberDescriptorType)
    ]
    if not isinstance(_PARSE_ERROR_MESSAGE, RawRequestMessage):
        missing.append("aiohttp.web_protocol.ERROR")
    if not isinstance(getattr(web_response, "SERVER_SOFTWARE", None), str):
        missing.append("aiohttp.web_response.SERVER_SOFTWARE")
    params = tuple(inspect.signature(RequestHandler.handle_error).parameters)
    if params != _HANDLE_ERROR_PARAMS:
        missing.append(f"RequestHandler.handle_error{_HANDLE_ERROR_PARAMS[1:]}")
    if missing:
        raise RuntimeError(
            f"aiohttp.web_protocol.RequestHandler no longer has {missing}; "
            "aigw.listener's request-head timeout, refusals and Server header depend on them. "
            "Review aigw/listener.py against this aiohttp version."
        )


def _brand_server_header() -> None:
    """Makes every response aiohttp sends say ``Server: aigw``."""
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]


def require_c_parser() -> None:
    """Refuses to run on aiohttp's pure-Python HTTP request parser.

    Raises:
        RuntimeError: The C (llhttp) parser is not the one ``RequestHandler``
            uses, e.g. because ``AIOHTTP_NO_EXTENSIONS`` is set or the
            extension failed to import.
    """
    # SECURITY: most aiohttp request-smuggling advisories (CVE-2023-47627,
    # CVE-2024-23829, ...) were in the pure-Python parser only. Check the
    # module global RequestHandler actually instantiates, not just the
    # http_parser module's; if aiohttp renames it, this fails closed.
    c_parser = getattr(http_parser, "HttpRequestParserC", None)
    in_use: object = getattr(web_protocol, "HttpRequestParser", None)
    if c_parser is None or in_use is not c_parser:
        raise RuntimeError(
            "aiohttp's RequestHandler is not using the C (llhttp) HTTP request "
            f"parser but {in_use!r}. The pure-Python parser has a history of "
            "request-smuggling bugs the C parser did not have, so aigw refuses "
            "to serve with it. Unset AIOHTTP_NO_EXTENSIONS and install an aiohttp "
            "wheel with its C extensions for this platform."
        )


# ---------------------------------------------------------------------------
# One client connection: request-head deadline, send deadline, slot
# ---------------------------------------------------------------------------


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

    **Send deadline**: a second timer, armed when the transport's write
    buffer passes its high-water mark (``pause_writing``) and cancelled when
    it drains (``resume_writing``). When it fires, the kernel is asked whether
    the client acknowledged any byte since it was armed (``TCP_INFO``): a
    client that reads slowly does, and the timer starts again (the writable
    wake-up only comes once a third of a send buffer of up to 4 MiB has
    drained, which takes longer than the deadline at a slow pace). A client
    that acknowledged nothing for ``client_send_timeout`` stopped reading: the
    transport is aborted, which aiohttp turns into the handler's cancellation.
    :attr:`send_timed_out` records why.

    **Slot**: ``release`` is called once, when the connection is lost, so the
    acceptor may accept the next one.
    """

    __slots__ = (
        "_acked",
        "_armed_count",
        "_bytes_seen",
        "_handler",
        "_loop",
        "_release",
        "_send_timeout",
        "_send_timer",
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
    ) -> None:
        self._handler = handler
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
        self.send_timed_out = False
        """The connection was closed because the client stopped reading."""

    def _arm(self, bytes_seen: bool) -> None:
        self._armed_count = _head_count(self._handler)
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
        if _head_count(handler) != self._armed_count:
            return  # a head completed by a path we do not observe (resumed reading)
        if not _is_idle(handler):
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
        self._acked = _bytes_acked(transport)
        self._send_timer = self._loop.call_at(
            self._loop.time() + self._send_timeout, self._on_send_deadline
        )

    def _on_send_deadline(self) -> None:
        self._send_timer = None
        transport = self._handler.transport
        if transport is None:
            return
        acked = self._acked
        if acked is not None and _bytes_acked(transport) != acked:
            self._arm_send(transport)  # reading, slowly: a new period starts now
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
            if _head_count(handler) != self._armed_count:
                self._disarm()
            return
        # Sample before feeding: a completed head wakes the handler.
        idle = _is_idle(handler)
        count = _head_count(handler)
        handler.data_received(data)
        if idle and _head_count(handler) == count and handler.transport is not None:
            # The first bytes of a new request, but not yet a full head.
            self._arm(bytes_seen=True)

    def eof_received(self) -> bool | None:
        # Typed loosely so a future aiohttp returning True (keep half-open) is honoured.
        forward: Callable[[], bool | None] = self._handler.eof_received
        return forward()

    def connection_lost(self, exc: Exception | None) -> None:
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
    ask :func:`send_timed_out` if the request ends in a cancellation.
    """
    transport = request.transport
    if transport is None:
        return None
    connection = transport.get_protocol()
    return connection if isinstance(connection, ClientConnection) else None


def send_timed_out(connection: ClientConnection | None) -> bool:
    """Whether *connection* was closed because its client stopped reading."""
    return connection is not None and connection.send_timed_out


# ---------------------------------------------------------------------------
# HTTP version allowlist
# ---------------------------------------------------------------------------

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    web.BaseRequest,
]

# Marker version for rejected requests: equal to HTTP/1.1 (so aiohttp writes an
# "HTTP/1.1" status line rather than echoing "HTTP/2.0"), but a distinct object,
# so the handler wrapper recognises it with an identity test.
_REJECTED_VERSION = HttpVersion(1, 1)


def _is_supported(version: HttpVersion) -> bool:
    return version in (HttpVersion11, HttpVersion10)


def _install_version_guard(server: web.Server) -> None:
    """Makes ``server`` answer 505 to any HTTP version but 1.0 and 1.1.

    ``web.Server.request_factory`` and ``request_handler`` are public attributes
    (its constructor arguments); every ``RequestHandler`` reads them when it is
    built, so this must run before the first connection is accepted. Done at
    this level, no application handler or middleware has to cooperate and a
    frozen application needs no change.

    The factory also sees the placeholder message aiohttp builds a parse
    error's request from, and gives it version 1.1, so refusals (answered by
    ``RefusingRequestHandler``) go out as ``HTTP/1.1`` like every response.
    """
    make_request: _RequestFactory = server.request_factory
    app_handler: _Handler = server.request_handler
    parse_error = _PARSE_ERROR_MESSAGE
    assert isinstance(parse_error, RawRequestMessage)  # _check_aiohttp_internals
    parse_error_11 = parse_error._replace(version=HttpVersion11)

    def request_factory(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if message is parse_error:
            message = parse_error_11
        elif not _is_supported(message.version):
            # SECURITY: llhttp accepts "HTTP/2.0" and versionless HTTP/0.9
            # request lines (measured); neither is a protocol we speak.
            message = message._replace(version=_REJECTED_VERSION, should_close=True)
        return make_request(message, payload, protocol, writer, task)

    # Not async on purpose: returning the app's coroutine directly adds no
    # coroutine frame to every request.
    def request_handler(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        if request.version is _REJECTED_VERSION:
            return _reject_version(request)
        return app_handler(request)

    server.request_factory = request_factory
    server.request_handler = request_handler


async def _reject_version(request: web.BaseRequest) -> web.StreamResponse:
    return refuse(request, version_refusal())


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


class Listener:
    """A running HTTP listener for one app.

    Created by :func:`start_listener`; call :meth:`stop` when done.
    """

    __slots__ = ("_acceptor", "_port", "_runner", "_stopping", "max_connections")

    def __init__(
        self, runner: web.BaseRunner, acceptor: Acceptor, port: int, max_connections: int
    ) -> None:
        self._runner = runner
        self._acceptor = acceptor
        self._port = port
        self._stopping: asyncio.Task[None] | None = None
        self.max_connections = max_connections
        """The connection limit in force (``ListenerSettings.max_connections`` or derived)."""

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``ListenerSettings(port=0)``)."""
        return self._port

    def __repr__(self) -> str:
        state = "serving" if self._stopping is None else "stopping/stopped"
        return f"<Listener port={self._port} {state}>"

    async def stop(self) -> None:
        """Stops accepting, drains in-flight requests, then closes everything.

        The listening socket is closed first, so new connections are refused
        at once (those still in the listen queue are reset). Idle keep-alive
        connections are closed; requests in flight may finish within
        ``shutdown_timeout`` and are then cancelled. The app's ``on_shutdown``
        and ``on_cleanup`` signals run as part of this.

        Safe to call more than once, also concurrently: every call returns when
        the one shutdown has finished.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await self._stopping

    async def _stop(self) -> None:
        self._acceptor.close()
        # Connections accepted just before must be known to aiohttp's server
        # before it closes its connections, or they would outlive it.
        await self._acceptor.wait_started()
        await self._runner.cleanup()


async def start_listener(
    app: web.Application | RequestHandlerFunc,
    settings: ListenerSettings,
    *,
    name: str = "proxy",
    metrics: Metrics = METRICS,
) -> Listener:
    """Starts serving ``app`` on ``settings.host``/``settings.port``.

    Runs the app's startup signals (the app is frozen afterwards), then binds.

    Args:
        app: The application to serve, or a bare request handler served by
            aiohttp's low-level ``web.Server`` (no router, no middlewares, no
            signals: what the proxy port needs, since aigw routes by itself).
        settings: Bind address, timeouts and connection limit. A
            ``max_connections`` of None is derived from the open-file limit
            with nothing reserved (see :func:`default_max_connections`).
        name: The ``listener`` label of its connection metrics.
        metrics: Where the connection series are registered.

    Returns:
        The running listener; its ``port`` is the port actually bound.

    Raises:
        RuntimeError: aiohttp's C parser is not in use, or the aiohttp
            internals this module depends on have changed.
        OSError: The address could not be bound.
    """
    require_c_parser()
    _check_aiohttp_internals()
    _brand_server_header()

    handler_options: dict[str, Any] = {
        # SECURITY: aiohttp's access log format includes the query string.
        "access_log": None,
        "keepalive_timeout": settings.keepalive_timeout,
    }
    # A disconnected client cancels its handler (and so its upstream call).
    server_options: dict[str, Any] = {"handler_cancellation": True, **handler_options}
    runner: web.BaseRunner
    if isinstance(app, web.Application):
        runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_timeout, **server_options)
    else:
        runner = web.ServerRunner(
            web.Server(app, **server_options), shutdown_timeout=settings.shutdown_timeout
        )
    await runner.setup()
    try:
        server = runner.server
        if server is None:  # pragma: no cover - setup() always sets it
            raise RuntimeError("AppRunner.setup() did not create a server")
        _install_version_guard(server)

        loop = asyncio.get_running_loop()
        header_timeout = settings.header_timeout
        send_timeout = settings.client_send_timeout

        def protocol_factory(release: Callable[[], None]) -> ClientConnection:
            handler = RefusingRequestHandler(server, loop=loop, **handler_options)
            return ClientConnection(handler, loop, header_timeout, send_timeout, release)

        sockets = await bind(
            settings.host, settings.port, backlog=settings.backlog, reuse_port=settings.reuse_port
        )
    except BaseException:
        await runner.cleanup()
        raise

    limit = settings.max_connections or default_max_connections()
    acceptor = Acceptor(sockets, protocol_factory, metrics.for_listener(name, limit), name=name)
    acceptor.start()
    # With a host that resolves to several addresses and port 0, each socket
    # gets its own port; the first one is reported.
    port: int = sockets[0].getsockname()[1]
    return Listener(runner, acceptor, port, limit)
