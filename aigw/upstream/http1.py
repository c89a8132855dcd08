"""HTTP/1.1 on the upstream side: request heads out, response heads and bodies in.

Pure functions and one small decoder, no I/O: ``aigw.upstream.pool`` feeds them
bytes from the socket. Kept apart so the wire rules (RFC 9112) can be read and
tested on their own.

aigw only ever talks to one kind of peer here, an HTTP/1.1 origin such as
Azure's front door, and only ever sends requests it built itself, so the
parser is strict where leniency has caused request-smuggling bugs elsewhere:
obsolete line folding, conflicting ``Content-Length`` values and malformed
chunk sizes are errors, not guesses.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_HEAD_BYTES",
    "ChunkedDecoder",
    "ProtocolError",
    "ResponseHead",
    "encode_request",
    "parse_response_head",
]

MAX_HEAD_BYTES = 64 * 1024
"""Largest response head (status line + headers) accepted; Azure's are ~1.5 KiB."""

_MAX_CHUNK_LINE = 4096
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class ProtocolError(Exception):
    """The upstream broke HTTP/1.1 framing; the connection cannot be trusted further."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response status line and header block.

    Attributes:
        status: The status code.
        reason: The reason phrase (informational only).
        headers: Every header in arrival order, names as sent.
        content_length: The body length, or None when the body is chunked,
            absent or delimited by the connection closing.
        chunked: The body uses chunked transfer coding.
        keep_alive: The connection may carry another request afterwards.
        content_type: ``Content-Type`` (empty when absent).
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    content_type: str

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
    parts = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n")
    if body or method in ("POST", "PUT", "PATCH"):
        parts.append(f"Content-Length: {len(body)}\r\n")
    parts.append("\r\n")
    head = "".join(parts)
    # PERF: one C-speed count over the whole head instead of two checks per
    # header: exactly one CR and one LF per line means no value carried its own.
    lines = len(parts) + 1  # the request line and Host share parts[0]
    if head.count("\n") != lines or head.count("\r") != lines:
        raise ProtocolError("a header name or value contains a line break")
    # surrogateescape gives back the exact bytes aiohttp's server decoded.
    encoded = head.encode("utf-8", "surrogateescape")
    return encoded + body if body else encoded


def parse_response_head(data: bytes, *, head_request: bool = False) -> ResponseHead:
    """Parses a response head: *data* ends just before the blank line.

    Args:
        data: Status line and header lines, CRLF separated.
        head_request: The request was HEAD (the response then has no body).

    Raises:
        ProtocolError: the head is not valid HTTP/1.x.
    """
    # RFC 9112 5.5: a bare CR or LF (or NUL) inside a field is an error, not
    # a line break to guess at. Three C-speed scans over the whole head.
    breaks = data.count(b"\r\n")
    if data.count(b"\n") != breaks or data.count(b"\r") != breaks or b"\x00" in data:
        raise ProtocolError("bare CR, LF or NUL in the response head")
    lines = data.split(b"\r\n")
    status_line = lines[0]
    if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    minor = status_line[7:8]
    code = status_line[9:12]
    if minor not in (b"0", b"1") or status_line[8:9] != b" " or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    if len(status_line) > 12 and status_line[12:13] != b" ":
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    status = int(code)
    if status < 100:
        raise ProtocolError(f"status code {status} is not in 100-599")
    reason = status_line[13:].decode("latin-1")

    headers, content_length, transfer_encoding, connection, content_type = _scan_headers(lines[1:])
    tokens = {t.strip() for t in connection.split(",")}
    keep_alive = "close" not in tokens if minor == b"1" else "keep-alive" in tokens

    chunked = False
    if head_request or status < 200 or status in (204, 304):
        content_length = 0
    elif transfer_encoding is not None:
        codings = [c.strip().lower() for c in transfer_encoding.split(",")]
        # RFC 9112 6.3: Transfer-Encoding overrides Content-Length; a final
        # coding other than chunked means the body runs until the close.
        content_length = None
        if codings[-1] == "chunked":
            chunked = True
        else:
            keep_alive = False
        if minor == b"0":
            # RFC 9112 6.1: HTTP/1.0 framing with Transfer-Encoding is faulty;
            # never trust the connection after it.
            keep_alive = False
    elif content_length is None:
        keep_alive = False  # body delimited by the connection closing
    return ResponseHead(
        status=status,
        reason=reason,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        content_type=content_type,
    )


def _scan_headers(
    lines: list[bytes],
) -> tuple[list[tuple[str, str]], int | None, str | None, str, str]:
    """Header lines -> (headers, Content-Length, Transfer-Encoding, Connection, Content-Type)."""
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    transfer_encoding: str | None = None
    connection = ""
    content_type = ""
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
            raise ProtocolError(f"malformed header line: {line[:60]!r}")
        key = name.decode("latin-1")
        text = value.strip(b" \t").decode("latin-1")
        headers.append((key, text))
        lower = key.lower()
        if lower == "content-length":
            if not text.isdigit() or not text.isascii() or len(text) > 18:
                raise ProtocolError(f"invalid Content-Length: {text[:40]!r}")
            length = int(text)
            if content_length is not None and content_length != length:
                raise ProtocolError("conflicting Content-Length headers")
            content_length = length
        elif lower == "transfer-encoding":
            transfer_encoding = (
                f"{transfer_encoding}, {text}" if transfer_encoding is not None else text
            )
        elif lower == "connection":
            connection = f"{connection},{text.lower()}"
        elif lower == "content-type":
            content_type = text
    return headers, content_length, transfer_encoding, connection, content_type


def _one_whole_chunk(data: bytes) -> bytes | None:
    """The payload if *data* is exactly one complete non-empty chunk, else None.

    PERF: a stream delta usually arrives that way ("<hex>\r\n<data>\r\n"):
    one find and two slices instead of the decoder's general loop.
    """
    eol = data.find(b"\r\n", 0, 18)
    if eol <= 0 or data[:eol].strip(_HEX_DIGITS):
        return None
    size = int(data[:eol], 16)
    end = eol + 2 + size
    if size and len(data) == end + 2 and data.endswith(b"\r\n"):
        return data[eol + 2 : end]
    return None


class ChunkedDecoder:
    """Incremental decoder for a chunked body; bytes in, payload bytes out.

    ``feed`` may be given any split of the wire bytes (a chunk-size line cut
    in two, CRLF split across reads): whatever cannot be decoded yet is kept.
    Chunk extensions are ignored and trailer fields dropped (aigw relays
    neither).
    """

    __slots__ = ("_buffer", "_remaining", "_state", "done", "leftover")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self._buffer = b""
        self._state = self._SIZE
        self._remaining = 0
        self.done = False
        """The terminating zero-size chunk and the trailer section were read."""
        self.leftover = b""
        """Bytes received after the end of the body (a framing error if any)."""

    def feed(self, data: bytes) -> bytes:
        """Decodes what it can of *data*; returns the payload bytes found.

        Raises:
            ProtocolError: the framing is invalid.
        """
        if not self._buffer and self._state == self._SIZE:
            whole = _one_whole_chunk(data)
            if whole is not None:
                return whole
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        out: list[bytes] = []
        at = 0
        end = len(buffer)
        while at < end:
            state = self._state
            if state == self._DATA:
                take = min(self._remaining, end - at)
                out.append(buffer[at : at + take])
                at += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._DATA_END
            elif state == self._DATA_END:
                if end - at < 2:
                    break
                if buffer[at : at + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                at += 2
                self._state = self._SIZE
            else:
                eol = buffer.find(b"\r\n", at)
                if (eol if eol >= 0 else end) - at > _MAX_CHUNK_LINE:
                    raise ProtocolError("chunk-size or trailer line too long")
                if eol < 0:
                    break
                line = buffer[at:eol]
                at = eol + 2
                if state == self._SIZE:
                    self._start_chunk(line)
                elif not line:  # the empty line that ends the trailer section
                    self.done = True
                    self.leftover = buffer[at:]
                    return b"".join(out)
        self._buffer = buffer[at:]
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _start_chunk(self, line: bytes) -> None:
        size_text = line.split(b";", 1)[0].strip(b" \t")
        # int(..., 16) alone would accept "+1", "0x1" and "1_0".
        if not size_text or size_text.strip(_HEX_DIGITS) or len(size_text) > 16:
            raise ProtocolError(f"invalid chunk size: {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            self._state = self._TRAILER
        else:
            self._remaining = size
            self._state = self._DATA
