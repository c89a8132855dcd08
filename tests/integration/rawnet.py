"""Hostile-network tools: scripted raw upstreams, raw-socket clients, a process's RSS.

The SDK and the mock speak well-formed HTTP; attacks do not. A
:class:`ScriptedUpstream` is an asyncio TCP server (in its own thread, since
the gateway under test is a separate process and most tests are synchronous)
whose every connection runs a script that reads and writes exactly the bytes a
case needs. :func:`raw_request` and :class:`RawResponse` are the client side:
a plain socket, bytes out, the answer parsed by llhttp (``httptools``) so a
test sees framing exactly as a strict client would.

Also the pieces the hostile-network tests share: request bytes (:func:`post`,
:func:`post_head`, :func:`case_request`), canned upstream answers
(:data:`COMPLETION_ANSWER`, :func:`always_answer`, :func:`for_each_request`), the
error object of an aigw answer (:func:`error_of`) and a process's peak RSS
(:class:`PeakRss`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

from tests.integration.harness import GatewayProcess

__all__ = [
    "CHAT_TARGET",
    "COMPLETION",
    "COMPLETION_ANSWER",
    "Answer",
    "PeakRss",
    "RawResponse",
    "ScriptedUpstream",
    "always_answer",
    "case_request",
    "chat_body",
    "chunk",
    "content_length",
    "error_of",
    "for_each_request",
    "gateway_to",
    "new_request_id",
    "parse_response",
    "post",
    "post_head",
    "raw_request",
    "read_head_of_request",
    "read_response",
    "rss_kib",
]

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""What one upstream connection does: read the request, write the answer's bytes."""


class ScriptedUpstream:
    """A TCP server on 127.0.0.1 whose connections each run *script*.

    Use as a context manager. ``connections`` counts accepted connections;
    ``script`` may be replaced between requests.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.open_connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        # On 3.11 asyncio holds a connection's script task only weakly: a
        # script waiting on a future nothing else references (an Event it
        # made) would be garbage-collected mid-test with its socket open.
        self._scripts: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._scripts.add(task)
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            self._scripts.discard(task)
            writer.close()

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            # Until none are left: a connection accepted just before the close
            # starts its script a loop turn later. Each cancelled script runs
            # its finally (closing its writer) before the loop stops, so no
            # transport is left for the garbage collector to warn about.
            while tasks := asyncio.all_tasks() - {asyncio.current_task()}:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def read_head_of_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Reads one request head and its Content-Length body; returns (head, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = content_length(head)
    body = await reader.readexactly(length) if length else b""
    return head, body


def content_length(head: bytes) -> int:
    """The Content-Length a request head declares (0 when it declares none)."""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


Answer = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]
"""What an upstream writes for one request, given the request's head and body."""


def for_each_request(answer: Answer) -> Script:
    """A script that reads every request on its connection and lets *answer* write the response.

    It runs until the gateway closes the connection (the pool keeps it alive between requests).
    """

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_head_of_request(reader)
            await answer(head, body, writer)
            await writer.drain()

    return script


def always_answer(response: bytes) -> Script:
    """A script that answers every request on its connection with the same *response* bytes."""

    async def answer(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(response)

    return for_each_request(answer)


COMPLETION = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
"""A small chat completion, as Azure's body for a non-stream request."""

COMPLETION_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    % len(COMPLETION)
) + COMPLETION
"""The whole upstream response carrying :data:`COMPLETION`."""


def chunk(data: bytes) -> bytes:
    """*data* as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class RawResponse:
    """One response as a strict client parsed it."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    """The message ended by its own framing (not by the connection closing early)."""

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)


class _Collector:
    def __init__(self, response: RawResponse) -> None:
        self.response = response

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.response.body += body

    def on_message_complete(self) -> None:
        self.response.complete = True


def read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse:
    """Reads one response from *sock* (the socket stays usable for the next one).

    Bytes past the end of the response stay unread only if they arrive in a
    later segment; tests that pipeline should read one response at a time.
    """
    response = RawResponse()
    parser = httptools.HttpResponseParser(_Collector(response))
    deadline = time.monotonic() + timeout
    while not response.complete:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete response in time")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            with contextlib.suppress(httptools.HttpParserError):
                parser.feed_data(b"")
            break
        parser.feed_data(data)
    response.status = parser.get_status_code()
    return response


def parse_response(data: bytes) -> RawResponse:
    """Parses the bytes a client received on a connection that has since closed.

    For reads a test had to do itself (to act between the first bytes and the rest):
    ``complete`` is False when the bytes end before the message's own framing does.
    """
    response = RawResponse()
    parser = httptools.HttpResponseParser(_Collector(response))
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(data)
        parser.feed_data(b"")
    response.status = parser.get_status_code()
    return response


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> RawResponse:
    """Sends *data* on a fresh connection and reads one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout)


def rss_kib(pid: int) -> int:
    """Resident set size of process *pid*, in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class PeakRss:
    """Samples a process's RSS every 5 ms in a thread while in use; ``peak`` is the highest (KiB).

    Sampled once more on exit, so a peak at the very end is not missed.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_kib(self.pid))


def error_of(response: RawResponse) -> dict[str, Any]:
    """The error object of a response aigw answered itself, checked to be OpenAI-style.

    JSON, with exactly ``code``, ``message``, ``param`` and ``type``.
    """
    assert response.header("content-type") == "application/json", response
    error: dict[str, Any] = json.loads(response.body)["error"]
    assert set(error) == {"code", "message", "param", "type"}, error
    return error


CHAT_ROUTE = """route:
  name: raw
  paths: [/openai/deployments/raw/chat/completions]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:{config}
      targets:
        - route_type: {route_type}
          auth: {{header_name: api-key, header_value: upstream-secret-key}}
          read_timeout: {read_timeout}
          model:
            provider: azure
            name: raw
            options:
              azure_instance: raw
              azure_deployment_id: raw
              upstream_url: {upstream}/openai/deployments/raw/chat/completions
"""

CHAT_PATH = "/openai/deployments/raw/chat/completions"
"""The path :func:`gateway_to` serves."""

CHAT_TARGET = f"{CHAT_PATH}?api-version=2024-10-21"
"""The request-target of a chat request to :func:`gateway_to`'s route."""


def new_request_id(prefix: str = "test") -> str:
    """A unique ``x-request-id``, to find one request's access-log line."""
    return f"{prefix}-{uuid.uuid4().hex}"


def chat_body(**fields: object) -> bytes:
    """A chat request body: one user message (``hi``), plus *fields*."""
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def post_head(
    length: int | None, *, target: str = CHAT_TARGET, request_id: str = "", headers: str = ""
) -> bytes:
    """A POST request head for a JSON body of *length* bytes; ``length=None`` makes it chunked.

    *request_id*, if any, is sent as ``x-request-id``; *headers* are more header
    lines, each ending in CRLF.
    """
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    rid = f"x-request-id: {request_id}\r\n" if request_id else ""
    return (
        f"POST {target} HTTP/1.1\r\nHost: aigw.test\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n{rid}{headers}\r\n"
    ).encode()


def post(
    body: bytes = b"{}", *, target: str = CHAT_TARGET, request_id: str = "", headers: str = ""
) -> bytes:
    """A whole POST request with a Content-Length *body*, as raw bytes (see :func:`post_head`)."""
    return post_head(len(body), target=target, request_id=request_id, headers=headers) + body


def case_request(
    case: str, request_id: str, *, target: str = CHAT_TARGET, **fields: object
) -> bytes:
    """A chat request whose ``user`` field names the scripted upstream's *case* to answer with.

    *fields* are added to the body (``stream=True``, ...).
    """
    return post(chat_body(user=case, **fields), target=target, request_id=request_id)


@contextlib.contextmanager
def gateway_to(
    upstream: str,
    conf_dir: Path,
    *extra: str,
    route_type: str = "llm/v1/chat",
    read_timeout: int = 5000,
    config: str = "",
) -> Iterator[GatewayProcess]:
    """An aigw process with one route (``CHAT_PATH``) forwarding to *upstream*."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "raw.yaml").write_text(
        CHAT_ROUTE.format(
            upstream=upstream, route_type=route_type, read_timeout=read_timeout, config=config
        )
    )
    process = GatewayProcess(conf_dir, *extra)
    try:
        yield process
    finally:
        process.close()
