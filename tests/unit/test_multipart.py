"""Tests for aigw.apis.multipart: the model peeked from a streamed form, its bounds, its errors.

A real aiohttp server runs ``open_multipart`` in its handler, then drains the
``MultipartStream`` (as the upstream pool would) and answers what it saw; the
client is a raw asyncio socket, so a test decides exactly when each byte of
the upload leaves (a form whose file is held back until the model has been
read, a trickle, a chunked body that outgrows the limit).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from aigw.apis.multipart import PREFIX_LIMIT, MultipartStream, open_multipart
from aigw.chain.body_budget import BodyBudget
from aigw.chain.errors import error_response
from aigw.chain.exchange import Exchange
from aigw.errors import GatewayError
from aigw.limits import Limits
from aigw.upstream.pool import UpstreamPool

BOUNDARY = "aigw-test-7MA4YWxkTrZu0gW"
LIMITS = Limits(client_body_timeout=0.3, client_body_total_timeout=1.5)


def form(*fields: tuple[str, bytes], file: bytes | None = None, file_first: bool = False) -> bytes:
    """A multipart/form-data body as the openai SDK (httpx) writes it."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in fields
    ]
    if file is not None:
        part = (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                'filename="speech.wav"\r\nContent-Type: audio/wav\r\n\r\n'
            ).encode()
            + file
            + b"\r\n"
        )
        parts.insert(0 if file_first else len(parts), part)
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def head(length: int | None, *, content_type: str | None = None, extra: str = "") -> bytes:
    ctype = f"multipart/form-data; boundary={BOUNDARY}" if content_type is None else content_type
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST /openai/v1/audio/transcriptions HTTP/1.1\r\nHost: aigw\r\n"
        f"Content-Type: {ctype}\r\n{framing}\r\n{extra}\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Gateway:
    """The server side: ``open_multipart`` then the stream drained, as the relay would."""

    def __init__(self, limit: int, rewrite: tuple[str, ...] = (), tighten: int = 0) -> None:
        self.limit = limit
        self.rewrite = rewrite
        self.tighten = tighten
        self.peeked = asyncio.Event()
        self.models: list[str | None] = []
        self.streams: list[MultipartStream] = []
        self.port = 0
        self.runner = web.ServerRunner(web.Server(self.handle))
        self._budget = BodyBudget(64 * 1024 * 1024)
        self._pool = UpstreamPool()

    async def close(self) -> None:
        await self.runner.cleanup()
        await self._pool.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        ex = Exchange(request, request.path, self._pool, self._budget)
        try:
            model = await open_multipart(ex, self.limit, LIMITS)
            stream = ex.upstream_stream
            assert isinstance(stream, MultipartStream)
            self.models.append(model)
            self.streams.append(stream)
            self.peeked.set()
            for deployment in self.rewrite:  # as successive attempts of a pool would
                stream.rewrite_model(deployment)
            stream.tighten(self.tighten)
            digest = hashlib.sha256()
            size = 0
            async for piece in stream.chunks():
                digest.update(piece)
                size += len(piece)
        except GatewayError as error:
            return error_response(ex, error)
        answer = {"model": model, "size": size, "length": stream.length, "sha": digest.hexdigest()}
        return web.json_response(answer)


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def start(
        limit: int = 8 * 1024 * 1024, rewrite: tuple[str, ...] = (), tighten: int = 0
    ) -> Gateway:
        gw = Gateway(limit, rewrite, tighten)
        await gw.runner.setup()
        site = web.TCPSite(gw.runner, "127.0.0.1", 0)
        await site.start()
        started.append(gw)
        gw.port = gw.runner.addresses[0][1]
        return gw

    yield start
    for gw in started:
        await gw.close()


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, Any], bytes]:
    """Sends *request* and reads the answer: status, JSON body, head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(5):
            writer.write(request)
            return await read_answer(reader)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any], bytes]:
    answer_head = await reader.readuntil(b"\r\n\r\n")
    status = int(answer_head.split(b" ", 2)[1])
    length = int(answer_head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return status, json.loads(await reader.readexactly(length)), answer_head


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


AUDIO = random.Random(5).randbytes(3 * 1024 * 1024)


async def test_the_model_is_known_before_the_file_is_sent(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    # The file is held back until the server has the model: it cannot have
    # read the file first.
    gw = await gateway()
    body = form(("model", b"whisper"), ("response_format", b"json"), file=AUDIO)
    split = body.index(b'name="file"') - 100
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        async with asyncio.timeout(5):
            writer.write(head(len(body)) + body[:split])
            await gw.peeked.wait()
            assert gw.models == ["whisper"]
            writer.write(body[split:])
            status, answer, _ = await read_answer(reader)
    finally:
        writer.close()
    assert status == 200
    assert answer == {"model": "whisper", "size": len(body), "length": len(body), "sha": sha(body)}


async def test_the_kept_prefix_is_bounded_whatever_the_file(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await gateway()
    body = form(("model", b"whisper"), file=AUDIO)
    status, answer, _ = await exchange(gw.port, head(len(body)) + body)
    assert status == 200 and answer["sha"] == sha(body)
    (stream,) = gw.streams
    # Read before the stream was drained: the model and at most one piece past it.
    assert stream.model == "whisper"
    assert stream.prefix_size <= PREFIX_LIMIT + 256 * 1024


async def test_a_file_before_the_model_streams_with_the_model_unknown(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    # A small file: the model after it would be well within the peek's reach.
    gw = await gateway()
    body = form(("model", b"whisper"), file=AUDIO[:2000], file_first=True)
    status, answer, _ = await exchange(gw.port, head(len(body)) + body)
    assert status == 200
    assert answer == {"model": None, "size": len(body), "length": len(body), "sha": sha(body)}


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_rewrite_model_replaces_the_field_and_the_length(
    gateway: Callable[..., Awaitable[Gateway]], framing: str
) -> None:
    gw = await gateway(rewrite=("whisper-prod-eastus",))
    body = form(("model", b"whisper"), ("language", b"en"), file=AUDIO[:5000])
    expected = form(("model", b"whisper-prod-eastus"), ("language", b"en"), file=AUDIO[:5000])
    if framing == "length":
        request = head(len(body)) + body
    else:
        request = head(None) + chunk(body[:40]) + chunk(body[40:]) + b"0\r\n\r\n"
    status, answer, _ = await exchange(gw.port, request)
    assert status == 200
    assert answer["model"] == "whisper"
    assert answer["sha"] == sha(expected)
    assert answer["size"] == len(expected)
    assert answer["length"] == (len(expected) if framing == "length" else None)


async def test_a_later_attempt_names_its_own_deployment_even_the_clients(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    # A pool's first target renamed the field; the next one is deployed under the very
    # name the client sent: the form must say it again, not keep the first's.
    gw = await gateway(rewrite=("whisper-prod-eastus", "whisper"))
    body = form(("model", b"whisper"), ("language", b"en"), file=AUDIO[:5000])
    status, answer, _ = await exchange(gw.port, head(len(body)) + body)
    assert status == 200
    assert (answer["sha"], answer["size"], answer["length"]) == (sha(body), len(body), len(body))


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b'{"model": "whisper"}', "takes a multipart/form-data body"),
        ("multipart/form-data", form(("model", b"w")), "no valid boundary"),
        (None, b"this is not a form at all", "malformed"),
        (None, f"--{BOUNDARY}--\r\n".encode(), "before any field"),
        (None, f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="mo'.encode(), "ends"),
    ],
    ids=["json", "no-boundary", "garbled", "empty-form", "cut-off"],
)
async def test_a_body_that_is_not_a_form_is_a_400(
    gateway: Callable[..., Awaitable[Gateway]],
    content_type: str | None,
    body: bytes,
    message: str,
) -> None:
    gw = await gateway()
    status, answer, _ = await exchange(gw.port, head(len(body), content_type=content_type) + body)
    assert status == 400
    assert answer["error"]["code"] == "invalid_multipart"
    assert message in answer["error"]["message"]


async def test_a_large_body_that_is_not_a_form_is_refused_without_draining_it(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await gateway()
    request = head(4 * 1024 * 1024, content_type="application/json") + b'{"model": "w'
    status, answer, answer_head = await exchange(gw.port, request)
    assert status == 400
    assert answer["error"]["code"] == "invalid_multipart"
    assert b"connection: close" in answer_head.lower()


async def test_a_declared_size_over_the_limit_is_refused_before_the_body_is_sent(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await gateway(limit=1024 * 1024)
    body = form(("model", b"whisper"), file=AUDIO)
    # Only the head goes out: the answer must come without the body.
    status, answer, answer_head = await exchange(gw.port, head(len(body)))
    assert status == 413
    assert answer["error"]["code"] == "request_too_large"
    assert b"connection: close" in answer_head.lower()
    assert gw.models == []


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_the_named_routes_stricter_bound_applies_after_the_peek(
    gateway: Callable[..., Awaitable[Gateway]], chunked: bool
) -> None:
    # The dispatcher peeks under the loosest bound of all model routes; the route the
    # form names then tightens it to its own.
    gw = await gateway(limit=8 * 1024 * 1024, tighten=64 * 1024)
    body = form(("model", b"whisper"), file=AUDIO)
    assert len(body) > 64 * 1024
    if chunked:
        request = head(None) + b"".join(
            chunk(body[at : at + 8192]) for at in range(0, len(body), 8192)
        )
        request += b"0\r\n\r\n"
    else:
        request = head(len(body)) + body
    status, answer, answer_head = await exchange(gw.port, request)
    assert (status, answer["error"]["code"]) == (413, "request_too_large")
    assert b"connection: close" in answer_head.lower()
    assert gw.models == ["whisper"]


@pytest.mark.parametrize("after_peek", [True, False], ids=["past-the-model", "in-the-fields"])
async def test_a_chunked_body_outgrowing_the_limit_is_a_413_mid_way(
    gateway: Callable[..., Awaitable[Gateway]], after_peek: bool
) -> None:
    # Past the model, the 413 comes from the stream; in the leading fields
    # (a 60 KiB prompt, under the 64 KiB peek), from the peek itself.
    limit = 1024 * 1024 if after_peek else 48 * 1024
    gw = await gateway(limit=limit)
    fields = [("model", b"whisper")] if after_peek else [("prompt", b"p" * 60_000)]
    body = form(*fields, file=AUDIO)
    pieces = [chunk(body[at : at + 65536]) for at in range(0, len(body), 65536)]
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    sent = 0
    try:
        async with asyncio.timeout(5):
            writer.write(head(None))
            answer_task = asyncio.ensure_future(read_answer(reader))
            for piece in pieces:
                if answer_task.done():
                    break
                writer.write(piece)
                sent += len(piece)
                await writer.drain()
                await asyncio.sleep(0.001)
            status, answer, _ = await answer_task
    finally:
        writer.close()
    assert status == 413
    assert answer["error"]["code"] == "request_too_large"
    assert sent < len(body) // 2, "the client was told only after sending most of it"
    assert gw.models == (["whisper"] if after_peek else [])


async def test_a_client_that_goes_silent_gets_a_408(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await gateway()
    body = form(("model", b"whisper"), file=AUDIO[:200_000])
    started = time.monotonic()
    # The fields and a little of the file, then silence.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        async with asyncio.timeout(5):
            writer.write(head(len(body)) + body[:1000])
            status, answer, answer_head = await read_answer(reader)
    finally:
        writer.close()
    assert status == 408
    assert answer["error"]["code"] == "request_timeout"
    assert "stalled" in answer["error"]["message"]
    assert b"connection: close" in answer_head.lower()
    assert time.monotonic() - started < LIMITS.client_body_timeout + 1.5


async def test_a_steady_trickle_is_bounded_by_the_total_timeout(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await gateway()
    body = form(("model", b"whisper"), file=AUDIO[:20_000])
    pieces = [body[at : at + 200] for at in range(0, len(body), 200)]
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        async with asyncio.timeout(5):
            writer.write(head(len(body)))
            answer_task = asyncio.ensure_future(read_answer(reader))
            for piece in pieces:
                if answer_task.done():
                    break
                writer.write(piece)
                await asyncio.sleep(0.1)  # under the 0.3 s idle bound
            status, answer, _ = await answer_task
    finally:
        writer.close()
    assert status == 408
    assert "did not complete within" in answer["error"]["message"]
    assert time.monotonic() - started < LIMITS.client_body_total_timeout + 1.5


async def test_expect_100_continue_is_answered_before_the_body_is_read(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await gateway()
    body = form(("model", b"whisper"), file=AUDIO[:10_000])
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        async with asyncio.timeout(5):
            writer.write(head(len(body), extra="Expect: 100-continue\r\n"))
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(body)
            status, answer, _ = await read_answer(reader)
    finally:
        writer.close()
    assert status == 200
    assert answer["sha"] == sha(body)


async def test_a_stream_is_sent_once() -> None:
    class _Pieces:
        received = 0

        async def read(self) -> bytes:
            return b""

        def abandon(self) -> None: ...

    stream = MultipartStream(b"prefix", _Pieces(), 6, b"b", None, 0)  # type: ignore[arg-type]
    assert [piece async for piece in stream.chunks()] == [b"prefix"]
    with pytest.raises(GatewayError, match="cannot be sent twice"):
        async for _ in stream.chunks():
            pass
