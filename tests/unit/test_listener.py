"""Tests for aigw.listener against a real socket on 127.0.0.1, with raw asyncio clients.

Raw sockets rather than aiohttp's client: the point is to send what a real HTTP
client would not (nothing at all, one byte at a time, an ``HTTP/2.0`` line).
Timings use ``header_timeout=0.3`` s; the assertions leave generous slack above
it but stay well below aiohttp's own timers, so a missing deadline still fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass

import pytest
from aiohttp import http_parser, web, web_protocol, web_response
from aiohttp.web_protocol import RequestHandler

from aigw.listener import Listener, ListenerSettings, aiohttp_internals, start_listener
from aigw.listener.aiohttp_internals import (
    check_aiohttp_internals,
    head_count,
    idle_order,
    is_idle,
    require_c_parser,
)
from aigw.listener.connection import ClientConnection, client_connection, cut_outcome

HEADER_TIMEOUT = 0.3
KEEPALIVE_TIMEOUT = 0.7
# Upper bound for "closed by the head deadline": timeout plus scheduling slack,
# far below KEEPALIVE_TIMEOUT + slack and aiohttp's defaults.
DEADLINE_SLACK = 0.25

STREAM_CHUNKS = 5
STREAM_INTERVAL = 0.2  # 5 x 0.2 s = 1 s of streaming, > 3x the head deadline
SLOW_DELAY = 0.5

SLOW_STARTED = web.AppKey("slow_started", asyncio.Event)
APP_CALLS = web.AppKey("app_calls", list[str])


# -- the app ---------------------------------------------------------------


async def _ok(request: web.Request) -> web.Response:
    request.app[APP_CALLS].append(request.path)
    return web.Response(text="ok")


async def _slow(request: web.Request) -> web.Response:
    request.app[APP_CALLS].append(request.path)
    request.app[SLOW_STARTED].set()
    await asyncio.sleep(SLOW_DELAY)
    return web.Response(text="slow-done")


async def _stream(request: web.Request) -> web.StreamResponse:
    request.app[APP_CALLS].append(request.path)
    response = web.StreamResponse()
    await response.prepare(request)
    for i in range(STREAM_CHUNKS):
        await response.write(f"chunk{i};".encode())
        await asyncio.sleep(STREAM_INTERVAL)
    await response.write_eof()
    return response


async def _nodelay(request: web.Request) -> web.Response:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    assert sock is not None
    return web.Response(text=str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))


async def _internals(request: web.Request) -> web.Response:
    # Reads the private aiohttp state through the module's accessors, from
    # inside a running handler: a head has been parsed and we are not idle.
    protocol = request.protocol
    body = {
        "count": head_count(protocol),
        "idle": is_idle(protocol),
    }
    return web.json_response(body)


def _make_app() -> web.Application:
    app = web.Application()
    app[SLOW_STARTED] = asyncio.Event()
    app[APP_CALLS] = []
    app.router.add_get("/", _ok)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/stream", _stream)
    app.router.add_get("/nodelay", _nodelay)
    app.router.add_get("/internals", _internals)
    return app


def _settings(
    *,
    header_timeout: float = HEADER_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    shutdown_timeout: float = 2.0,
) -> ListenerSettings:
    return ListenerSettings(
        port=0,
        header_timeout=header_timeout,
        keepalive_timeout=keepalive_timeout,
        shutdown_timeout=shutdown_timeout,
    )


@dataclass
class _Served:
    listener: Listener
    app: web.Application


@pytest.fixture
async def served() -> AsyncIterator[_Served]:
    app = _make_app()
    listener = await start_listener(app, _settings())
    try:
        yield _Served(listener, app)
    finally:
        await listener.stop()


# -- raw HTTP client helpers ----------------------------------------------


@dataclass
class _Response:
    version: str
    status: int
    headers: dict[str, str]
    body: bytes


def _get(path: str = "/", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(ConnectionError):
        await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> _Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.read()
    return _Response(version, int(status), headers, body)


async def _until_closed(reader: asyncio.StreamReader, limit: float = 3.0) -> bytes:
    """Everything the server sends until it closes; a reset counts as closed."""
    data = b""
    with suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(4096), limit):
            data += chunk
    return data


# -- normal traffic ----------------------------------------------------------


async def test_port_zero_reports_bound_port(served: _Served) -> None:
    assert served.listener.port > 0
    assert str(served.listener.port) in repr(served.listener)


async def test_keepalive_two_requests_on_one_connection(
    served: _Served, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await _connect(served.listener.port)
    try:
        for _ in range(2):
            writer.write(_get())
            response = await _read_response(reader)
            assert (response.version, response.status, response.body) == ("HTTP/1.1", 200, b"ok")
            assert response.headers.get("connection", "").lower() != "close"
    finally:
        await _close(writer)
    assert served.app[APP_CALLS] == ["/", "/"]
    # SECURITY: aiohttp's access log (which logs query strings) is off.
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]


async def test_http10_is_served(served: _Served) -> None:
    reader, writer = await _connect(served.listener.port)
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        response = await _read_response(reader)
        assert (response.status, response.body) == (200, b"ok")
    finally:
        await _close(writer)


async def test_tcp_nodelay_is_set_on_accepted_sockets(served: _Served) -> None:
    # aiohttp sets it in BaseProtocol.connection_made; we rely on that.
    reader, writer = await _connect(served.listener.port)
    try:
        writer.write(_get("/nodelay"))
        response = await _read_response(reader)
        assert response.status == 200
        assert int(response.body) != 0
    finally:
        await _close(writer)


# -- request-head deadline ---------------------------------------------------


async def test_idle_connection_is_closed_after_header_timeout(served: _Served) -> None:
    reader, writer = await _connect(served.listener.port)
    try:
        started = time.monotonic()
        data = await _until_closed(reader)
        elapsed = time.monotonic() - started
    finally:
        await _close(writer)
    # The client sent nothing, so it gets a silent close rather than a 408.
    assert data == b""
    assert HEADER_TIMEOUT - 0.05 <= elapsed <= HEADER_TIMEOUT + DEADLINE_SLACK


async def _slowloris(writer: asyncio.StreamWriter) -> None:
    writer.write(b"GET / HTTP/1.1\r\n")
    with suppress(ConnectionError):
        for byte in b"X-Slow: " + b"a" * 100:
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()


async def test_slowloris_is_closed_despite_steady_bytes(served: _Served) -> None:
    reader, writer = await _connect(served.listener.port)
    started = time.monotonic()
    sender = asyncio.create_task(_slowloris(writer))
    try:
        data = await _until_closed(reader)
        elapsed = time.monotonic() - started
    finally:
        sender.cancel()
        with suppress(asyncio.CancelledError):
            await sender
        await _close(writer)
    assert HEADER_TIMEOUT - 0.05 <= elapsed <= HEADER_TIMEOUT + DEADLINE_SLACK
    # A reset can swallow the 408 if a byte was in flight at close; if it
    # arrived, it must be the 408.
    assert data == b"" or data.startswith(b"HTTP/1.1 408 ")
    assert served.app[APP_CALLS] == []


async def test_keepalive_idle_is_governed_by_keepalive_timeout(served: _Served) -> None:
    reader, writer = await _connect(served.listener.port)
    try:
        writer.write(_get())
        assert (await _read_response(reader)).status == 200
        # Idle well past the head deadline: still open (keep-alive applies).
        await asyncio.sleep(HEADER_TIMEOUT + 0.15)
        writer.write(_get())
        assert (await _read_response(reader)).status == 200
        # Then idle again: closed by keepalive_timeout, not earlier.
        started = time.monotonic()
        data = await _until_closed(reader)
        elapsed = time.monotonic() - started
    finally:
        await _close(writer)
    assert data == b""
    assert KEEPALIVE_TIMEOUT - 0.1 <= elapsed <= KEEPALIVE_TIMEOUT + 0.5


async def test_keepalive_next_request_head_has_its_own_deadline(served: _Served) -> None:
    reader, writer = await _connect(served.listener.port)
    try:
        writer.write(_get())
        assert (await _read_response(reader)).status == 200
        # Start a second request and stall: the clock starts at its first byte.
        writer.write(b"GET / HT")
        started = time.monotonic()
        data = await _until_closed(reader)
        elapsed = time.monotonic() - started
    finally:
        await _close(writer)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nConnection: close\r\n" in head
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"\r\nx-request-id: " in head
    assert f"\r\nContent-Length: {len(body)}".encode() in head
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert HEADER_TIMEOUT - 0.05 <= elapsed <= HEADER_TIMEOUT + DEADLINE_SLACK


async def test_long_streaming_response_is_not_cut(served: _Served) -> None:
    reader, writer = await _connect(served.listener.port)
    try:
        started = time.monotonic()
        writer.write(_get("/stream"))
        response = await _read_response(reader)
        elapsed = time.monotonic() - started
        assert response.status == 200
        assert response.body == b"".join(f"chunk{i};".encode() for i in range(STREAM_CHUNKS))
        assert elapsed >= STREAM_CHUNKS * STREAM_INTERVAL - 0.05
        # And the connection is still usable afterwards.
        writer.write(_get())
        assert (await _read_response(reader)).status == 200
    finally:
        await _close(writer)


# -- HTTP versions -------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/2.0\r\nHost: test\r\n\r\n",
        b"GET / HTTP/0.9\r\nHost: test\r\n\r\n",
        b"GET /\r\nHost: test\r\n\r\n",  # versionless: llhttp reads it as HTTP/0.9
    ],
    ids=["http2.0", "http0.9", "versionless"],
)
async def test_unsupported_http_version_is_rejected(served: _Served, request_bytes: bytes) -> None:
    reader, writer = await _connect(served.listener.port)
    try:
        writer.write(request_bytes)
        response = await _read_response(reader)
        rest = await _until_closed(reader)
    finally:
        await _close(writer)
    # Answered in HTTP/1.1, not by echoing the client's version.
    assert (response.version, response.status) == ("HTTP/1.1", 505)
    assert response.headers["connection"].lower() == "close"
    assert rest == b""
    assert served.app[APP_CALLS] == []  # the app never saw it


# -- client send deadline ------------------------------------------------------


SEND_TIMEOUT = 1.0


async def test_send_deadline_aborts_a_client_that_stopped_reading() -> None:
    ended = asyncio.Event()
    connections: list[ClientConnection | None] = []
    written = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal written
        connections.append(client_connection(request))
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"x" * 16384)
                written += 16384
        finally:
            ended.set()

    app = web.Application()
    app.router.add_get("/endless", endless)
    settings = ListenerSettings(port=0, client_send_timeout=SEND_TIMEOUT, header_timeout=5)
    listener = await start_listener(app, settings)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", listener.port))
        await loop.sock_sendall(sock, _get("/endless"))
        started = time.monotonic()
        await asyncio.wait_for(ended.wait(), 5)  # never reading: the handler is cut
        elapsed = time.monotonic() - started
        # Reset, not closed: the kernel drops the unread bytes at once instead
        # of probing a zero window for minutes.
        with pytest.raises(ConnectionResetError):
            while await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5):
                pass
    finally:
        sock.close()
        await listener.stop()
    (connection,) = connections
    assert cut_outcome(connection) == "client_stalled"
    # Cut between one deadline and 1.1 deadlines after the last byte the client
    # acknowledged (which is right after it stopped reading), not a whole
    # deadline later again because its window was still filling when writes paused.
    assert SEND_TIMEOUT - 0.05 <= elapsed < 1.1 * SEND_TIMEOUT + 0.5
    # The kernel queued little for a client that reads nothing (TCP_NOTSENT_LOWAT):
    # without the limit, Linux takes about 3 MiB, all of it produced for nothing.
    assert written < 512 * 1024


# -- stop() ----------------------------------------------------------------------


async def test_stop_drains_in_flight_and_refuses_new_connections(served: _Served) -> None:
    port = served.listener.port
    busy_reader, busy_writer = await _connect(port)
    idle_reader, idle_writer = await _connect(port)
    try:
        idle_writer.write(_get())
        assert (await _read_response(idle_reader)).status == 200
        busy_writer.write(_get("/slow"))
        await asyncio.wait_for(served.app[SLOW_STARTED].wait(), 2)

        started = time.monotonic()
        stopping = asyncio.create_task(served.listener.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            await _connect(port)
        # The idle keep-alive connection is closed at once, not after keepalive_timeout.
        assert await _until_closed(idle_reader, limit=1.0) == b""
        assert not stopping.done()

        response = await _read_response(busy_reader)
        assert (response.status, response.body) == (200, b"slow-done")
        await asyncio.wait_for(stopping, 3)
        assert time.monotonic() - started < SLOW_DELAY + 0.5
        assert await _until_closed(busy_reader, limit=1.0) == b""
    finally:
        await _close(busy_writer)
        await _close(idle_writer)
    await asyncio.gather(served.listener.stop(), served.listener.stop())  # idempotent


# -- guards on what we depend on --------------------------------------------


async def test_private_aiohttp_internals_mean_what_we_assume(served: _Served) -> None:
    """Guards ``_request_count`` / ``_waiter`` / keep-alive deadline semantics against upgrades."""
    protocols: list[RequestHandler] = []

    async def capture(request: web.Request) -> web.Response:
        protocols.append(request.protocol)
        return web.Response(text="ok")

    check_aiohttp_internals()

    app = web.Application()
    app.router.add_get("/", capture)
    app.router.add_get("/internals", _internals)
    listener = await start_listener(app, _settings())
    loop = asyncio.get_running_loop()
    reader, writer = await _connect(listener.port)
    try:
        await asyncio.sleep(0.05)
        sent = loop.time()
        writer.write(_get())
        assert (await _read_response(reader)).status == 200
        answered = loop.time()
        (protocol,) = protocols
        await asyncio.sleep(0.05)
        # Between requests: one head seen, idle, idle since the response.
        assert head_count(protocol) == 1
        assert is_idle(protocol)
        assert sent + KEEPALIVE_TIMEOUT <= idle_order(protocol) <= answered + KEEPALIVE_TIMEOUT
        # Part of a head: not counted yet, still idle.
        writer.write(b"GET /internals HT")
        await asyncio.sleep(0.05)
        assert head_count(protocol) == 1
        assert is_idle(protocol)
        # Head complete, handler running: counted, not idle.
        writer.write(b"TP/1.1\r\nHost: test\r\n\r\n")
        response = await _read_response(reader)
        assert json.loads(response.body) == {"count": 2, "idle": False}
    finally:
        await _close(writer)
        await listener.stop()


@pytest.mark.parametrize("name", ["_request_count", "_waiter", "_next_keepalive_close_time"])
def test_missing_private_attribute_fails_startup(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.delattr(RequestHandler, name)
    with pytest.raises(RuntimeError, match=name):
        check_aiohttp_internals()


def test_missing_parse_error_message_fails_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiohttp_internals, "PARSE_ERROR_MESSAGE", None)
    with pytest.raises(RuntimeError, match=r"web_protocol\.ERROR"):
        check_aiohttp_internals()


def test_missing_server_software_fails_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(web_response, "SERVER_SOFTWARE")
    with pytest.raises(RuntimeError, match="SERVER_SOFTWARE"):
        check_aiohttp_internals()


def test_reshaped_handle_error_fails_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    def handle_error(self: RequestHandler, request: web.BaseRequest) -> web.StreamResponse:
        raise AssertionError("not called")

    monkeypatch.setattr(RequestHandler, "handle_error", handle_error)
    with pytest.raises(RuntimeError, match="handle_error"):
        check_aiohttp_internals()


async def test_pure_python_parser_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    require_c_parser()  # the real environment has the C parser
    monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    with pytest.raises(RuntimeError, match="AIOHTTP_NO_EXTENSIONS"):
        require_c_parser()
    with pytest.raises(RuntimeError, match="llhttp"):
        await start_listener(_make_app(), _settings())


def test_aiohttp_no_extensions_env_refuses_to_start() -> None:
    # The real switch, in a fresh interpreter (it is read at aiohttp import).
    env = {**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from aigw.listener.aiohttp_internals import require_c_parser; require_c_parser()",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "RuntimeError" in result.stderr
    assert "not using the C (llhttp) HTTP request parser" in result.stderr


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="header_timeout"):
        _settings(header_timeout=0.0)
    with pytest.raises(ValueError, match="keepalive_timeout"):
        _settings(keepalive_timeout=-1.0)
    with pytest.raises(ValueError, match="shutdown_timeout"):
        _settings(shutdown_timeout=-1.0)
    with pytest.raises(ValueError):
        ListenerSettings(port=70000)
    with pytest.raises(ValueError):
        ListenerSettings(backlog=0)


def test_head_deadline_under_uvloop() -> None:
    """The wrapper protocol works on uvloop's transports too (if installed)."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        listener = await start_listener(_make_app(), _settings())
        try:
            reader, writer = await _connect(listener.port)
            writer.write(_get())
            assert (await _read_response(reader)).status == 200
            writer.write(b"GET / HT")
            started = time.monotonic()
            data = await _until_closed(reader)
            elapsed = time.monotonic() - started
            await _close(writer)
            assert data.startswith(b"HTTP/1.1 408 ")
            assert elapsed <= HEADER_TIMEOUT + DEADLINE_SLACK
        finally:
            await listener.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# -- a client gone mid-response --------------------------------------------------


async def test_a_client_gone_mid_response_ends_quietly(caplog: pytest.LogCaptureFixture) -> None:
    # What the relay meets when a client leaves between two writes: the next
    # write raises ConnectionResetError ("Cannot write to closing transport").
    # The access log has recorded it; aiohttp must not print a traceback.
    started = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        started.set()
        raise ConnectionResetError("Cannot write to closing transport")

    listener = await start_listener(handler, _settings())
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp"):
            reader, writer = await _connect(listener.port)
            writer.write(_get())
            await asyncio.wait_for(started.wait(), 5)
            received = await _until_closed(reader)
            await _close(writer)
    finally:
        await listener.stop()
    assert received.startswith(b"HTTP/1.1 200")
    assert b"500" not in received  # no second response after the first began
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
