"""HTTP/1.1 on the upstream side: request heads out, the rules llhttp leaves to aigw in.

Response bytes are parsed by llhttp (through ``httptools``, in
``aigw.upstream.connection``): the status line, header grammar (token names,
no control characters in values, no obsolete line folding, CRLF line ends),
``Content-Length`` syntax and duplicates, ``Content-Length`` together with
``Transfer-Encoding``, and chunk framing are refused there, in C, as bytes
arrive. This module holds what is left, pure and testable on its own:

* ``encode_request``: the request head aigw sends (``encode_stream_head`` for a
  body sent as it arrives);
* ``read_head``: the fields of a head llhttp has accepted, plus the checks
  llhttp does not make in its default (strict) mode: the HTTP version is 1.0
  or 1.1, the status is in 100-599, and ``Transfer-Encoding`` is exactly one
  ``chunked`` (``gzip, chunked`` would relay compressed bytes as JSON;
  ``chunked, chunked`` would leak chunk framing into the body).

Exception tree: ``ProtocolError`` (the upstream broke HTTP/1.1; its messages
describe the fault and never quote a header value).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "MAX_HEAD_BYTES",
    "Framing",
    "ProtocolError",
    "ResponseHead",
    "check_status_line",
    "encode_request",
    "encode_stream_head",
    "read_head",
]

MAX_HEAD_BYTES = 64 * 1024
"""Largest response head (status line + headers, interim heads included) accepted.

Azure's are ~1.5 KiB."""

_VERSIONS = (b"HTTP/1.1 ", b"HTTP/1.0 ")


class ProtocolError(Exception):
    """The upstream broke HTTP/1.1 framing; the connection cannot be trusted further."""


class Framing(enum.Enum):
    """How the end of a response body is found."""

    NONE = "no body"
    """HEAD, 204 and 304 responses: the head is the whole response."""
    LENGTH = "Content-Length"
    CHUNKED = "chunked"
    CLOSE = "until close"
    """Neither length nor chunked: the body ends when the upstream closes."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response status line and header block.

    Attributes:
        status: The status code (200-599; interim 1xx heads are skipped).
        reason: The reason phrase (informational only).
        headers: Every header in arrival order, names as sent, values with
            surrounding whitespace removed.
        keep_alive: The upstream allows another request on the connection.
        content_type: ``Content-Type`` (empty when absent).
        framing: How the body ends.
        content_length: The body length: the announced one (``LENGTH``), 0
            (``NONE``), or None (chunked or until close).
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    keep_alive: bool
    content_type: str
    framing: Framing
    content_length: int | None

    def get(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or None."""
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None


def encode_request(
    method: str, target: str, host: str, headers: list[tuple[str, str]], body: bytes
) -> bytes:
    """Serialises a request head (and body) ready for ``transport.write``.

    Raises:
        ProtocolError: a header name or value holds a line break (which would
            let it smuggle a second header or request).
    """
    framing = None
    if body or method in ("POST", "PUT", "PATCH"):
        framing = f"Content-Length: {len(body)}\r\n"
    encoded = _encode_head(method, target, host, headers, framing)
    return encoded + body if body else encoded


def encode_stream_head(
    method: str, target: str, host: str, headers: list[tuple[str, str]], length: int | None
) -> bytes:
    """Serialises the head of a request whose body follows as a stream.

    Args:
        length: The body's size when known (sent as ``Content-Length``); None
            announces ``Transfer-Encoding: chunked`` and the body is then framed
            in chunks by the sender.

    Raises:
        ProtocolError: a header name or value holds a line break.
    """
    framing = (
        "Transfer-Encoding: chunked\r\n" if length is None else f"Content-Length: {length}\r\n"
    )
    return _encode_head(method, target, host, headers, framing)


def _encode_head(
    method: str, target: str, host: str, headers: list[tuple[str, str]], framing: str | None
) -> bytes:
    """The request line, ``Host``, *headers* and the *framing* line, checked for smuggled
    line breaks."""
    parts = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n")
    if framing is not None:
        parts.append(framing)
    parts.append("\r\n")
    head = "".join(parts)
    # PERF: one C-speed count over the whole head instead of two checks per
    # header: exactly one CR and one LF per line means no value carried its own.
    lines = len(parts) + 1  # the request line and Host share parts[0]
    if head.count("\n") != lines or head.count("\r") != lines:
        raise ProtocolError("a header name or value contains a line break")
    # surrogateescape gives back the exact bytes aiohttp's server decoded.
    return head.encode("utf-8", "surrogateescape")


def check_status_line(head: bytes | bytearray, start: int, status: int) -> None:
    """Refuses what llhttp accepts in a status line but aigw does not.

    Args:
        head: Bytes holding the head, as received.
        start: Where its status line starts in *head*.
        status: The code llhttp read from it.

    Raises:
        ProtocolError: the version is not HTTP/1.0 or 1.1 (llhttp also takes
            0.9 and 2.0), or the status is outside 100-599 (llhttp takes any
            three digits).
    """
    if not head.startswith(_VERSIONS, start):
        raise ProtocolError("the status line is not HTTP/1.0 or HTTP/1.1")
    if not 100 <= status <= 599:
        raise ProtocolError(f"status code {status} is not in 100-599")


def read_head(
    block: bytes | bytearray, status: int, *, keep_alive: bool, head_request: bool
) -> ResponseHead:
    """The fields of a final (status >= 200) response head that llhttp accepted.

    Args:
        block: The status line and header lines, CRLF separated, without the
            blank line that ends them. llhttp has already checked their
            grammar, so plain splitting is exact here.
        status: The status code llhttp read.
        keep_alive: llhttp's keep-alive verdict (version, ``Connection``,
            and whether the body is delimited by the close).
        head_request: The request was HEAD (the response then has no body).

    Raises:
        ProtocolError: the status line is refused (see ``check_status_line``)
            or ``Transfer-Encoding`` is anything but exactly one ``chunked``.
    """
    check_status_line(block, 0, status)
    lines = block.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    transfer_encoding: list[str] = []
    content_type = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        value = value.strip(" \t")
        headers.append((name, value))
        # PERF: only three names matter for framing; their lengths rule out
        # nearly every other header before any lower-casing.
        size = len(name)
        if size == 12 or size == 14 or size == 17:
            lower = name.lower()
            if lower == "content-type":
                content_type = content_type or value
            elif lower == "content-length":
                content_length = int(value)  # llhttp checked: digits, no overflow
            elif lower == "transfer-encoding":
                transfer_encoding.extend(value.split(","))
    if transfer_encoding:
        # RFC 9112 6.1: chunked must be last and only once. Any other coding
        # would be relayed as if it were the body itself (aigw decodes none),
        # and a body not ending in chunked runs until the close.
        if len(transfer_encoding) != 1 or transfer_encoding[0].strip(" \t").lower() != "chunked":
            raise ProtocolError("Transfer-Encoding is not exactly one chunked coding")
        framing = Framing.CHUNKED
        if lines[0].startswith("HTTP/1.0"):
            # RFC 9112 6.1: HTTP/1.0 framing with Transfer-Encoding is faulty;
            # never trust the connection after it (llhttp would, if asked to
            # keep it alive).
            keep_alive = False
    elif content_length is not None:
        framing = Framing.LENGTH
    else:
        framing = Framing.CLOSE
    if head_request or status == 204 or status == 304:
        framing = Framing.NONE
        content_length = 0
    elif framing is not Framing.LENGTH:
        content_length = None
    status_line = lines[0]
    return ResponseHead(
        status=status,
        reason=status_line[13:],
        headers=headers,
        keep_alive=keep_alive,
        content_type=content_type,
        framing=framing,
        content_length=content_length,
    )
