"""Run the mock on a real socket, in-process or from the CLI."""

from __future__ import annotations

import asyncio
import socket
from types import TracebackType

from aiohttp import web

from .app import STATE_KEY, build_app
from .config import MockConfig

__all__ = ["MockServer"]


class MockServer:
    """The mock listening on ``host:port`` (``port=0`` picks a free one).

    Use as ``async with MockServer(config) as server: ... server.url ...``. It can stop
    listening and start again on the same port (:meth:`refuse_connections`,
    :meth:`accept_connections`, or ``POST /_mock/connections``): a region that dies
    and comes back.
    """

    def __init__(
        self, config: MockConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or MockConfig()
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        # Bound, never listening: holds the port while refusing, so connecting to it
        # is refused (RST) and no other process takes the port meanwhile.
        self._placeholder: socket.socket | None = None
        self._reopen: asyncio.TimerHandle | None = None
        self._reopening: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Origin to use as ``azure_endpoint``, e.g. ``http://127.0.0.1:9100``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def refusing(self) -> bool:
        """Whether the listening socket is closed (connections are refused)."""
        return self._runner is not None and self._site is None

    async def start(self) -> None:
        """Bind and start serving."""
        app = build_app(self.config)
        app[STATE_KEY].listener = self
        runner = web.AppRunner(
            app,
            # Cancelling handlers of departed clients is how streams learn the client left.
            handler_cancellation=True,
            access_log=None,
            # Hanging faults would otherwise hold shutdown for aiohttp's default 60 s.
            shutdown_timeout=1.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        self.port = int(runner.addresses[0][1])

    async def refuse_connections(
        self, for_s: float | None = None, *, spare: asyncio.BaseTransport | None = None
    ) -> None:
        """Stop listening and abort every open connection but *spare*.

        Connecting is refused (ECONNREFUSED) until :meth:`accept_connections`, or
        for *for_s* seconds when given. Requests in progress are cut as by a
        process that died: their handlers are cancelled, their clients see a reset.
        """
        runner = self._runner
        if runner is None:
            raise RuntimeError("the mock is not running")
        self._cancel_reopen()
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()
            self._placeholder = _hold_port(self.host, self.port)
        server = runner.server
        for handler in server.connections if server is not None else ():
            transport = handler.transport
            if transport is not None and transport is not spare:
                transport.abort()
        if for_s is not None:
            loop = asyncio.get_running_loop()
            self._reopen = loop.call_later(for_s, self._reopen_later)

    def _reopen_later(self) -> None:
        self._reopen = None
        self._reopening = asyncio.ensure_future(self.accept_connections())

    def _cancel_reopen(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None

    async def accept_connections(self) -> None:
        """Listen again on the same port (a no-op when listening)."""
        self._cancel_reopen()
        runner = self._runner
        if runner is None or self._site is not None:
            return
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._site = site

    async def close(self) -> None:
        """Stop serving and cancel what is still running."""
        self._cancel_reopen()
        if self._reopening is not None and not self._reopening.done():
            self._reopening.cancel()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = self._site = None

    async def __aenter__(self) -> MockServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _hold_port(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # The aborted connections' TIME_WAIT entries must not stop this bind, nor the
    # listening socket's bind on reopening.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
