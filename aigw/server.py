"""``aigw serve``: load the config, open the pool and the listeners, serve until told to stop."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aigw.admin import ADMIN_MAX_CONNECTIONS, build_admin_app
from aigw.balancer.state import TargetStates
from aigw.chain.body_budget import BodyBudget
from aigw.config.errors import ConfigError
from aigw.gateway import Gateway
from aigw.identity import IdentityRegistry
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.listener import Listener, ListenerSettings, start_listener
from aigw.listener.acceptor import default_max_connections
from aigw.lkg import LastKnownGood
from aigw.logs import LogFile, get_logger
from aigw.metrics import METRICS
from aigw.quotas import QuotaRegistry
from aigw.reload import Reloader
from aigw.systemd import Notifier
from aigw.table import RouteTable
from aigw.upstream.pool import UpstreamPool
from aigw.watch import watch_conf_dir

__all__ = ["DEFAULT_POOL_SIZE", "ServeSettings", "Server", "serve"]

_log = get_logger("aigw.server")


DEFAULT_POOL_SIZE = 1000
"""Upstream connections a worker keeps open at most (``--upstream-pool-size``)."""


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Process settings: fixed for the life of the process, unlike routes.

    Attributes:
        conf_dir: Directory of route files (``*.yaml``).
        listener: Address and connection limits of the proxy port. A
            ``max_connections`` of None is derived from the open-file limit,
            leaving room for ``pool_size`` upstream connections and the admin
            listener (:meth:`connection_limits`).
        admin: Address of the admin (status) port; None disables it. Its
            ``max_connections`` defaults to ``ADMIN_MAX_CONNECTIONS``.
        state_dir: Where last-known-good copies of accepted files are kept;
            None disables persistence.
        azure_base_url: Replaces ``https://{azure_instance}.openai.azure.com``
            for every route (private endpoints, an APIM front door, the mock).
        pool_size: Upper bound on open upstream connections.
        watch: Reload when conf.d changes.
        settle_ms: How long files must stay unchanged before a reload reads them.
        worker: This process's index under ``--workers N`` (None: single process).
        limits: Request body deadlines and response size bounds (``aigw.limits``).
    """

    conf_dir: Path
    listener: ListenerSettings = field(default_factory=ListenerSettings)
    admin: ListenerSettings | None = None
    state_dir: Path | None = None
    azure_base_url: str | None = None
    pool_size: int = DEFAULT_POOL_SIZE
    watch: bool = True
    settle_ms: int = 50
    worker: int | None = None
    limits: Limits = DEFAULT_LIMITS

    def connection_limits(self) -> tuple[ListenerSettings, ListenerSettings | None]:
        """The proxy and admin listener settings with their connection limits filled in."""
        admin = self.admin
        reserved = 0
        if admin is not None:
            admin_limit = admin.max_connections or ADMIN_MAX_CONNECTIONS
            admin = replace(admin, max_connections=admin_limit)
            reserved = admin_limit + 1  # and its listening socket
        listener = self.listener
        if listener.max_connections is None:
            limit = default_max_connections(upstream_connections=self.pool_size, reserved=reserved)
            listener = replace(listener, max_connections=limit)
        return listener, admin


class Server:
    """A running gateway: pool, config, listeners and watcher, started and stopped together."""

    def __init__(
        self,
        settings: ServeSettings,
        env: Mapping[str, str] | None = None,
        *,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self._notifier = notifier
        self._env = dict(os.environ if env is None else env)
        self._listener: Listener | None = None
        self._admin: Listener | None = None
        self._stop_watch = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self.gateway: Gateway | None = None
        self.reloader: Reloader | None = None
        # One per process: token counters outlive reloads, Redis clients are shared.
        self.quotas = QuotaRegistry()
        # Balancer state and Entra tokens belong to targets and identities, not to
        # a table: kept across reloads.
        self.target_states = TargetStates()
        self.identities = IdentityRegistry()

    @property
    def port(self) -> int:
        """The bound proxy port."""
        assert self._listener is not None, "not started"
        return self._listener.port

    async def start(self) -> None:
        """Loads the config and starts listening.

        Raises:
            ConfigError: The config directory itself cannot be read.
            OSError: A port cannot be bound.
        """
        settings = self.settings
        pool = UpstreamPool(limit=settings.pool_size)
        self._pool = pool
        store = LastKnownGood(settings.state_dir) if settings.state_dir is not None else None
        gateway: Gateway | None = None

        def publish(table: RouteTable) -> None:
            if gateway is not None:
                gateway.swap(table)
                if self._notifier is not None:
                    self._notifier.status(self.status_line())

        reloader = Reloader(
            settings.conf_dir,
            self._env,
            publish=publish,
            store=store,
            azure_base_url=settings.azure_base_url,
            limits=settings.limits,
            quotas=self.quotas,
            target_states=self.target_states,
            identities=self.identities,
        )
        reloader.load_initial()
        assert reloader.table is not None
        # One budget for every request of this worker, across reloads.
        body_budget = BodyBudget(settings.limits.max_buffered_request_bytes)
        METRICS.watch_body_budget(body_budget)
        gateway = Gateway(reloader.table, pool, body_budget)
        self.gateway, self.reloader = gateway, reloader
        proxy_settings, admin_settings = settings.connection_limits()
        self._listener = await start_listener(gateway.handle, proxy_settings, name="proxy")
        if admin_settings is not None:
            self._admin = await start_listener(
                build_admin_app(reloader, worker=settings.worker), admin_settings, name="admin"
            )
        if settings.watch:
            self._spawn(
                watch_conf_dir(reloader, self._stop_watch, settle_ms=settings.settle_ms),
                "watch-conf-dir",
            )
        _log.info(
            "listening",
            address=f"http://{settings.listener.host}:{self._listener.port}",
            admin=None
            if self._admin is None or settings.admin is None
            else f"http://{settings.admin.host}:{self._admin.port}",
            max_connections=self._listener.max_connections,
            conf_dir=str(settings.conf_dir),
            state_dir=None if settings.state_dir is None else str(settings.state_dir),
            azure_base_url=settings.azure_base_url,
            generation=reloader.generation,
            routes=len(reloader.table.routes),
        )

    def status_line(self) -> str:
        """What systemd shows in ``systemctl status`` (sd_notify ``STATUS=``)."""
        reloader = self.reloader
        if reloader is None or reloader.table is None:
            return "starting"
        text = f"{len(reloader.table.routes)} routes, generation {reloader.generation}"
        return text + (", degraded" if reloader.degraded else "")

    def request_reload(self) -> None:
        """SIGHUP: a full reload (every file re-read and re-validated), in the background."""
        if self.reloader is not None:
            self._spawn(self._reload(self.reloader), "sighup-reload")

    async def _reload(self, reloader: Reloader) -> None:
        notifier = self._notifier
        if notifier is not None:
            notifier.reloading()
        try:
            await reloader.reload("sighup", force=True)
        finally:
            # Always: without READY=1 systemd shows the unit "reloading" until timeout.
            if notifier is not None:
                notifier.ready(self.status_line())

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        # Keep a reference: the event loop only holds weak ones to tasks.
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stops watching and accepting, drains in-flight requests, closes the pool."""
        self._stop_watch.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._admin is not None:
            await self._admin.stop()
            self._admin = None
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.gateway is not None:
            await self._pool.close()
            self.gateway = None
        # After the drain: the last requests' charges to Redis go out first.
        await self.quotas.aclose()
        await self.identities.aclose()
        _log.info("stopped")


_BUSY_HINT = (
    " (is another aigw demo or aigw serve running? stop it, or pass "
    "--listen 127.0.0.1:PORT and --admin-listen 127.0.0.1:PORT or off)"
)


async def start_or_explain(server: Server) -> bool:
    """Starts *server*; on a config or bind failure logs one ``startup_failed`` line.

    Returns False (the server stopped again) when it could not start, so that
    ``serve`` and ``demo`` both end with exit code 2 and a reason, never a
    traceback.
    """
    try:
        await server.start()
    except ConfigError as exc:
        _log.error("startup_failed", reason=str(exc))
    except OSError as exc:
        hint = _BUSY_HINT if exc.errno == errno.EADDRINUSE else ""
        _log.error("startup_failed", reason=f"cannot listen: {exc}{hint}")
    else:
        return True
    await server.stop()
    return False


async def serve(
    settings: ServeSettings, notifier: Notifier | None = None, log_file: LogFile | None = None
) -> int:
    """Runs the gateway until SIGTERM or SIGINT; returns the exit code.

    Speaks sd_notify when *notifier* is connected: READY=1 once listening,
    RELOADING=1/READY=1 around SIGHUP reloads, STOPPING=1, watchdog pings from
    the event loop (a stuck loop stops them), STATUS= with routes and generation.
    """
    notifier = notifier or Notifier.from_env()
    server = Server(settings, notifier=notifier)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Pinging starts before the (possibly slow) initial load and goes on while
    # requests drain, so systemd's watchdog covers both.
    pinging = asyncio.Event()
    watchdog = loop.create_task(notifier.run_watchdog(pinging), name="watchdog")
    try:
        if not await start_or_explain(server):
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.request_reload)
        if log_file is not None:
            loop.add_signal_handler(signal.SIGUSR1, log_file.reopen)
        notifier.ready(server.status_line())
        await stop.wait()
        notifier.stopping()
        _log.info("stopping", drain_timeout=settings.listener.shutdown_timeout)
        await server.stop()
        return 0
    finally:
        pinging.set()
        await watchdog
        notifier.close()
