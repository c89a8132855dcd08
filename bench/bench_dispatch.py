"""Micro-benchmark: what routing by the body's ``model`` adds to a request, in process.

Run from the repository root::

    .venv/bin/python bench/bench_dispatch.py [rounds] [requests_per_round]

The same chat request goes through ``Gateway.handle`` on ``/openai/v1/chat/completions``
(the model dispatcher reads and parses the body, picks the route by its ``model``) and on
the classic path of a path route to the same deployment. Both run the real chain
(request id, access log written to /dev/null, errors, body checks, credentials); the relay
is replaced by a stub answering 200 at once, so the figure is aigw's own CPU without the
upstream exchange, the worst case for the ratio. Requests alternate in blocks of 100 and
are timed with `time.process_time`, so the load of other processes on the machine lands
on both alike. Prints the median CPU microseconds per request of each and the median of
the per-round ratios (the issue's bar: model routing under 1.05x path routing).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

import aigw.chain.access_log
import aigw.route
from aigw.chain.body_budget import BodyBudget
from aigw.config.loader import parse_route_file
from aigw.gateway import Gateway
from aigw.logs import configure_logging
from aigw.table import TableBuilder

V1 = "/openai/v1/chat/completions"
CLASSIC = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
BLOCK = 100

_TARGET = """plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - {route_type}auth: {{header_name: api-key, header_value: k}}
          model:
            provider: azure
            name: gpt-4o
            options: {{azure_instance: res, azure_deployment_id: gpt-4o}}
"""
MODEL_ROUTE = "route:\n  name: m\n  models: [gpt-4o]\n  deployment_paths: false\n" + (
    _TARGET.format(route_type="")
)
PATH_ROUTE = "route:\n  name: p\n  paths: [/openai/deployments/gpt-4o/chat/completions]\n" + (
    _TARGET.format(route_type="route_type: llm/v1/chat\n          ")
)
BODY = json.dumps(
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "What model are you?"}]}
).encode()


async def _answer(_ex: Any) -> web.StreamResponse:
    return web.Response(status=200)


def _stub_relay(*_args: Any, **_kw: Any) -> Any:
    return _answer


class _Protocol:
    """Just enough of aiohttp's BaseProtocol for a real StreamReader."""

    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def _request(path: str) -> Any:
    """A POST whose whole body has arrived, as the usual SDK request's has."""
    stream = StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    stream.feed_data(BODY)
    stream.feed_eof()
    headers = CIMultiDict({"Content-Length": str(len(BODY)), "Content-Type": "application/json"})
    return make_mocked_request("POST", path, headers=headers, payload=stream)


async def _block(gateway: Gateway, path: str, n: int) -> float:
    """CPU seconds for *n* requests on *path* (the requests are built beforehand)."""
    requests = [_request(path) for _ in range(n)]
    start = time.process_time()
    for request in requests:
        response = await gateway.handle(request)
        assert response.status == 200, response
    return time.process_time() - start


def _gateway() -> Gateway:
    aigw.route.make_relay = _stub_relay  # type: ignore[attr-defined]
    aigw.route.make_realtime_relay = _stub_relay  # type: ignore[attr-defined]
    # A mocked request has no listener connection; asking for one builds Mock children
    # (tens of microseconds) that would swamp what is measured.
    aigw.chain.access_log.client_connection = lambda _request: None  # type: ignore[attr-defined,assignment]
    configure_logging("info", open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the run
    builder = TableBuilder(
        lambda file, plugins: aigw.route.compile_route(file, global_plugins=plugins)
    )
    for name, text in (("m.yaml", MODEL_ROUTE), ("p.yaml", PATH_ROUTE)):
        assert builder.offer(parse_route_file(name, text.encode(), {})) is None
    return Gateway(builder.build(1), None, BodyBudget(256 * 2**20))  # type: ignore[arg-type]


async def main(rounds: int, per_round: int) -> None:
    gateway = _gateway()
    for path in (V1, CLASSIC):  # warm up
        await _block(gateway, path, 2000)
    us: dict[str, list[float]] = {V1: [], CLASSIC: []}
    blocks = max(1, per_round // BLOCK)
    for _ in range(rounds):
        spent = dict.fromkeys(us, 0.0)
        gc.collect()
        for _ in range(blocks):
            for path in us:
                spent[path] += await _block(gateway, path, BLOCK)
        for path in us:
            us[path].append(spent[path] / (blocks * BLOCK) * 1e6)
    for path, values in us.items():
        rounded = [round(v, 2) for v in values]
        print(f"{path}: median {statistics.median(values):.2f} us CPU/request  rounds {rounded}")
    ratios = [v1 / classic for v1, classic in zip(us[V1], us[CLASSIC], strict=True)]
    added = statistics.median(us[V1]) - statistics.median(us[CLASSIC])
    print(
        f"model route / path route: {statistics.median(ratios):.3f}x (median of rounds "
        f"{[round(r, 3) for r in ratios]}), {added:+.2f} us"
    )


if __name__ == "__main__":
    args = [int(arg) for arg in sys.argv[1:3]]
    asyncio.run(main(*(args + [9, 5000][len(args) :])))
