"""The aiohttp application: one catch-all route into the gateway."""

from __future__ import annotations

from aiohttp import web

from aigw.gateway import Gateway

__all__ = ["GATEWAY", "build_app"]

GATEWAY = web.AppKey("gateway", Gateway)


def build_app(gateway: Gateway) -> web.Application:
    """An app whose only route hands every request to *gateway*.

    aiohttp's own router freezes at start-up and cannot be swapped, so it gets
    one catch-all route and aigw's trie does the routing.
    """
    # client_max_size=0: bodies are read and bounded per route by aigw itself.
    app = web.Application(client_max_size=0)
    app[GATEWAY] = gateway
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    return app
