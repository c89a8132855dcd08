"""Upstream stand-in for the attack scenario: normal answers, and the hostile sizes.

    python bench/attack_upstream.py --port-file FILE [--huge-body-mib 240]
        [--huge-event-mib 64] [--long-stream-events 16384]

A plain asyncio HTTP/1.1 keep-alive server on 127.0.0.1 (uvloop when importable)
that answers every request by the deployment named in its path
(``/openai/deployments/{name}/...``):

* ``long-stream``: a chat stream of ``--long-stream-events`` token events (the
  mock's own event shape, about 7 MiB at the default), written as fast as the
  reader takes them: a long completion, longer than any socket buffer, for the
  readers that stop reading;
* ``huge-body``: a non-streaming chat completion whose JSON body is exactly
  ``--huge-body-mib`` MiB (one giant ``content`` string), with Content-Length;
* ``huge-event``: a chat stream whose one token event is ``--huge-event-mib`` MiB,
  then the finish, usage and ``[DONE]`` events, as Azure frames a stream (chunked);
* anything else: the bundled mock's fixed chat-completion body (the normal client).

Large bodies are written 1 MiB at a time from one preallocated buffer, waiting
for the socket to drain, so the stand-in's own memory stays flat and the bytes
arrive as fast as the proxy reads them. The port is written to ``--port-file``
once the server listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from aigw.testing.azure_mock import wire

MiB = 1024 * 1024
MODEL = "gpt-4o-2024-11-20"
_CREATED, _ID = b"1700000000", b"chatcmpl-attack"
_PIECE = b"x" * MiB  # filler; JSON- and SSE-safe

_JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _chunk(data: bytes | memoryview) -> list[bytes | memoryview]:
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def _events(tokens: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(role event, one token event, finish event, usage event) in the mock's shapes."""
    plan = wire.stream_plan("chat", MODEL, 12, tokens, "stop", True)
    rendered = [event.render(_CREATED, _ID) for event in plan.events]
    # Mock order: [prompt filter], role, token..., finish, usage.
    return rendered[1], rendered[2], rendered[-2], rendered[-1]


class Answers:
    """The bytes of every answer, built once at start-up."""

    def __init__(self, huge_body_mib: int, huge_event_mib: int, long_stream_events: int) -> None:
        self.small = wire.chat_body(MODEL, 12, 8, "stop").render(_CREATED, _ID)
        self.role, self.token, self.finish, self.usage = _events(8)
        self.long_stream_events = long_stream_events
        self.huge_body = huge_body_mib * MiB
        self.huge_event = huge_event_mib * MiB
        # A chat completion whose message content is padding up to the exact size.
        self.body_prefix = (
            b'{"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant",'
            b'"content":"'
        )
        self.body_suffix = (
            b'"}}],"created":1700000000,"id":"chatcmpl-attack","model":"' + MODEL.encode() + b'",'
            b'"object":"chat.completion","usage":{"completion_tokens":8,"prompt_tokens":12,'
            b'"total_tokens":20}}'
        )
        self.event_prefix = b'data: {"choices":[{"delta":{"content":"'
        self.event_suffix = (
            b'"},"finish_reason":null,"index":0}],"created":1700000000,'
            b'"id":"chatcmpl-attack","model":"' + MODEL.encode() + b'",'
            b'"object":"chat.completion.chunk"}\n\n'
        )


async def _padding(writer: asyncio.StreamWriter, size: int, *, chunked: bool) -> None:
    view = memoryview(_PIECE)
    while size > 0:
        piece = view[: min(size, MiB)]
        if chunked:
            writer.writelines(_chunk(piece))
        else:
            writer.write(piece)
        size -= len(piece)
        await writer.drain()


async def _huge_body(writer: asyncio.StreamWriter, answers: Answers) -> None:
    padding = answers.huge_body - len(answers.body_prefix) - len(answers.body_suffix)
    writer.write(_JSON_HEAD % answers.huge_body + answers.body_prefix)
    await _padding(writer, padding, chunked=False)
    writer.write(answers.body_suffix)


async def _huge_event(writer: asyncio.StreamWriter, answers: Answers) -> None:
    padding = answers.huge_event - len(answers.event_prefix) - len(answers.event_suffix)
    writer.write(_SSE_HEAD)
    writer.writelines(_chunk(answers.role) + _chunk(answers.event_prefix))
    await _padding(writer, padding, chunked=True)
    tail = answers.event_suffix + answers.finish + answers.usage + wire.DONE_EVENT
    writer.writelines([*_chunk(tail), b"0\r\n\r\n"])


async def _long_stream(writer: asyncio.StreamWriter, answers: Answers) -> None:
    writer.write(_SSE_HEAD)
    writer.writelines(_chunk(answers.role))
    # 64 events per chunk and per drain: the pace of a fast model, bounded by the reader.
    batch = _chunk(answers.token * 64)
    for _ in range(answers.long_stream_events // 64):
        writer.writelines(batch)
        await writer.drain()
    tail = answers.finish + answers.usage + wire.DONE_EVENT
    writer.writelines([*_chunk(tail), b"0\r\n\r\n"])


async def _serve(
    answers: Answers, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    with contextlib.suppress(
        ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError
    ):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            path = head.split(b" ", 2)[1]
            if b"/deployments/huge-body/" in path:
                await _huge_body(writer, answers)
            elif b"/deployments/huge-event/" in path:
                await _huge_event(writer, answers)
            elif b"/deployments/long-stream/" in path:
                await _long_stream(writer, answers)
            else:
                writer.write(_JSON_HEAD % len(answers.small) + answers.small)
            await writer.drain()
    writer.close()


async def _main(args: argparse.Namespace) -> None:
    answers = Answers(args.huge_body_mib, args.huge_event_mib, args.long_stream_events)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve(answers, reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.rename(args.port_file)  # the reader never sees a half-written file
    async with server:
        await server.serve_forever()


def main() -> None:
    """Parses the command line and serves until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--huge-body-mib", type=int, default=240)
    parser.add_argument("--huge-event-mib", type=int, default=64)
    parser.add_argument("--long-stream-events", type=int, default=16384)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))


if __name__ == "__main__":
    main()
