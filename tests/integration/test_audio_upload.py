"""Multipart uploads through a real aigw: streamed to the upstream, never held whole.

Two gateways: one in front of scripted raw upstreams (``ScriptedUpstream``),
which decide byte by byte when to read, answer or hang up, with short client
body deadlines; and one in front of the Azure mock, for the openai SDK's
``audio.transcriptions.create`` (classic ``AzureOpenAI`` and v1 ``OpenAI``,
sync and async). Clients here are raw sockets when the test must know how
much of the upload had left when the answer came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI, AzureOpenAI, OpenAI

from tests.integration.harness import (
    GatewayProcess,
    MockProcess,
    model_route_file,
    serve_routes,
    wait_until,
)
from tests.integration.rawnet import (
    RawResponse,
    ScriptedUpstream,
    error_of,
    new_request_id,
    parse_response,
    read_response,
)

BOUNDARY = "aigw-upload-x7Hq2"
RAW_PATH = "/openai/deployments/raw/audio/transcriptions"
SMALL_PATH = "/openai/deployments/raw-small/audio/transcriptions"
SMALL_LIMIT = 1024 * 1024
API_VERSION = "2024-06-01"
CLIENT_KEY = "client-key-never-forwarded"
BODY_TIMEOUT = 1.0
PIECE = 64 * 1024


def transcription_route(
    name: str,
    path: str,
    *,
    key: str,
    instance: str,
    deployment: str = "whisper",
    limit: int | None = None,
    target: str = "",
    options: str = "",
) -> str:
    """A transcription route on *path*, its plugin bounding bodies at *limit*; *target*
    and *options* are extra YAML lines of its target and of the target's model options."""
    limit_line = f"\n      max_request_body_size: {limit}" if limit is not None else ""
    return f"""route:
  name: {name}
  paths: [{path}]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:{limit_line}
      targets:
        - route_type: audio/v1/audio/transcriptions
          auth: {{header_name: api-key, header_value: {key}}}{target}
          model:
            provider: azure
            name: whisper
            options:
              azure_instance: {instance}
              azure_deployment_id: {deployment}{options}
"""


def upload_route(name: str, path: str, upstream: str, *, limit: int | None = None) -> str:
    """A transcription route forwarding to *upstream* (a scripted one)."""
    return transcription_route(
        name,
        path,
        key="upstream-secret-key",
        instance="raw",
        limit=limit,
        target="\n          read_timeout: 5000",
        options=f"\n              upstream_url: {upstream}{path}",
    )


def form(model: str, audio: bytes) -> bytes:
    """A transcription form as the openai SDK writes it: the fields, then the file."""
    fields = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (("model", model), ("response_format", "json"))
    )
    file_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return fields + file_head + audio + f"\r\n--{BOUNDARY}--\r\n".encode()


def upload_head(path: str, length: int | None, request_id: str) -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST {path}?api-version={API_VERSION} HTTP/1.1\r\nHost: aigw.test\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\napi-key: {CLIENT_KEY}\r\n"
        f"x-request-id: {request_id}\r\n{framing}\r\n\r\n"
    ).encode()


def audio(size: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(size)


# -- the scripted upstream's side --------------------------------------------------------


class Upstream:
    """What a scripted upstream saw, shared with its thread."""

    def __init__(self) -> None:
        self.received: list[int] = []
        """Body bytes each connection got before it ended."""
        self.ended = threading.Event()
        self.answered = threading.Event()

    def reset(self) -> None:
        self.received.clear()
        self.ended.clear()
        self.answered.clear()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> int:
    """Reads a request body (Content-Length or chunked) and returns its size."""
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        size = 0
        while (length := int((await reader.readuntil(b"\r\n"))[:-2], 16)) != 0:
            size += len(await reader.readexactly(length + 2)) - 2
        await reader.readexactly(2)
        return size
    length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
    left = length
    while left:
        left -= len(await reader.readexactly(min(left, 1 << 20)))
    return length


def transcribing(seen: Upstream) -> Any:
    """Reads an upload whole and answers ``{"text", "bytes"}``, then closes (so each
    request meets the script its test set)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        size = await _read_body(reader, head)
        seen.received.append(size)
        body = json.dumps({"text": "hello", "bytes": size}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    return script


def counting(seen: Upstream, *, answer_after: int | None = None) -> Any:
    """Counts body bytes until the gateway ends the connection; with *answer_after*,
    answers 413 once that many body bytes came (and reads on, as a server that
    lingers would)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"POST ")
        size = 0
        try:
            while data := await reader.read(PIECE):
                size += len(data)
                if answer_after is not None and size >= answer_after and not seen.answered.is_set():
                    body = b'{"error": {"code": "RequestEntityTooLarge", "message": "too big"}}'
                    writer.write(
                        b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    seen.answered.set()
        except ConnectionError:
            pass
        finally:
            seen.received.append(size)
            seen.ended.set()

    return script


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ScriptedUpstream, Upstream]]:
    seen = Upstream()
    with ScriptedUpstream(transcribing(seen)) as server:
        yield server, seen


@pytest.fixture(scope="module")
def raw_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[ScriptedUpstream, Upstream]
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("upload-raw")
    server, _ = upstream
    files = {
        "raw.yaml": upload_route("raw", RAW_PATH, server.url),
        "small.yaml": upload_route("raw-small", SMALL_PATH, server.url, limit=SMALL_LIMIT),
    }
    timeouts = ("--client-body-timeout", str(BODY_TIMEOUT), "--client-body-total-timeout", "20")
    with serve_routes(conf, files, *timeouts) as gateway:
        yield gateway


@pytest.fixture
def seen(upstream: tuple[ScriptedUpstream, Upstream]) -> Iterator[Upstream]:
    server, state = upstream
    state.reset()
    yield state
    server.script = transcribing(state)


def send_until_answered(
    port: int, head: bytes, pieces: list[bytes], *, pause: float = 0.001
) -> tuple[RawResponse, int]:
    """Sends *head* then *pieces* until aigw answers; returns the answer and the bytes sent.

    An answer that came before the upload's end must close the connection
    promptly (the rest of the body is not wanted): checked here.

    The answer is looked for before every piece, so a client that is still
    uploading sees it as soon as it comes, as a real one would not (httpx
    reads only after its last write fails or ends); what matters here is
    *when* aigw answered.
    """
    sent = 0
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for piece in pieces:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
            if pause:
                time.sleep(pause)
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                received += data
                if parse_response(received).complete:
                    break
        if sent < sum(map(len, pieces)):
            assert _closed_while_trickling(sock), "aigw answered early and read on"
    return parse_response(received), sent


def _closed_while_trickling(sock: socket.socket) -> bool:
    """Whether aigw closes the connection at once (well within BODY_TIMEOUT, so the
    client body's idle deadline is not what closes it) while the client still sends."""
    deadline = time.monotonic() + BODY_TIMEOUT / 2
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"x" * 1024)
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and sock.recv(65536) == b"":
                return True
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


def pieces_of(data: bytes, size: int = PIECE) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


def chunked_pieces(data: bytes) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces_of(data)] + [b"0\r\n\r\n"]


# -- scripted upstreams: the adversarial cases ------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_upload_streams_to_the_upstream_with_its_exact_bytes(
    raw_gateway: GatewayProcess, seen: Upstream, chunked: bool
) -> None:
    body = form("whisper", audio(2 * 1024 * 1024))
    request_id = new_request_id("upload")
    head = upload_head(RAW_PATH, None if chunked else len(body), request_id)
    pieces = chunked_pieces(body) if chunked else pieces_of(body)
    answer, _ = send_until_answered(raw_gateway.port, head, pieces, pause=0)
    assert answer.status == 200, answer
    assert json.loads(answer.body) == {"text": "hello", "bytes": len(body)}
    line = raw_gateway.access_log(request_id)
    assert line["status"] == 200 and line["bytes_in"] == len(body)


def test_a_slow_client_body_is_a_408_and_the_upstream_connection_closes(
    raw_gateway: GatewayProcess, upstream: tuple[ScriptedUpstream, Upstream], seen: Upstream
) -> None:
    upstream[0].script = counting(seen)
    body = form("whisper", audio(1024 * 1024))
    request_id = new_request_id("slow")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", raw_gateway.port), timeout=10) as sock:
        # The fields and a little of the file, then nothing.
        sock.sendall(upload_head(RAW_PATH, len(body), request_id) + body[:100_000])
        answer = read_response(sock)
    assert answer.status == 408
    assert error_of(answer)["code"] == "request_timeout"
    assert answer.header("connection") == "close"
    assert time.monotonic() - started < BODY_TIMEOUT + 3
    assert seen.ended.wait(5), "the upstream connection was left open"
    assert seen.received[0] < len(body)
    line = raw_gateway.access_log(request_id)
    assert line["status"] == 408 and line["outcome"] == "request_timeout"


def test_a_client_that_stops_mid_upload_closes_the_upstream_connection(
    raw_gateway: GatewayProcess, upstream: tuple[ScriptedUpstream, Upstream], seen: Upstream
) -> None:
    server = upstream[0]
    server.script = counting(seen)
    connections = server.connections
    body = form("whisper", audio(4 * 1024 * 1024))
    request_id = new_request_id("gone")
    with socket.create_connection(("127.0.0.1", raw_gateway.port), timeout=10) as sock:
        sock.sendall(upload_head(RAW_PATH, len(body), request_id) + body[: 1024 * 1024])
        # Gone once the upload is on its way upstream.
        wait_until(lambda: server.connections > connections, timeout=5)
    # The client is gone: the upstream must see its connection end (not wait out a timeout).
    assert seen.ended.wait(BODY_TIMEOUT + 2), "the upstream connection was left open"
    assert seen.received[0] < len(body)
    line = raw_gateway.access_log(request_id)
    assert line["status"] == 499
    time.sleep(0.3)
    lines = [
        e
        for e in raw_gateway.events()
        if e.get("event") == "request" and e.get("request_id") == request_id
    ]
    assert len(lines) == 1, lines


def test_an_upstream_answering_413_early_stops_the_upload(
    raw_gateway: GatewayProcess, upstream: tuple[ScriptedUpstream, Upstream], seen: Upstream
) -> None:
    upstream[0].script = counting(seen, answer_after=256 * 1024)
    body = form("whisper", audio(20 * 1024 * 1024))
    request_id = new_request_id("early")
    answer, sent = send_until_answered(
        raw_gateway.port, upload_head(RAW_PATH, len(body), request_id), pieces_of(body)
    )
    assert answer.status == 413, answer
    assert json.loads(answer.body)["error"]["code"] == "RequestEntityTooLarge"
    assert sent < len(body) // 2, f"the answer came after {sent} of {len(body)} bytes"
    # aigw stopped sending and dropped the connection (never reused mid-request).
    assert seen.ended.wait(5)
    assert seen.received[0] < len(body) // 2
    line = raw_gateway.access_log(request_id)
    assert line["status"] == 413 and line["upstream_status"] == 413


def test_a_chunked_upload_past_the_limit_is_a_413_and_the_upstream_connection_closes(
    raw_gateway: GatewayProcess, upstream: tuple[ScriptedUpstream, Upstream], seen: Upstream
) -> None:
    upstream[0].script = counting(seen)
    body = form("whisper", audio(8 * SMALL_LIMIT))
    request_id = new_request_id("chunked")
    answer, sent = send_until_answered(
        raw_gateway.port, upload_head(SMALL_PATH, None, request_id), chunked_pieces(body)
    )
    assert answer.status == 413, answer
    error = error_of(answer)
    assert error["code"] == "request_too_large"
    assert f"max_request_body_size ({SMALL_LIMIT} bytes)" in error["message"]
    assert sent < len(body) // 2
    assert seen.ended.wait(5), "the upstream connection was left open"
    assert SMALL_LIMIT // 2 < seen.received[0] <= SMALL_LIMIT + 1024
    assert raw_gateway.access_log(request_id)["status"] == 413


def test_a_declared_size_over_the_limit_is_refused_before_the_upload(
    raw_gateway: GatewayProcess, upstream: tuple[ScriptedUpstream, Upstream], seen: Upstream
) -> None:
    connections = upstream[0].connections
    body = form("whisper", audio(4 * SMALL_LIMIT))
    request_id = new_request_id("declared")
    with socket.create_connection(("127.0.0.1", raw_gateway.port), timeout=10) as sock:
        sock.sendall(upload_head(SMALL_PATH, len(body), request_id))  # the head alone
        answer = read_response(sock)
    assert answer.status == 413
    assert error_of(answer)["code"] == "request_too_large"
    assert upstream[0].connections == connections, "the upstream was contacted"


def test_a_20_mib_upload_does_not_grow_the_gateway_by_its_size(
    raw_gateway: GatewayProcess, seen: Upstream
) -> None:
    size = 20 * 1024 * 1024
    warm = form("whisper", audio(256 * 1024))
    send_until_answered(
        raw_gateway.port, upload_head(RAW_PATH, len(warm), "warm-up"), pieces_of(warm), pause=0
    )
    before = _peak_kib(raw_gateway.proc.pid)
    body = form("whisper", audio(size, seed=9))
    answer, _ = send_until_answered(
        raw_gateway.port,
        upload_head(RAW_PATH, len(body), new_request_id("big")),
        pieces_of(body, 1024 * 1024),
        pause=0,
    )
    growth = _peak_kib(raw_gateway.proc.pid) - before
    assert answer.status == 200, answer
    assert json.loads(answer.body)["bytes"] == len(body)
    print(f"\npeak RSS growth for a {size >> 20} MiB upload: {growth} KiB")
    assert growth * 1024 < size / 4, f"peak RSS grew by {growth} KiB"


def _peak_kib(pid: int) -> int:
    """VmHWM: the process's peak resident set, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# -- the openai SDK, through aigw to the Azure mock -------------------------------------


def classic_route(name: str, deployment: str, *, limit: int | None = None) -> str:
    path = f"/openai/deployments/{name}/audio/transcriptions"
    key = MockProcess.api_key
    return transcription_route(
        name, path, key=key, instance="testresource", deployment=deployment, limit=limit
    )


@pytest.fixture(scope="module")
def sdk_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess
) -> Iterator[GatewayProcess]:
    files = {
        "whisper.yaml": classic_route("whisper", "whisper"),
        "whisper-small.yaml": classic_route("whisper-small", "whisper", limit=SMALL_LIMIT),
        # v1: the body's model names the route; the target's deployment goes upstream.
        "whisper-v1.yaml": model_route_file(
            "whisper-v1",
            ["whisper-v1"],
            ["whisper"],
            key=MockProcess.api_key,
            instance="testresource",
        ),
    }
    conf = tmp_path_factory.mktemp("upload-sdk")
    with serve_routes(conf, files, "--azure-base-url", mock.url) as gateway:
        yield gateway


FILE = audio(3 * 1024 * 1024 + 17, seed=11)


def _transcriptions(mock: MockProcess) -> list[dict[str, Any]]:
    return [r for r in mock.requests() if r["path"].endswith("/audio/transcriptions")]


def _check_recorded(mock: MockProcess, path: str, model: str) -> None:
    (record,) = _transcriptions(mock)
    assert record["path"] == path
    assert record["file_bytes"] == len(FILE)
    assert record["form"]["model"] == model
    assert record["headers"]["api-key"] == MockProcess.api_key  # the client's never crossed


def test_sdk_classic_transcription_sync(sdk_gateway: GatewayProcess, mock: MockProcess) -> None:
    request_id = new_request_id("sdk")
    with AzureOpenAI(
        api_key=CLIENT_KEY, azure_endpoint=sdk_gateway.url, api_version=API_VERSION
    ) as client:
        result = client.audio.transcriptions.create(
            model="whisper",
            file=("speech.wav", FILE, "audio/wav"),
            extra_headers={"x-request-id": request_id},
        )
    assert result.text.startswith("I am whisper")
    _check_recorded(mock, "/openai/deployments/whisper/audio/transcriptions", "whisper")
    line = sdk_gateway.access_log(request_id)
    assert line["status"] == 200 and line["route"] == "whisper"
    assert line["bytes_in"] > len(FILE)


async def test_sdk_classic_transcription_async(
    sdk_gateway: GatewayProcess, mock: MockProcess
) -> None:
    async with AsyncAzureOpenAI(
        api_key=CLIENT_KEY, azure_endpoint=sdk_gateway.url, api_version=API_VERSION
    ) as client:
        result = await client.audio.transcriptions.create(
            model="whisper", file=("speech.wav", FILE, "audio/wav")
        )
    assert result.text.startswith("I am whisper")
    _check_recorded(mock, "/openai/deployments/whisper/audio/transcriptions", "whisper")


def test_sdk_v1_transcription_sync(sdk_gateway: GatewayProcess, mock: MockProcess) -> None:
    with OpenAI(api_key=CLIENT_KEY, base_url=f"{sdk_gateway.url}/openai/v1/") as client:
        result = client.audio.transcriptions.create(
            model="whisper-v1", file=("speech.wav", FILE, "audio/wav")
        )
    assert result.text.startswith("I am whisper")
    # The form's model now names the target's deployment.
    _check_recorded(mock, "/openai/v1/audio/transcriptions", "whisper")


async def test_sdk_v1_transcription_async(sdk_gateway: GatewayProcess, mock: MockProcess) -> None:
    async with AsyncOpenAI(api_key=CLIENT_KEY, base_url=f"{sdk_gateway.url}/openai/v1/") as client:
        result = await client.audio.transcriptions.create(
            model="whisper-v1", file=("speech.wav", FILE, "audio/wav")
        )
    assert result.text.startswith("I am whisper")
    _check_recorded(mock, "/openai/v1/audio/transcriptions", "whisper")


def test_sdk_oversized_upload_is_a_413_and_never_reaches_azure(
    sdk_gateway: GatewayProcess, mock: MockProcess
) -> None:
    with (
        AzureOpenAI(
            api_key=CLIENT_KEY,
            azure_endpoint=sdk_gateway.url,
            api_version=API_VERSION,
            max_retries=0,
        ) as client,
        pytest.raises(openai.APIStatusError) as info,
    ):
        client.audio.transcriptions.create(
            model="whisper-small", file=("speech.wav", FILE, "audio/wav")
        )
    assert info.value.status_code == 413
    assert info.value.code == "request_too_large"
    assert _transcriptions(mock) == []


def test_sdk_upload_does_not_grow_the_gateway_by_the_file(
    sdk_gateway: GatewayProcess, mock: MockProcess
) -> None:
    # Measured: a fresh aigw's peak grows ~2.5 MiB with its first large upload
    # (allocator arenas for the pieces), whatever the file's size (5, 20 or 80 MiB).
    big = audio(24 * 1024 * 1024, seed=12)
    with AzureOpenAI(
        api_key=CLIENT_KEY, azure_endpoint=sdk_gateway.url, api_version=API_VERSION
    ) as client:
        client.audio.transcriptions.create(model="whisper", file=("a.wav", FILE, "audio/wav"))
        before = _peak_kib(sdk_gateway.proc.pid)
        result = client.audio.transcriptions.create(
            model="whisper", file=("speech.wav", big, "audio/wav")
        )
    growth = _peak_kib(sdk_gateway.proc.pid) - before
    assert result.text.startswith("I am whisper")
    assert _transcriptions(mock)[-1]["file_bytes"] == len(big)
    assert growth * 1024 < len(big) / 4, f"peak RSS grew by {growth} KiB"
