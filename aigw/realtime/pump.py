"""The two directions of a realtime session: frames from one socket to the other.

Each pump reads one side and writes to the other, frame by frame, as they
come: text and binary frames are relayed as bytes (never decoded and
re-encoded), and each write is awaited, so a side that stops reading stops
the pump that feeds it, which stops reading its source (back-pressure all the
way to the sender's TCP window).

A pump ends when its source does, and says how in an :class:`Ending`; the
relay then closes both sockets with the codes the ending names. Pings and
pongs never reach a pump: each side answers its own (aiohttp's autoping).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from aigw.realtime.stats import SessionStats
from aigw.realtime.usage import SessionUsage
from aigw.upstream.websocket import UpstreamSocket

__all__ = [
    "CLIENT_GONE",
    "UPSTREAM_GONE",
    "ClientSocket",
    "Ending",
    "client_to_upstream",
    "sendable",
    "upstream_to_client",
]

ClientSocket: TypeAlias = web.WebSocketResponse[Literal[False]]
"""The client's WebSocket, its text frames read as bytes (never decoded)."""

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_ERROR = WSMsgType.ERROR


class Ending(NamedTuple):
    """How a session ended, and how each side is to be closed.

    Attributes:
        closed_by: ``client``, ``upstream`` or ``gateway`` (a bound, or a broken frame).
        code: The close code the session ended with, for the log (None: the closer
            vanished without a close frame).
        to_client: The close code to send the client (None: it is gone).
        to_upstream: The close code to send the upstream (None: it is gone).
        reason: The close reason passed on.
    """

    closed_by: str
    code: int | None
    to_client: int | None
    to_upstream: int | None
    reason: bytes = b""


CLIENT_GONE = Ending("client", None, None, WSCloseCode.GOING_AWAY)
"""The client's connection dropped without a close frame: the upstream is told it went away."""

UPSTREAM_GONE = Ending(
    "upstream", None, WSCloseCode.INTERNAL_ERROR, None, b"the upstream connection was lost"
)
"""The upstream's connection dropped without a close frame: the client gets 1011."""


def sendable(code: int) -> int:
    """*code* if a close frame may carry it, else 1000 (RFC 6455 §7.4: 1005, 1006 and
    1015 only ever describe a closure, and unassigned codes are refused by peers)."""
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return WSCloseCode.OK


def _reason(extra: object) -> bytes:
    # A close frame's payload is at most 125 bytes, 2 of them the code.
    return extra.encode()[:123] if isinstance(extra, str) else b""


async def client_to_upstream(
    client: ClientSocket, upstream: UpstreamSocket, stats: SessionStats
) -> Ending:
    """Relays the client's frames to the upstream until one side ends."""
    # PERF: runs once per frame; everything it calls is bound once.
    receive, send = client.receive, upstream.send_frame
    while True:
        message = await receive()
        kind = message.type
        if kind is _TEXT or kind is _BINARY:
            data: bytes = message.data
            try:
                await send(data, kind)
            except ConnectionResetError:
                return UPSTREAM_GONE
            stats.frames_in += 1
            stats.bytes_in += len(data)
            continue
        if kind is _CLOSE:
            code = sendable(message.data)
            return Ending("client", message.data, code, code, _reason(message.extra))
        if kind is _ERROR and isinstance(message.data, WebSocketError):
            # A frame over the bound (1009) or a protocol error: aiohttp has
            # already closed the client's socket with that code.
            return Ending("gateway", message.data.code, None, WSCloseCode.GOING_AWAY)
        return CLIENT_GONE


async def upstream_to_client(
    upstream: UpstreamSocket,
    client: ClientSocket,
    stats: SessionStats,
    usage: SessionUsage,
) -> Ending:
    """Relays the upstream's frames to the client, reading usage, until one side ends."""
    receive, send, observe = upstream.receive, client.send_frame, usage.observe
    while True:
        message = await receive()
        kind = message.type
        if kind is _TEXT or kind is _BINARY:
            data: bytes = message.data
            if kind is _TEXT:
                observe(data)
            try:
                await send(data, kind)
            except ConnectionResetError:
                return CLIENT_GONE
            stats.frames_out += 1
            stats.bytes_out += len(data)
            continue
        if kind is _CLOSE:
            code = sendable(message.data)
            return Ending("upstream", message.data, code, code, _reason(message.extra))
        if kind is _ERROR and isinstance(message.data, WebSocketError):
            # aiohttp closed the upstream with the code; the client learns why.
            code = sendable(message.data.code)
            return Ending("gateway", message.data.code, code, None, b"upstream frame refused")
        return UPSTREAM_GONE
