"""The "what Python costs" baseline: a minimal aiohttp reverse proxy with no features.

    python bench/bare_aiohttp_proxy.py PORT UPSTREAM_URL [--uvloop] [--api-key KEY]

It injects one header (``api-key``, default ``bench-key``), forwards the body and
relays the answer: a JSON body whole, an SSE stream chunk by chunk as it arrives
(buffering a stream would make its time to first token the whole stream's time,
which measures nothing). No routing, no validation, no logging, no usage parsing.
aigw is measured against it.

The upstream pool allows 1,000 connections, like aigw's default pool, so that at
high concurrency both queue (or not) in the same place; aiohttp's own default of
100 would cap the baseline at 100 concurrent upstream requests.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("upstream")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--pool", type=int, default=1000, help="upstream connections (0: no cap)")
    args = parser.parse_args()
    upstream: str = args.upstream.rstrip("/")
    api_key: str = args.api_key
    pool_limit: int = args.pool

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"api-key": api_key, "Content-Type": "application/json"}
        session = request.app[SESSION]
        async with session.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as up:
            if up.content_type != "text/event-stream":
                data = await up.read()
                return web.Response(status=up.status, body=data, content_type=up.content_type)
            response = web.StreamResponse(
                status=up.status, headers={"Content-Type": "text/event-stream"}
            )
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool_limit))
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(pool)
    app.router.add_route("*", "/{tail:.*}", handle)
    if args.uvloop:
        import uvloop

        uvloop.install()
    # backlog=1024: aigw's listen queue, so a burst of 256 connects is treated alike.
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
