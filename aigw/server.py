"""``aigw serve``: load the config, open the pool and the listener, serve until told to stop."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aigw.app import build_app, make_session
from aigw.config.errors import ConfigError
from aigw.config.loader import load_dir
from aigw.gateway import Gateway
from aigw.listener import Listener, ListenerSettings, start_listener
from aigw.logs import get_logger
from aigw.table import RouteTable, build_table

__all__ = ["ServeSettings", "Server", "load_table", "serve"]

_log = get_logger("aigw.server")


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Process settings: fixed for the life of the process, unlike routes.

    Attributes:
        conf_dir: Directory of route files (``*.yaml``).
        listener: Address and connection limits of the proxy port.
        azure_base_url: Replaces ``https://{azure_instance}.openai.azure.com``
            for every route (private endpoints, an APIM front door, the mock).
        pool_size: Upper bound on open upstream connections.
    """

    conf_dir: Path
    listener: ListenerSettings = field(default_factory=ListenerSettings)
    azure_base_url: str | None = None
    pool_size: int = 1000


def load_table(
    conf_dir: Path,
    env: Mapping[str, str],
    *,
    generation: int,
    azure_base_url: str | None = None,
) -> RouteTable:
    """Loads and compiles every route file; bad files are rejected, never fatal."""
    loaded = load_dir(conf_dir, env)
    return build_table(
        loaded.accepted,
        generation=generation,
        rejected=loaded.rejected,
        azure_base_url=azure_base_url,
    )


def log_table(table: RouteTable) -> None:
    """Writes one event per rejected file and one summary event."""
    for error in table.rejected:
        _log.error(
            "config_rejected",
            file=error.source,
            issues=[str(issue) for issue in error.issues],
            generation=table.generation,
        )
    _log.info(
        "config_loaded",
        generation=table.generation,
        routes=[route.name for route in table.routes],
        rejected=len(table.rejected),
    )


class Server:
    """A running gateway: pool, table and listener, started and stopped together."""

    def __init__(self, settings: ServeSettings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._env = dict(os.environ if env is None else env)
        self._listener: Listener | None = None
        self.gateway: Gateway | None = None

    @property
    def port(self) -> int:
        """The bound proxy port."""
        assert self._listener is not None, "not started"
        return self._listener.port

    async def start(self) -> None:
        """Loads the config and starts listening.

        Raises:
            ConfigError: The config directory itself cannot be read.
        """
        settings = self.settings
        table = load_table(
            settings.conf_dir,
            self._env,
            generation=1,
            azure_base_url=settings.azure_base_url,
        )
        log_table(table)
        session = make_session(pool_size=settings.pool_size)
        self.gateway = Gateway(table, session)
        self._session = session
        self._listener = await start_listener(build_app(self.gateway), settings.listener)
        _log.info(
            "listening",
            address=f"http://{settings.listener.host}:{self._listener.port}",
            conf_dir=str(settings.conf_dir),
            azure_base_url=settings.azure_base_url,
        )

    async def stop(self) -> None:
        """Stops accepting, drains in-flight requests, closes the pool."""
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.gateway is not None:
            await self._session.close()
            self.gateway = None
        _log.info("stopped")


async def serve(settings: ServeSettings) -> int:
    """Runs the gateway until SIGTERM or SIGINT; returns the exit code."""
    server = Server(settings)
    try:
        await server.start()
    except ConfigError as exc:
        _log.error("startup_failed", reason=str(exc))
        return 2
    except OSError as exc:
        _log.error("startup_failed", reason=f"cannot listen: {exc}")
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    _log.info("stopping")
    await server.stop()
    return 0
