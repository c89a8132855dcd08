"""The socket layer: serve one aiohttp handler or application with proxy-safe defaults.

aiohttp's server defaults are not safe for an internet-facing proxy (measured
on aiohttp 3.14.5): no limit on open connections, no deadline for a request's
head (a slowloris client at 1 byte/s stays connected), no deadline for a client
that stops reading, and any ``HTTP/x.y`` request line is accepted.
:func:`start_listener` closes the gaps that belong to the socket layer,
independently of whatever the application does. Each guard lives in its own
module:

* SECURITY: **connection limit** (``aigw.listener.acceptor``). At most
  ``max_connections`` client connections are open at once (default: derived
  from ``RLIMIT_NOFILE``, leaving room for upstream connections, the log file
  and the admin listener). At the limit, idle connections (keep-alive, or no
  byte of a request yet) are closed, longest idle first, to let new ones in
  (``aigw_connections_reclaimed_total``); if none is idle, the listener stops
  accepting and new connections wait in the kernel's listen queue until a
  slot frees (``aigw_connection_limit_reached_total``).
* SECURITY: **request-head deadline** (slowloris) and **client send
  deadline** (a client that stops reading is cut, logged ``client_stalled``),
  in the per-connection wrapper (``aigw.listener.connection``).
* SECURITY: **HTTP version allowlist** (``aigw.listener.version_guard``): anything but
  HTTP/1.0 and HTTP/1.1 gets ``HTTP/1.1 505`` (JSON) and the connection is
  closed, before the application sees the request.
* SECURITY: **refused requests** (``aigw.listener.refusals``): the parser's 400s (a
  header line over 8190 bytes, too many headers, a control character, a
  garbage request line, the HTTP/2 preface) get a JSON error and one
  access-log line, never aiohttp's text/plain answer and stderr traceback
  that quote the request's bytes.
* SECURITY: **C parser required** (``aigw.listener.aiohttp_internals``). Most of
  aiohttp's request-smuggling advisories were in the pure-Python parser,
  which ``AIOHTTP_NO_EXTENSIONS`` (or a wheel without the extension) silently
  switches to. We refuse to start; we also refuse if an aiohttp internal the
  guards rely on has changed.
* ``Server: aigw``, without versions, instead of aiohttp's
  ``Python/3.11 aiohttp/3.14.5``.
* SECURITY: **no aiohttp access log.** Its default format logs ``%r``, the
  request line including the query string, which can carry secrets. The
  gateway writes its own structured access log.
* ``handler_cancellation=True``: a client disconnect cancels the handler, so an
  abandoned request stops its upstream call instead of running to completion.
* ``TCP_NODELAY`` is set on every accepted socket by aiohttp itself
  (``BaseProtocol.connection_made``); a test checks it so a change is noticed.

The request-*body* deadlines (``client_body_timeout``, the total) are not
here: they bound reads the handler makes, so they live in the route chain
(``aigw.chain.body_reader``). TLS is not terminated by aigw.

How it hooks in: ``web.AppRunner`` / ``web.ServerRunner`` still build the
low-level ``web.Server`` and run an application's startup/shutdown/cleanup
signals. Instead of ``web.TCPSite`` (which hard-wires ``runner.server`` as the
protocol factory, leaving no per-connection hook, and cannot stop accepting)
the :class:`~aigw.listener.acceptor.Acceptor` accepts and hands each connection to a
:class:`~aigw.listener.connection.ClientConnection` wrapping a
:class:`~aigw.listener.refusals.RefusingRequestHandler` (a ``RequestHandler`` that only
overrides the public ``handle_error``), built with the same options
``web.Server`` would pass (``Application(handler_args=...)`` is therefore not
honoured).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aigw.listener.acceptor import Acceptor, bind, default_max_connections
from aigw.listener.aiohttp_internals import (
    brand_server_header,
    check_aiohttp_internals,
    require_c_parser,
)
from aigw.listener.connection import ClientConnection, Shutdown
from aigw.listener.refusals import RefusingRequestHandler
from aigw.listener.version_guard import install_version_guard
from aigw.metrics import METRICS, Metrics

__all__ = ["Listener", "ListenerSettings", "RequestHandlerFunc", "start_listener"]

RequestHandlerFunc = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
"""A request handler served without an ``Application`` (see :func:`start_listener`)."""

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
        max_connections: Most client connections served at once; at it, idle
            connections are reclaimed for new ones, or, if none is idle, the
            listener stops accepting until a slot frees. None derives it from
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


class Listener:
    """A running HTTP listener for one app.

    Created by :func:`start_listener`; call :meth:`stop` when done.
    """

    __slots__ = ("_acceptor", "_port", "_runner", "_shutdown", "_stopping", "max_connections")

    def __init__(
        self,
        runner: web.BaseRunner,
        acceptor: Acceptor,
        port: int,
        max_connections: int,
        shutdown: Shutdown,
    ) -> None:
        self._runner = runner
        self._acceptor = acceptor
        self._shutdown = shutdown
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
        ``shutdown_timeout`` and are then cancelled (their access-log line
        says ``shutdown``). The app's ``on_shutdown``
        and ``on_cleanup`` signals run as part of this.

        Safe to call more than once, also concurrently: every call returns when
        the one shutdown has finished.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await self._stopping

    async def _stop(self) -> None:
        # From here on, a request cut without its client leaving was cut by us.
        self._shutdown.begin()
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
    check_aiohttp_internals()
    brand_server_header()

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
        install_version_guard(server)

        loop = asyncio.get_running_loop()
        header_timeout = settings.header_timeout
        send_timeout = settings.client_send_timeout
        shutdown = Shutdown()

        def protocol_factory(release: Callable[[], None]) -> ClientConnection:
            handler = RefusingRequestHandler(server, loop=loop, **handler_options)
            return ClientConnection(handler, loop, header_timeout, send_timeout, release, shutdown)

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
    return Listener(runner, acceptor, port, limit, shutdown)
