"""The connection limit: the derived default; at the limit, idle connections make room.

The listener runs in-process on 127.0.0.1 (asyncio and uvloop); clients are
raw sockets, so a connection the gateway has not accepted is still "open" from
the client's side (it sits in the kernel's listen queue) but gets no answer.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from aigw.admin import ADMIN_MAX_CONNECTIONS
from aigw.listener import Listener, ListenerSettings, start_listener
from aigw.listener.acceptor import default_max_connections
from aigw.metrics import ListenerSeries, Metrics
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


class _App:
    """A handler that answers ``ok``, each request held until :attr:`gate` opens.

    Records the transport of every request, so a test can reach the server
    side of a connection.
    """

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.transports: list[asyncio.Transport] = []

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transports.append(cast(asyncio.Transport, request.transport))
        await self.gate.wait()
        return web.Response(text="ok")


Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _answered(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"ok"), within)
    except TimeoutError:
        return False
    return head.startswith(b"HTTP/1.1 200 ")


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def _listen(app: _App, limit: int) -> tuple[Listener, ListenerSeries]:
    metrics = Metrics(CollectorRegistry())
    settings = ListenerSettings(port=0, max_connections=limit, header_timeout=30)
    listener = await start_listener(app, settings, metrics=metrics)
    return listener, metrics.listeners["proxy"]


async def _connect(listener: Listener, clients: list[Client]) -> Client:
    client = await asyncio.open_connection("127.0.0.1", listener.port)
    clients.append(client)
    return client


async def _send_request(listener: Listener, clients: list[Client]) -> Client:
    """A new client that has sent one request."""
    client = await _connect(listener, clients)
    client[1].write(REQUEST)
    return client


async def _busy_connections_hold_the_limit() -> None:
    """Nothing idle to reclaim: the excess waits in the listen queue until a slot frees."""
    app = _App()
    listener, series = await _listen(app, 2)
    clients: list[Client] = []
    try:
        app.gate.clear()
        busy = [await _send_request(listener, clients) for _ in range(2)]
        await _until(lambda: len(app.transports) == 2)
        # Both slots have a request in flight: the third waits, unanswered.
        third = await _send_request(listener, clients)
        assert not await _answered(third[0], 0.3)
        assert (series.open, series.limit) == (2, 2)
        assert series.limit_reached.value == 1
        assert series.reclaimed.value == 0
        # The two finish and stay open, idle: the third takes the slot of the
        # one idle longest (looked for again while at the limit), and is served.
        app.gate.set()
        assert await _answered(busy[0][0], 5)
        assert await _answered(busy[1][0], 5)
        assert await _answered(third[0], 3)
        assert series.reclaimed.value == 1
        assert series.open == 2
    finally:
        await _close_all(clients, listener)
    # Every slot was given back.
    assert series.open == 0


async def _idle_connections_make_room() -> None:
    """Longest idle first; never one with part of a head; never one whose request waits unread."""
    app = _App()
    listener, series = await _listen(app, 3)
    clients: list[Client] = []
    try:
        keepalive = await _send_request(listener, clients)
        assert await _answered(keepalive[0], 5)  # then idle, longest
        await asyncio.sleep(0.05)  # uvloop's clock ticks in milliseconds
        silent = await _connect(listener, clients)
        partial = await _connect(listener, clients)
        partial[1].write(b"GET / HTTP/1.1\r\nHost: te")
        await _until(lambda: series.open == 3)
        await asyncio.sleep(0.05)  # the partial head has been read

        # A new client at the limit: the keep-alive connection, idle longest, makes room.
        first = await _send_request(listener, clients)
        assert await _answered(first[0], 2)
        assert await _closed_by_server(keepalive[0], 2)
        # Then the silent one (first is now idle, but idle for less time).
        await asyncio.sleep(0.05)
        second = await _send_request(listener, clients)
        assert await _answered(second[0], 2)
        assert await _closed_by_server(silent[0], 2)
        # Then first, though the half-sent head has been open longer.
        await asyncio.sleep(0.05)
        third = await _send_request(listener, clients)
        assert await _answered(third[0], 2)
        assert await _closed_by_server(first[0], 2)
        assert series.reclaimed.value == 3
        assert series.limit_reached.value == 0
        # The half-sent head was never a candidate: it is still served.
        partial[1].write(b"st\r\n\r\n")
        assert await _answered(partial[0], 2)
    finally:
        await _close_all(clients, listener)


async def _request_waiting_unread_is_kept() -> None:
    """An idle connection whose next request is already in its socket is not reclaimed."""
    app = _App()
    listener, series = await _listen(app, 1)
    clients: list[Client] = []
    try:
        kept = await _send_request(listener, clients)
        assert await _answered(kept[0], 5)
        # The server stops reading it; its next request lands in the socket, unread.
        (transport,) = app.transports
        transport.pause_reading()
        kept[1].write(REQUEST)
        await asyncio.sleep(0.05)
        newcomer = await _send_request(listener, clients)
        assert not await _answered(newcomer[0], 0.3)
        assert series.reclaimed.value == 0
        assert series.limit_reached.value == 1
        # Read again, it is answered: it was kept. Idle once more, it makes room.
        transport.resume_reading()
        assert await _answered(kept[0], 2)
        assert await _answered(newcomer[0], 3)
        assert series.reclaimed.value == 1
    finally:
        await _close_all(clients, listener)


async def _until(predicate: Callable[[], bool], within: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def _close_all(clients: list[Client], listener: Listener) -> None:
    for _reader, writer in clients:
        writer.close()
    await listener.stop()


SCENARIOS = [
    _busy_connections_hold_the_limit,
    _idle_connections_make_room,
    _request_waiting_unread_is_kept,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_connection_limit(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_connection_limit_under_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
