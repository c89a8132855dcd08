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
  closed (with a bare ``408`` if the client had started sending a head). Idle
  keep-alive connections stay governed by ``keepalive_timeout``; a running
  handler or a long streaming response is never cut by this timer.
* SECURITY: **HTTP version allowlist.** llhttp accepts ``HTTP/2.0`` request
  lines and versionless ``GET /`` (HTTP/0.9), and aiohttp answers them with a
  ``HTTP/2.0 200`` / ``HTTP/0.9 200`` status line. Anything but HTTP/1.0 and
  HTTP/1.1 gets ``HTTP/1.1 505`` and the connection is closed, before the
  application sees the request.
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
per-connection hook) we call ``loop.create_server`` with a factory that wraps
each aiohttp ``RequestHandler`` in :class:`_HeadDeadlineProtocol`, a thin
``asyncio.Protocol`` that forwards every transport callback and watches request
heads go by. No aiohttp class is subclassed or patched. The version check wraps
the ``request_factory`` / ``request_handler`` public attributes of that
``web.Server`` instance, which every ``RequestHandler`` reads when it is built.

The wrapper needs two private ``RequestHandler`` attributes. They are named in
one place (:data:`_PRIVATE_HANDLER_ATTRS` and the two accessors below), checked
at start-up by :func:`_check_aiohttp_internals`, and their meaning is checked by
a test against a live connection, so an aiohttp upgrade that changes them fails
loudly instead of silently disabling the deadline.

Not covered here (see the notes): a request-*body* deadline (§2.4 proposes
60 s), connection limits, and TLS.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import http_parser, web, web_protocol
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

__all__ = [
    "Listener",
    "ListenerSettings",
    "RequestHandlerFunc",
    "require_c_parser",
    "start_listener",
]

RequestHandlerFunc = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
"""A request handler served without an ``Application`` (see :func:`start_listener`)."""

_log = logging.getLogger(__name__)

# A plain HTTP/1.1 answer written straight to the transport when a client that
# started a request head runs out of time. Nothing of a response exists at that
# point (the connection is idle between requests), so this cannot corrupt one.
_BODY_408 = b"Request head timeout\n"
_RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(_BODY_408)
) + _BODY_408

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


def _head_count(handler: RequestHandler) -> int:
    """Number of request heads (or parse errors) seen on this connection so far."""
    count: int = handler._request_count
    return count


def _is_idle(handler: RequestHandler) -> bool:
    """Whether the handler is waiting for the next request, with nothing in flight."""
    waiter: asyncio.Future[None] | None = handler._waiter
    return waiter is not None and not waiter.done()


def _check_aiohttp_internals() -> None:
    """Fails start-up if the private attributes above are gone from aiohttp.

    Raises:
        RuntimeError: An aiohttp upgrade removed or renamed one of them.
    """
    missing = [
        name
        for name in _PRIVATE_HANDLER_ATTRS
        if not isinstance(getattr(RequestHandler, name, None), types.MemberDescriptorType)
    ]
    if missing:
        raise RuntimeError(
            f"aiohttp.web_protocol.RequestHandler no longer has {missing}; "
            "aigw.listener's request-head timeout depends on them. "
            "Review aigw/listener.py against this aiohttp version."
        )


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
# Request-head deadline
# ---------------------------------------------------------------------------


class _HeadDeadlineProtocol(asyncio.Protocol):
    """Wraps one aiohttp ``RequestHandler`` and enforces the request-head deadline.

    The transport talks to this object; every callback is forwarded unchanged,
    and aiohttp writes to the transport directly. The only addition is one
    ``TimerHandle`` per connection, armed:

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
    """

    __slots__ = ("_armed_count", "_bytes_seen", "_handler", "_loop", "_timeout", "_timer")

    def __init__(
        self, handler: RequestHandler, loop: asyncio.AbstractEventLoop, header_timeout: float
    ) -> None:
        self._handler = handler
        self._loop = loop
        self._timeout = header_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._armed_count = 0
        # Whether the client sent any byte of the overdue head: a 408 answers a
        # request that was started; a connection that never sent anything gets
        # a silent close, like an idle keep-alive connection does.
        self._bytes_seen = False

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
            transport.write(_RESPONSE_408)
        # force_close() closes the transport, which flushes the 408 first.
        handler.force_close()

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
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


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
    """
    make_request: _RequestFactory = server.request_factory
    app_handler: _Handler = server.request_handler

    def request_factory(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if not _is_supported(message.version):
            # SECURITY: llhttp accepts "HTTP/2.0" and versionless HTTP/0.9
            # request lines (measured); neither is a protocol we speak.
            message = message._replace(version=_REJECTED_VERSION, should_close=True)
        return make_request(message, payload, protocol, writer, task)

    # Not async on purpose: returning the app's coroutine directly adds no
    # coroutine frame to every request.
    def request_handler(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        if request.version is _REJECTED_VERSION:
            return _reject_version()
        return app_handler(request)

    server.request_factory = request_factory
    server.request_handler = request_handler


async def _reject_version() -> web.StreamResponse:
    response = web.Response(status=505, text="HTTP version not supported\n")
    response.force_close()
    return response


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


class Listener:
    """A running HTTP listener for one app.

    Created by :func:`start_listener`; call :meth:`stop` when done.
    """

    __slots__ = ("_port", "_runner", "_server", "_stopping")

    def __init__(self, runner: web.BaseRunner, server: asyncio.Server, port: int) -> None:
        self._runner = runner
        self._server = server
        self._port = port
        self._stopping: asyncio.Task[None] | None = None

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
        at once. Idle keep-alive connections are closed; requests in flight may
        finish within ``shutdown_timeout`` and are then cancelled. The app's
        ``on_shutdown`` and ``on_cleanup`` signals run as part of this.

        Safe to call more than once, also concurrently: every call returns when
        the one shutdown has finished.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await self._stopping

    async def _stop(self) -> None:
        self._server.close()
        await self._runner.cleanup()
        # After cleanup every connection is closed, so this does not block
        # (on 3.12+ it waits for them to detach; on 3.11 it returns at once).
        await self._server.wait_closed()


async def start_listener(
    app: web.Application | RequestHandlerFunc, settings: ListenerSettings
) -> Listener:
    """Starts serving ``app`` on ``settings.host``/``settings.port``.

    Runs the app's startup signals (the app is frozen afterwards), then binds.

    Args:
        app: The application to serve, or a bare request handler served by
            aiohttp's low-level ``web.Server`` (no router, no middlewares, no
            signals: what the proxy port needs, since aigw routes by itself).
        settings: Bind address and timeouts.

    Returns:
        The running listener; its ``port`` is the port actually bound.

    Raises:
        RuntimeError: aiohttp's C parser is not in use, or the aiohttp
            internals this module depends on have changed.
        OSError: The address could not be bound.
    """
    require_c_parser()
    _check_aiohttp_internals()

    options: dict[str, Any] = {
        # A disconnected client cancels its handler (and so its upstream call).
        "handler_cancellation": True,
        # SECURITY: aiohttp's access log format includes the query string.
        "access_log": None,
        "keepalive_timeout": settings.keepalive_timeout,
    }
    runner: web.BaseRunner
    if isinstance(app, web.Application):
        runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_timeout, **options)
    else:
        runner = web.ServerRunner(
            web.Server(app, **options), shutdown_timeout=settings.shutdown_timeout
        )
    await runner.setup()
    try:
        server = runner.server
        if server is None:  # pragma: no cover - setup() always sets it
            raise RuntimeError("AppRunner.setup() did not create a server")
        _install_version_guard(server)

        loop = asyncio.get_running_loop()
        header_timeout = settings.header_timeout

        def protocol_factory() -> _HeadDeadlineProtocol:
            return _HeadDeadlineProtocol(server(), loop, header_timeout)

        aio_server = await loop.create_server(
            protocol_factory,
            settings.host,
            settings.port,
            backlog=settings.backlog,
            reuse_port=settings.reuse_port or None,
        )
    except BaseException:
        await runner.cleanup()
        raise

    # With a host that resolves to several addresses and port 0, each socket
    # gets its own port; the first one is reported.
    port: int = aio_server.sockets[0].getsockname()[1]
    return Listener(runner, aio_server, port)
