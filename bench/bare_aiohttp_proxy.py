"""The "what Python costs" baseline: a minimal aiohttp reverse proxy with no features.

    python bench/bare_aiohttp_proxy.py PORT UPSTREAM_URL [--uvloop]

It injects one header, forwards the body and relays the answer; no routing,
no validation, no logging, no streaming care. aigw is measured against it.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"api-key": "bench-key", "Content-Type": "application/json"}
        session = request.app[SESSION]
        async with session.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as up:
            data = await up.read()
            return web.Response(status=up.status, body=data, content_type=up.content_type)

    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(pool)
    app.router.add_route("*", "/{tail:.*}", handle)
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
