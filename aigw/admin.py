"""The admin listener: read-only status, on its own port (localhost by default).

Kept off the proxy port on purpose: the proxy port faces clients, the admin
port faces operators and monitoring, and it can be firewalled separately.
It has its own listening socket and its own small connection limit
(:data:`ADMIN_MAX_CONNECTIONS`), whose descriptors the proxy port's derived
limit leaves free: a connection flood on the proxy port, which fills that
port's limit and listen queue, leaves ``/status`` and ``/metrics`` reachable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aigw.balancer.metrics import BALANCER_METRICS, PoolView
from aigw.balancer.status import pool_views, targets_status
from aigw.metrics import METRICS
from aigw.reload import Reloader
from aigw.route import CompiledRoute

__all__ = ["ADMIN_MAX_CONNECTIONS", "build_admin_app"]

ADMIN_MAX_CONNECTIONS = 16
"""Connections the admin listener serves at once: scrapers, probes and an operator."""


def build_admin_app(reloader: Reloader, *, worker: int | None = None) -> web.Application:
    """``GET /status`` (config state as JSON), ``GET /metrics`` and ``GET /healthz``.

    ``/status`` adds ``targets``: every balanced route's targets with their state
    (``aigw.balancer.status``); ``/metrics`` reads the target state gauge from the
    same serving table.
    """
    pid = os.getpid()

    def serving() -> tuple[CompiledRoute, ...]:
        table = reloader.table
        return () if table is None else table.routes

    def pools() -> Iterator[PoolView]:
        return pool_views(serving())

    BALANCER_METRICS.watch(pools)

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                **reloader.status(),
                "targets": targets_status(serving()),
                "pid": pid,
                "worker": worker,
            }
        )

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(METRICS.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "degraded": reloader.degraded})

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
