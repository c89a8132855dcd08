"""The aiohttp application and the upstream connection pool it owns."""

from __future__ import annotations

import socket

import aiohttp
from aiohttp import web

from aigw.gateway import Gateway

__all__ = ["GATEWAY", "build_app", "make_session"]

GATEWAY = web.AppKey("gateway", Gateway)


def make_session(*, pool_size: int = 1000) -> aiohttp.ClientSession:
    """The shared upstream pool: keep-alive, TLS verified, nothing implicit.

    SECURITY / correctness choices, each against an aiohttp default:

    * ``DummyCookieJar``: a real jar would store Azure's cookies and send them
      on other clients' requests.
    * ``auto_decompress=False``: bytes are relayed as received, with their
      ``Content-Encoding``; inflating them would leave a wrong length behind.
    * ``trust_env=False``: no proxy or netrc from the service environment.
    * no total timeout: each route sets connect and per-read limits instead.
    """
    connector = aiohttp.TCPConnector(
        limit=pool_size,
        limit_per_host=0,
        ttl_dns_cache=60,
        family=socket.AF_UNSPEC,
        ssl=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
    )


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
