"""Run the mock on a real socket, in-process or from the CLI."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from .app import build_app
from .config import MockConfig

__all__ = ["MockServer"]


class MockServer:
    """The mock listening on ``host:port`` (``port=0`` picks a free one).

    Use as ``async with MockServer(config) as server: ... server.url ...``.
    """

    def __init__(
        self, config: MockConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or MockConfig()
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Origin to use as ``azure_endpoint``, e.g. ``http://127.0.0.1:9100``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving."""
        runner = web.AppRunner(
            build_app(self.config),
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
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving and cancel what is still running."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

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
