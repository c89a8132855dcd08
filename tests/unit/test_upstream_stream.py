"""Tests for streamed request bodies (``BodyStream``) in aigw.upstream.pool, on real sockets.

The scripted servers and fixtures are test_upstream_pool's. A ``PieceStream``
yields pieces on demand and records how many were asked of it and whether it
was closed, so pacing (the next piece only once the upstream took the last)
and abandonment are observed from the body's side as well as the server's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import suppress

import pytest

from aigw.errors import PayloadTooLarge
from aigw.upstream import connection as connection_mod
from aigw.upstream.connection import UpstreamDisconnected
from aigw.upstream.http1 import ProtocolError
from aigw.upstream.pool import UpstreamPool, UpstreamResponse
from tests.unit import test_upstream_pool as base
from tests.unit.test_upstream_pool import (
    TIMEOUT,
    Peer,
    Serve,
    _ClosingUpstream,
    fetch,
    guard,
    response,
)

# test_upstream_pool's fixtures: its scripted server and a pool closed after each test.
serve = base.serve
make_pool = base.make_pool
pool = base.pool

PIECE = 64 * 1024


class PieceStream:
    """A ``BodyStream`` of *count* pieces of *size* bytes, optionally failing at one."""

    def __init__(
        self,
        count: int,
        *,
        size: int = PIECE,
        length: int | bool | None = True,
        fail_at: int | None = None,
        delay: float = 0.0,
        seed: int = 7,
    ) -> None:
        rng = random.Random(seed)
        self._pieces = [rng.randbytes(size) for _ in range(count)]
        self.body = b"".join(self._pieces)
        self.length: int | None = len(self.body) if length is True else length or None
        self._fail_at = fail_at
        self._delay = delay
        self.taken = 0
        self.received = 0
        self.closed = False
        self.iterations = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        self.iterations += 1
        try:
            for index, piece in enumerate(self._pieces):
                if index == self._fail_at:
                    raise PayloadTooLarge("request_too_large", "the request body is too large")
                if self._delay:
                    await asyncio.sleep(self._delay)
                self.taken += 1
                yield piece
        finally:
            self.closed = True


async def send(
    pool: UpstreamPool,
    peer_origin: object,
    body: PieceStream,
    *,
    write_timeout: float | None = 2.0,
) -> UpstreamResponse:
    return await pool.request(
        peer_origin,  # type: ignore[arg-type]
        "POST",
        "/openai/v1/audio/transcriptions",
        [("Content-Type", "multipart/form-data; boundary=x")],
        body,
        connect_timeout=2.0,
        read_timeout=2.0,
        write_timeout=write_timeout,
    )


async def read_chunked(peer: Peer) -> bytes:
    """A chunked request body, decoded."""
    body = b""
    while True:
        size = int((await peer.reader.readuntil(b"\r\n"))[:-2], 16)
        if size == 0:
            assert await peer.reader.readexactly(2) == b"\r\n"
            return body
        body += await peer.reader.readexactly(size)
        assert await peer.reader.readexactly(2) == b"\r\n"


async def test_a_stream_with_a_length_goes_out_as_content_length_and_the_connection_is_reused(
    serve: Serve, pool: UpstreamPool
) -> None:
    heads: list[bytes] = []
    bodies: list[bytes] = []

    async def handler(peer: Peer) -> None:
        while True:
            head = await peer.reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            if b"content-length: " in head.lower():
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                bodies.append(await peer.reader.readexactly(length))
            await peer.send(response(b"done"))

    server = await serve(handler)
    stream = PieceStream(40)  # 2.5 MiB
    async with guard():
        resp = await send(pool, server.origin, stream)
        assert await resp.read() == b"done"
    resp.release()
    assert bodies == [stream.body]
    assert b"transfer-encoding" not in heads[0].lower()
    assert stream.closed
    assert pool.idle_connections(server.origin) == 1
    # A request after it reuses the connection: the stream's framing was exact.
    assert await fetch(pool, server.origin) == b"done"
    assert server.accepted == 1


async def test_a_stream_without_a_length_goes_out_chunked(serve: Serve, pool: UpstreamPool) -> None:
    heads: list[bytes] = []
    bodies: list[bytes] = []

    async def handler(peer: Peer) -> None:
        while True:
            heads.append(await peer.reader.readuntil(b"\r\n\r\n"))
            bodies.append(await read_chunked(peer))
            await peer.send(response(b"done"))

    server = await serve(handler)
    first, second = PieceStream(5, size=1000, length=None), PieceStream(3, length=None, seed=8)
    for stream in (first, second):
        async with guard():
            resp = await send(pool, server.origin, stream)
            assert await resp.read() == b"done"
        resp.release()
    assert bodies == [first.body, second.body]
    assert b"Transfer-Encoding: chunked\r\n" in heads[0]
    assert b"content-length" not in heads[0].lower()
    assert server.accepted == 1, "the chunked framing was exact: the connection was reused"


async def test_pieces_are_asked_for_only_as_the_upstream_takes_them(
    serve: Serve, pool: UpstreamPool
) -> None:
    # An upstream that reads nothing: the kernel buffers fill, the send
    # pauses, and after the write timeout the stream has been asked for a
    # few MiB at most, never its 64 MiB.
    async def handler(peer: Peer) -> None:
        await peer.eof.wait()

    server = await serve(handler)
    stream = PieceStream(1024)  # 64 MiB
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="request body"):
        async with guard():
            await send(pool, server.origin, stream, write_timeout=TIMEOUT)
    assert time.monotonic() - started < 1.5
    assert stream.taken * PIECE < 16 * 1024 * 1024, stream.taken
    assert stream.closed
    assert pool.open_connections == 0


async def test_an_early_answer_stops_the_upload_and_retires_the_connection(
    serve: Serve, pool: UpstreamPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        await peer.reader.readexactly(PIECE)  # a little of the body, then the verdict
        await peer.send(response(b"too large", status="413 Payload Too Large"))
        await peer.until_eof()

    server = await serve(handler)
    stream = PieceStream(400, delay=0.002)  # 25 MiB, trickled: ~1 s if sent whole
    started = time.monotonic()
    async with guard():
        resp = await send(pool, server.origin, stream)
        assert resp.status == 413
        assert await resp.read() == b"too large"
    resp.release()
    assert time.monotonic() - started < 0.8
    assert stream.taken < 100, "sending went on after the answer"
    assert stream.closed
    assert pool.idle_connections(server.origin) == 0, "a connection mid-request was kept"
    assert pool.open_connections == 0


async def test_a_client_bound_broken_mid_way_closes_the_upstream_connection(
    serve: Serve, pool: UpstreamPool
) -> None:
    received: list[int] = []
    ended = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        received.append(len(await peer.until_eof()))
        ended.set()

    server = await serve(handler)
    stream = PieceStream(10, fail_at=4)
    with pytest.raises(PayloadTooLarge):
        async with guard():
            await send(pool, server.origin, stream)
    assert stream.closed
    assert pool.open_connections == 0
    async with guard():
        await ended.wait()
    assert received == [4 * PIECE], "the upstream saw the connection end mid-body"


async def test_an_upstream_that_closes_mid_upload_is_not_sent_the_body_again(
    serve: Serve, pool: UpstreamPool
) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.reader.readuntil(b"\r\n\r\n")
            await peer.reader.readexactly(PIECE)
            peer.reset()
            return
        await peer.eof.wait()

    server = await serve(handler)
    stream = PieceStream(200, delay=0.002)
    with pytest.raises((UpstreamDisconnected, ConnectionError)):
        async with guard():
            await send(pool, server.origin, stream)
    assert server.accepted == 1
    assert stream.iterations == 1
    assert pool.open_connections == 0


async def test_a_reused_connection_closed_mid_upload_is_not_resent(
    serve: Serve, pool: UpstreamPool
) -> None:
    # The keep-alive race's other half: the upstream's close crossed a request
    # whose head and first piece had left. Those bytes came from the client
    # once; nothing is resent, whatever the connection's history.
    async def handler(peer: Peer) -> None:
        if peer.index > 0:
            await peer.eof.wait()
            return
        await peer.read_request()
        await peer.send(response(b"first"))
        await peer.reader.readuntil(b"\r\n\r\n")
        await peer.reader.readexactly(PIECE)

    server = await serve(handler)
    assert await fetch(pool, server.origin) == b"first"
    stream = PieceStream(50, delay=0.002)
    with pytest.raises(UpstreamDisconnected):
        async with guard():
            await send(pool, server.origin, stream)
    assert server.accepted == 1
    assert stream.iterations == 1
    assert stream.taken < 50
    assert pool.open_connections == 0


async def test_a_stream_whose_head_never_left_a_reused_connection_is_sent_on_a_new_one(
    pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The keep-alive race (pool docstring): the head's send failed on a reset
    # reused connection before a piece was taken, so the whole stream goes,
    # once, on a new connection.
    upstream = _ClosingUpstream("reset")
    try:
        assert await fetch(pool, upstream.origin) == b"conn0"
        upstream.finish.set()
        assert upstream.finished.wait(5)
        time.sleep(0.05)  # noqa: ASYNC251 - the loop must not read the reset first
        monkeypatch.setattr(connection_mod.UpstreamConnection, "has_pending_input", lambda _: False)
        stream = PieceStream(3, size=1000)
        async with guard():
            resp = await send(pool, upstream.origin, stream)
            assert await resp.read() == b"conn1"
        resp.release()
        posts = [(index, r) for index, r in upstream.requests if r.startswith(b"POST")]
        assert [index for index, _ in posts] == [1]
        assert posts[0][1].endswith(b"\r\n\r\n" + stream.body)
        assert stream.iterations == 1
    finally:
        upstream.close()


@pytest.mark.parametrize("length", [3 * PIECE - 1, 3 * PIECE + 1], ids=["short", "long"])
async def test_a_stream_that_breaks_its_announced_length_fails(
    serve: Serve, pool: UpstreamPool, length: int
) -> None:
    async def handler(peer: Peer) -> None:
        with suppress(ConnectionError):
            await peer.until_eof()

    server = await serve(handler)
    stream = PieceStream(3, length=length)
    with pytest.raises(ProtocolError, match="announced"):
        async with guard():
            await send(pool, server.origin, stream)
    assert pool.open_connections == 0
