"""The connection limit: the derived default, and a listener that stops accepting at it.

The listener runs in-process on 127.0.0.1 (asyncio and uvloop); clients are
raw sockets, so a connection the gateway has not accepted is still "open" from
the client's side (it sits in the kernel's listen queue) but gets no answer.
"""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from aigw.acceptor import default_max_connections
from aigw.admin import ADMIN_MAX_CONNECTIONS
from aigw.listener import Listener, ListenerSettings, start_listener
from aigw.metrics import Metrics
from aigw.server import ServeSettings

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


def _nofile(monkeypatch: pytest.MonkeyPatch, soft: int) -> None:
    def getrlimit(which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return soft, resource.RLIM_INFINITY

    monkeypatch.setattr(resource, "getrlimit", getrlimit)


@pytest.mark.parametrize(
    ("soft", "pool", "reserved", "expected"),
    [
        (1024, 1000, 17, 471),  # the pool cannot fit: half each
        (65536, 1000, 17, 64455),  # the pool fits: the rest is for clients
        (512, 1000, 17, 215),
        (1024, 0, 0, 960),  # only the fixed 64
        (80, 1000, 17, 1),  # never below one
    ],
)
def test_default_max_connections_formula(
    monkeypatch: pytest.MonkeyPatch, soft: int, pool: int, reserved: int, expected: int
) -> None:
    _nofile(monkeypatch, soft)
    limit = default_max_connections(upstream_connections=pool, reserved=reserved)
    assert limit == expected
    if limit > 1:
        # The invariant the formula is for: clients plus the upstream connections
        # they can hold never exceed what is left of the descriptors.
        assert limit + min(pool, limit) <= soft - 64 - reserved


def test_unlimited_open_files_count_as_a_million(monkeypatch: pytest.MonkeyPatch) -> None:
    _nofile(monkeypatch, resource.RLIM_INFINITY)
    assert default_max_connections(upstream_connections=1000) == (1 << 20) - 64 - 1000


def test_serve_settings_reserve_room_for_the_admin_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _nofile(monkeypatch, 1024)
    settings = ServeSettings(conf_dir=Path("conf.d"), admin=ListenerSettings(port=0))
    proxy, admin = settings.connection_limits()
    assert admin is not None and admin.max_connections == ADMIN_MAX_CONNECTIONS
    assert proxy.max_connections == 471  # (1024 - 64 - 17) minus its half for upstreams
    # No admin port: nothing reserved. An explicit limit is kept as given.
    alone = ServeSettings(conf_dir=Path("conf.d"), listener=ListenerSettings(max_connections=7))
    assert alone.connection_limits() == (ListenerSettings(max_connections=7), None)
    assert ServeSettings(conf_dir=Path("conf.d")).connection_limits()[0].max_connections == 480


# -- a listener at its limit -----------------------------------------------------


async def _ok(_request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


async def _answered(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"ok"), within)
    except TimeoutError:
        return False
    return head.startswith(b"HTTP/1.1 200 ")


async def _scenario() -> None:
    metrics = Metrics(CollectorRegistry())
    settings = ListenerSettings(port=0, max_connections=2, header_timeout=30)
    listener: Listener = await start_listener(_ok, settings, metrics=metrics)
    series = metrics.listeners["proxy"]
    clients = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(3)]
    try:
        for _reader, writer in clients:
            writer.write(REQUEST)
        # Two are served; the third waits in the listen queue, unanswered.
        assert await _answered(clients[0][0], 5)
        assert await _answered(clients[1][0], 5)
        assert not await _answered(clients[2][0], 0.3)
        assert (series.open, series.limit) == (2, 2)
        assert series.limit_reached.value >= 1
        # One closes: the third is accepted and answered.
        clients[0][1].close()
        assert await _answered(clients[2][0], 5)
        assert series.open == 2
    finally:
        for _reader, writer in clients:
            writer.close()
        await listener.stop()
    # Every slot was given back.
    assert series.open == 0


def test_limit_holds_excess_connections_in_the_listen_queue() -> None:
    asyncio.run(_scenario())


def test_limit_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_scenario())
