"""Sending a request body upstream as it arrives (``BodyStream``: multipart uploads).

The head has gone out already (``UpstreamConnection.start``); this sends the
pieces, framed by ``Content-Length`` (the stream's ``length``) or in chunks,
one at a time: the next piece is asked of the client only once the kernel
has taken the last one (``write_timeout`` bounds that wait), so a slow
upstream holds back the client, never aigw's memory.

The upstream may answer before the body is complete (a 413 or 401 it
decided from the head): sending stops there, the answer becomes the
response, and the connection is marked not reusable (the upstream is in the
middle of a request body it will not read).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from aigw.upstream.body_stream import BodyStream
from aigw.upstream.connection import UpstreamConnection
from aigw.upstream.http1 import ProtocolError

__all__ = ["send_stream"]

_LAST_CHUNK = b"0\r\n\r\n"
_CRLF = b"\r\n"


async def send_stream(
    conn: UpstreamConnection, body: BodyStream, write_timeout: float | None
) -> None:
    """Sends *body* on *conn*, whose request head was just written.

    Whatever happens, the body's iterator is closed before this returns (so
    a stream abandoned half-way stops waiting for its client at once).

    Raises:
        TimeoutError: The upstream did not take a piece within *write_timeout*.
        UpstreamDisconnected, ProtocolError: The connection failed, or the
            stream's pieces did not add up to its announced ``length``.
        GatewayError: The client's body broke a bound (413, 408), raised by
            the stream itself.
    """
    length = body.length
    sent = 0
    pieces = body.chunks()
    try:
        async for piece in pieces:
            if _answered(conn):
                # The upstream answered while the client's piece was awaited:
                # the rest of the body is not wanted.
                conn.reusable = False
                return
            if not piece:
                continue  # an empty chunk would end a chunked body
            sent += len(piece)
            if length is None:
                conn.send_more([b"%x\r\n" % len(piece), piece, _CRLF])
            elif sent <= length:
                conn.send_more([piece])
            else:
                raise _wrong_size(sent, length)
            if conn.writing_paused:
                await conn.send_rest(write_timeout)  # returns early if the upstream answers
            if _answered(conn) and (length is None or sent < length):
                conn.reusable = False  # answered early: ask the client for no more
                return
        if length is None:
            if _answered(conn):
                conn.reusable = False  # answered before the body's end was sent
                return
            conn.send_more([_LAST_CHUNK])
            if conn.writing_paused:
                await conn.send_rest(write_timeout)
        elif sent != length:
            raise _wrong_size(sent, length)
    finally:
        if isinstance(pieces, AsyncGenerator):
            await pieces.aclose()


def _answered(conn: UpstreamConnection) -> bool:
    """The upstream's response head has arrived (a function: it changes across awaits)."""
    return conn.head is not None


def _wrong_size(sent: int, length: int | None) -> ProtocolError:
    # A fault of the stream, not of the upstream; but the request's framing is
    # broken either way, so the connection is failed and never reused.
    return ProtocolError(f"the streamed request body was {sent} bytes, not the {length} announced")
