"""Wire-level tests for the upstream response parser and aigw.upstream.http1.

Responses are fed byte-exact to an ``UpstreamConnection`` (llhttp plus aigw's
own checks) over a recording stand-in transport: no socket, no event loop
turn, so every split of the bytes can be tried. What the client of the gateway
sees of the same faults is in tests/integration/test_hostile_upstream.py; the
socket side (timeouts, pooling, back-pressure) in test_upstream_pool.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import pytest

from aigw.upstream.connection import Origin, UpstreamConnection
from aigw.upstream.http1 import (
    MAX_HEAD_BYTES,
    Framing,
    ProtocolError,
    ResponseHead,
    encode_request,
    encode_stream_head,
)

_ORIGIN = Origin("http", "upstream.test", 80)


class _Transport:
    """Records what the connection does to its socket."""

    def __init__(self) -> None:
        self.written = b""
        self.aborted = False
        self.reading = True
        self.unsent = 0

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


@dataclass
class Received:
    """What one response fed to a connection came to."""

    head: ResponseHead | None
    body: bytes
    complete: bool
    error: BaseException | None
    reusable: bool
    """Would go back to the pool: complete, no fault, connection kept open."""

    @property
    def status(self) -> int:
        assert self.head is not None, self.error
        return self.head.status


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _connection(loop: asyncio.AbstractEventLoop) -> tuple[UpstreamConnection, _Transport]:
    conn = UpstreamConnection(_ORIGIN, loop)
    transport = _Transport()
    conn.connection_made(cast(asyncio.Transport, transport))
    return conn, transport


def _receive(
    conn: UpstreamConnection, pieces: Sequence[bytes], *, head_request: bool = False
) -> Received:
    conn.start(b"GET / HTTP/1.1\r\n\r\n", head_request=head_request)
    for piece in pieces:
        if conn.closed:
            break
        conn.data_received(piece)
    body = b"".join(conn._body_queue)
    conn._body_queue.clear()
    conn._buffered = 0
    error = conn._error
    complete = conn.body_done and error is None
    reusable = complete and conn.reusable and not conn.closed
    if reusable:
        conn.reset_for_reuse()
    return Received(conn.head, body, complete, error, reusable)


def feed(loop: asyncio.AbstractEventLoop, *pieces: bytes, head_request: bool = False) -> Received:
    """Feeds *pieces* (one ``data_received`` each) to a new connection."""
    conn, _ = _connection(loop)
    return _receive(conn, pieces, head_request=head_request)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def refused(received: Received, match: str = "") -> ProtocolError:
    """The response failed with a ProtocolError (matching *match*) and is not reusable."""
    assert isinstance(received.error, ProtocolError), received
    assert match in str(received.error), received.error
    assert not received.reusable
    return received.error


def refused_whole_and_bytewise(
    loop: asyncio.AbstractEventLoop, wire: bytes, *, chunked: bool = False
) -> None:
    """*wire* is refused whether it arrives in one read or one byte per read.

    With *chunked*, *wire* is the body after a chunked response head.
    """
    receive = chunked_body if chunked else feed
    refused(receive(loop, wire))
    refused(receive(loop, *bytewise(wire)))


def head_of(loop: asyncio.AbstractEventLoop, *lines: bytes, head_request: bool = False) -> Received:
    """Feeds a head (status line and header lines) with no body bytes after it."""
    return feed(loop, b"\r\n".join(lines) + b"\r\n\r\n", head_request=head_request)


# -- status line ---------------------------------------------------------------


def test_status_line_with_reason(loop: asyncio.AbstractEventLoop) -> None:
    got = head_of(loop, b"HTTP/1.1 404 Not Found Here", b"Content-Length: 0")
    assert got.head is not None
    assert got.head.status == 404
    assert got.head.reason == "Not Found Here"
    assert got.head.keep_alive is True
    assert got.head.framing is Framing.LENGTH
    assert got.head.content_length == 0
    assert got.complete and got.reusable


@pytest.mark.parametrize("line", [b"HTTP/1.1 200", b"HTTP/1.1 200 "])
def test_status_line_without_reason(loop: asyncio.AbstractEventLoop, line: bytes) -> None:
    got = feed(loop, line + b"\r\nContent-Length: 2\r\n\r\nok")
    assert got.head is not None
    assert got.head.status == 200
    assert got.head.reason == ""
    assert got.body == b"ok"
    assert got.reusable


def test_reason_phrase_is_latin1_text(loop: asyncio.AbstractEventLoop) -> None:
    got = head_of(loop, b"HTTP/1.1 200 \xe9t\xe9", b"Content-Length: 0")
    assert got.head is not None
    assert got.head.reason == "\xe9t\xe9"


def test_http11_is_keep_alive_by_default(loop: asyncio.AbstractEventLoop) -> None:
    assert head_of(loop, b"HTTP/1.1 200 OK", b"Content-Length: 0").reusable


def test_http10_is_not_keep_alive_by_default(loop: asyncio.AbstractEventLoop) -> None:
    got = feed(loop, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert got.status == 200
    assert got.body == b"ok"
    assert got.complete
    assert not got.reusable


@pytest.mark.parametrize("value", [b"keep-alive", b"Keep-Alive", b"foo, keep-alive"])
def test_http10_keep_alive_when_asked(loop: asyncio.AbstractEventLoop, value: bytes) -> None:
    got = feed(
        loop, b"HTTP/1.0 200 OK\r\nConnection: " + value + b"\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert got.body == b"abc"
    assert got.reusable


def test_http10_keep_alive_needs_a_length(loop: asyncio.AbstractEventLoop) -> None:
    # Without a length the body runs until the close: the connection cannot be reused.
    got = feed(loop, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nabc")
    assert got.head is not None
    assert got.head.framing is Framing.CLOSE
    assert got.head.keep_alive is False
    assert got.body == b"abc"
    assert not got.complete  # until the close


@pytest.mark.parametrize(
    "lines",
    [
        [b"Connection: close"],
        [b"Connection: Close"],
        [b"connection:CLOSE"],
        [b"Connection: keep-alive, close"],
        [b"Connection: upgrade", b"Connection: close"],
    ],
)
def test_http11_connection_close(loop: asyncio.AbstractEventLoop, lines: list[bytes]) -> None:
    got = feed(
        loop, b"\r\n".join([b"HTTP/1.1 200 OK", b"Content-Length: 1", *lines]) + b"\r\n\r\nx"
    )
    assert got.head is not None
    assert got.head.keep_alive is False
    assert got.body == b"x"
    assert got.complete
    assert not got.reusable


@pytest.mark.parametrize("value", [b"upgrade", b"closed", b"keep-alive", b"x-close"])
def test_http11_other_connection_tokens_keep_alive(
    loop: asyncio.AbstractEventLoop, value: bytes
) -> None:
    got = feed(loop, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: " + value + b"\r\n\r\nx")
    assert got.reusable


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"HTTP/1.1",
        b"HTTP/1.1 20",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 200OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 +20 OK",
        b"HTTP/1.1 2 0 OK",
        b"HTTP/1.1\t200 OK",
        b"HTTP/1.2 200 OK",
        b"HTTP/1.10 200 OK",
        b"HTTP/2 200 OK",
        b"HTTP/2.0 200 OK",  # llhttp accepts this version: aigw does not
        b"HTTP/0.9 200 OK",  # ... nor this one
        b"http/1.1 200 OK",
        b"ICY 200 OK",
        b" HTTP/1.1 200 OK",
        b"HTTP/1.1 \xd9\xa2\xd9\xa0\xd9\xa0 OK",  # Arabic-Indic digits
    ],
)
def test_invalid_status_lines(loop: asyncio.AbstractEventLoop, line: bytes) -> None:
    refused(feed(loop, line + b"\r\nContent-Length: 0\r\n\r\n"))


@pytest.mark.parametrize("code", [b"000", b"099", b"600", b"999"])
def test_status_codes_outside_100_599_are_refused(
    loop: asyncio.AbstractEventLoop, code: bytes
) -> None:
    error = refused(feed(loop, b"HTTP/1.1 " + code + b" X\r\nContent-Length: 0\r\n\r\n"))
    assert "not in 100-599" in str(error)


@pytest.mark.parametrize("code", [b"100", b"199", b"200", b"599"])
def test_status_codes_at_the_edges_are_accepted(
    loop: asyncio.AbstractEventLoop, code: bytes
) -> None:
    # An interim one is skipped: the final response follows it.
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if code < b"200" else b""
    got = feed(loop, b"HTTP/1.1 " + code + b" X\r\nContent-Length: 0\r\n\r\n" + final)
    assert got.status == (200 if code < b"200" else int(code))
    assert got.reusable


def test_a_bare_lf_head_fails_at_its_first_line(loop: asyncio.AbstractEventLoop) -> None:
    # Refused as soon as the first line ends, not when a blank line that
    # will never come (CRLF CRLF) would have: no read timeout to wait out.
    conn, transport = _connection(loop)
    got = _receive(conn, [b"HTTP/1.1 200 OK\n"])
    refused(got)
    assert transport.aborted


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\n\nok",
        b"HTTP/1.1 200 OK\rContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_bare_cr_or_lf_in_the_head_is_refused(loop: asyncio.AbstractEventLoop, wire: bytes) -> None:
    refused_whole_and_bytewise(loop, wire)


# -- header fields -------------------------------------------------------------


def test_headers_keep_order_names_and_trimmed_values(loop: asyncio.AbstractEventLoop) -> None:
    got = head_of(
        loop,
        b"HTTP/1.1 200 OK",
        b"X-B:  two  ",
        b"x-a:\tone\t",
        b"Content-Type: application/json",
        b"X-B: again",
        b"Empty:",
        b"Content-Length: 0",
    )
    head = got.head
    assert head is not None
    assert head.headers == [
        ("X-B", "two"),
        ("x-a", "one"),
        ("Content-Type", "application/json"),
        ("X-B", "again"),
        ("Empty", ""),
        ("Content-Length", "0"),
    ]
    assert head.get("x-b") == "two"  # the first of two
    assert head.get("X-A") == "one"
    assert head.get("missing") is None
    assert head.content_type == "application/json"


def test_no_content_type_is_empty_string(loop: asyncio.AbstractEventLoop) -> None:
    head = head_of(loop, b"HTTP/1.1 200 OK", b"Content-Length: 0").head
    assert head is not None
    assert head.content_type == ""


def test_header_values_with_colons_and_latin1_bytes(loop: asyncio.AbstractEventLoop) -> None:
    head = head_of(
        loop,
        b"HTTP/1.1 200 OK",
        b"Link: <http://a:1/x>; rel=a",
        b"X: caf\xe9",
        b"Content-Length: 0",
    ).head
    assert head is not None
    assert head.get("link") == "<http://a:1/x>; rel=a"
    assert head.get("x") == "caf\xe9"


@pytest.mark.parametrize("fold", [b" folded", b"\tfolded", b" X-Other: 1"])
def test_obs_fold_is_refused(loop: asyncio.AbstractEventLoop, fold: bytes) -> None:
    refused(head_of(loop, b"HTTP/1.1 200 OK", b"X-A: start", fold, b"Content-Length: 0"))


@pytest.mark.parametrize("line", [b"Content-Length : 5", b"X-A\t: 1", b"X-A : 1"])
def test_whitespace_before_colon_is_refused(loop: asyncio.AbstractEventLoop, line: bytes) -> None:
    refused(head_of(loop, b"HTTP/1.1 200 OK", line))


@pytest.mark.parametrize("line", [b"no colon here", b": no name"])
def test_malformed_header_lines(loop: asyncio.AbstractEventLoop, line: bytes) -> None:
    refused(head_of(loop, b"HTTP/1.1 200 OK", b"Content-Length: 0", line))


_NOT_TOKEN = [bytes([c]) for c in b'()<>@,;\\"/[]?={} \x01\x7f\x80\xff']


@pytest.mark.parametrize("char", _NOT_TOKEN, ids=[repr(c) for c in _NOT_TOKEN])
def test_header_names_must_be_tokens(loop: asyncio.AbstractEventLoop, char: bytes) -> None:
    refused(head_of(loop, b"HTTP/1.1 200 OK", b"X-Ms-" + char + b"A: 1", b"Content-Length: 0"))


@pytest.mark.parametrize("name", [b"X-Ms-Region", b"x!#$%&'*+-.^_`|~09AZaz"])
def test_header_names_may_use_every_token_character(
    loop: asyncio.AbstractEventLoop, name: bytes
) -> None:
    head = head_of(loop, b"HTTP/1.1 200 OK", name + b": 1", b"Content-Length: 0").head
    assert head is not None
    assert head.headers[0] == (name.decode(), "1")


_CONTROL = [bytes([c]) for c in [*range(0x09), *range(0x0A, 0x20), 0x7F]]


@pytest.mark.parametrize("char", _CONTROL, ids=[f"0x{c[0]:02x}" for c in _CONTROL])
def test_control_characters_in_header_values_are_refused(
    loop: asyncio.AbstractEventLoop, char: bytes
) -> None:
    # Finding 6: \x0b or DEL in an allowlisted x-ms-* header passed, and the
    # client's side then failed after the handler had returned.
    wire = b"HTTP/1.1 200 OK\r\nX-Ms-Region: a" + char + b"b\r\nContent-Length: 0\r\n\r\n"
    refused_whole_and_bytewise(loop, wire)


def test_tab_and_obs_text_in_header_values_are_kept(loop: asyncio.AbstractEventLoop) -> None:
    head = head_of(loop, b"HTTP/1.1 200 OK", b"X: a\tb \x80\xff", b"Content-Length: 0").head
    assert head is not None
    assert head.get("x") == "a\tb \x80\xff"


def test_content_length_parsed(loop: asyncio.AbstractEventLoop) -> None:
    got = feed(loop, b"HTTP/1.1 200 OK\r\ncontent-length:  0042 \r\n\r\n" + b"x" * 42)
    assert got.head is not None
    assert got.head.content_length == 42
    assert got.body == b"x" * 42
    assert got.reusable


@pytest.mark.parametrize("second", [b"Content-Length: 7", b"content-length: 8"])
def test_duplicated_content_length_is_refused(
    loop: asyncio.AbstractEventLoop, second: bytes
) -> None:
    # Even equal values: llhttp takes no chances (RFC 9112 6.3 allows either).
    refused(head_of(loop, b"HTTP/1.1 200 OK", b"Content-Length: 7", b"X: y", second))


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"-1",
        b"+5",
        b"5 5",
        b"5, 5",
        b"0x10",
        b"1e3",
        b"5.0",
        b"\xb2",  # superscript two: str.isdigit() is true for it
        b"1\xb9",  # 1 + superscript one
        b"\xbd",  # vulgar fraction one half (numeric, not a digit)
    ],
)
def test_invalid_content_length_is_refused(loop: asyncio.AbstractEventLoop, value: bytes) -> None:
    refused(head_of(loop, b"HTTP/1.1 200 OK", b"Content-Length: " + value))


def test_absurdly_long_content_length_is_refused(loop: asyncio.AbstractEventLoop) -> None:
    refused(head_of(loop, b"HTTP/1.1 200 OK", b"Content-Length: " + b"1" * 5000))
    refused(head_of(loop, b"HTTP/1.1 200 OK", b"Content-Length: " + b"9" * 20))


@pytest.mark.parametrize(
    "lines",
    [
        [b"Content-Length: 10", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked", b"Content-Length: 10"],
    ],
)
def test_content_length_with_transfer_encoding_is_refused(
    loop: asyncio.AbstractEventLoop, lines: list[bytes]
) -> None:
    refused(
        feed(loop, b"\r\n".join([b"HTTP/1.1 200 OK", *lines]) + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    )


@pytest.mark.parametrize(
    "lines",
    [
        [b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: Chunked"],
        [b"transfer-encoding:  CHUNKED "],
    ],
)
def test_transfer_encoding_chunked(loop: asyncio.AbstractEventLoop, lines: list[bytes]) -> None:
    got = feed(loop, b"\r\n".join([b"HTTP/1.1 200 OK", *lines]) + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert got.head is not None
    assert got.head.framing is Framing.CHUNKED
    assert got.body == b"ok"
    assert got.reusable


@pytest.mark.parametrize(
    "lines",
    [
        [b"Transfer-Encoding: gzip, chunked"],
        [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked, chunked"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: gzip"],
        [b"Transfer-Encoding: chunked, gzip"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"],
        [b"Transfer-Encoding: identity"],
        [b"Transfer-Encoding: chunked,"],
        [b"Transfer-Encoding: ,chunked"],
        [b"Transfer-Encoding:"],
    ],
)
def test_transfer_encoding_other_than_exactly_chunked_is_refused(
    loop: asyncio.AbstractEventLoop, lines: list[bytes]
) -> None:
    # Finding 7: gzip, chunked relayed gzip bytes as JSON; chunked, chunked
    # leaked chunk framing into the body.
    wire = b"\r\n".join([b"HTTP/1.1 200 OK", *lines]) + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    got = feed(loop, wire)
    refused(got)
    assert got.body == b""  # not one byte relayed


def test_no_length_means_read_until_close(loop: asyncio.AbstractEventLoop) -> None:
    got = feed(loop, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome", b" more")
    assert got.head is not None
    assert got.head.framing is Framing.CLOSE
    assert got.head.keep_alive is False
    assert got.body == b"some more"
    assert not got.complete  # the close ends it (test_upstream_pool.py)


def test_http10_with_transfer_encoding_is_not_kept_alive(loop: asyncio.AbstractEventLoop) -> None:
    # One of the fixed bugs: HTTP/1.0 framing with Transfer-Encoding is faulty
    # (RFC 9112 6.1); the connection must not be trusted after it.
    got = feed(
        loop,
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
    )
    assert got.body == b"ok"
    assert got.complete
    assert not got.reusable


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
@pytest.mark.parametrize(
    "framing", [b"Content-Length: 10", b"Transfer-Encoding: chunked", b"X-None: 1"]
)
def test_statuses_without_a_body(
    loop: asyncio.AbstractEventLoop, status: bytes, framing: bytes
) -> None:
    got = head_of(loop, b"HTTP/1.1 " + status, framing)
    assert got.head is not None
    assert got.head.framing is Framing.NONE
    assert got.body == b""
    assert got.complete
    assert got.reusable


@pytest.mark.parametrize(
    "framing", [b"Content-Length: 10", b"Transfer-Encoding: chunked", b"Content-Length: 0"]
)
def test_head_request_response_has_no_body(loop: asyncio.AbstractEventLoop, framing: bytes) -> None:
    conn, _ = _connection(loop)
    wire = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n"
    got = _receive(conn, [wire], head_request=True)
    assert got.head is not None
    assert got.head.framing is Framing.NONE
    assert got.complete
    assert got.reusable
    # The same connection then reads a GET's response with a body.
    after = _receive(conn, [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"])
    assert after.body == b"next"
    assert after.reusable
    # And the same head for a GET does have a body.
    get = feed(loop, wire)
    assert get.head is not None
    assert get.head.framing is not Framing.NONE


@pytest.mark.parametrize("extra", [b"X", b"\r\n", b"HTTP/1.1 200 OK\r\n"])
def test_bytes_after_a_bodiless_response_are_refused(
    loop: asyncio.AbstractEventLoop, extra: bytes
) -> None:
    refused(
        feed(loop, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + extra, head_request=True),
        "after the response",
    )
    refused(feed(loop, b"HTTP/1.1 204 No Content\r\n\r\n" + extra))


# -- interim responses ------------------------------------------------------------


def test_interim_responses_are_skipped_with_their_headers(loop: asyncio.AbstractEventLoop) -> None:
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"\r\n"  # an empty line between messages (RFC 9112 2.2)
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\nContent-Length: 9\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 5\r\n\r\nfinal"
    )
    for pieces in ([wire], bytewise(wire)):
        got = feed(loop, *pieces)
        assert got.status == 200
        assert got.head is not None
        assert got.head.get("link") is None
        assert got.head.get("x-final") == "1"
        assert got.body == b"final"
        assert got.reusable


def test_at_most_ten_interim_responses(loop: asyncio.AbstractEventLoop) -> None:
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    interim = b"HTTP/1.1 103 Early Hints\r\n\r\n"
    assert feed(loop, interim * 10 + final).body == b"ok"
    refused(feed(loop, interim * 11 + final), "interim")
    refused(feed(loop, *[interim] * 11, final), "interim")


def test_switching_protocols_is_refused(loop: asyncio.AbstractEventLoop) -> None:
    wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    refused(feed(loop, wire + b"\x81\x00"), "switched protocols")
    refused(feed(loop, wire))
    refused(feed(loop, b"HTTP/1.1 101 Switching Protocols\r\n\r\n"))


# -- head size ---------------------------------------------------------------------


def test_max_head_bytes_is_64_kib() -> None:
    assert MAX_HEAD_BYTES == 64 * 1024


def _head_of_size(size: int) -> bytes:
    start = b"HTTP/1.1 200 OK\r\nX-Big: "
    end = b"\r\nContent-Length: 2\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


@pytest.mark.parametrize("step", [1, 7, 4096, MAX_HEAD_BYTES + 100])
def test_head_at_the_cap_is_accepted_in_any_split(
    loop: asyncio.AbstractEventLoop, step: int
) -> None:
    wire = _head_of_size(MAX_HEAD_BYTES) + b"ok"
    got = feed(loop, *[wire[i : i + step] for i in range(0, len(wire), step)])
    assert got.body == b"ok"
    assert got.reusable


@pytest.mark.parametrize("step", [1, 7, 4096, 65000, MAX_HEAD_BYTES + 100])
def test_head_one_byte_over_the_cap_is_refused_in_any_split(
    loop: asyncio.AbstractEventLoop, step: int
) -> None:
    # One of the fixed bugs: the cap was bypassed when the head's end came in
    # a later read than its start.
    wire = _head_of_size(MAX_HEAD_BYTES + 1) + b"ok"
    refused(feed(loop, *[wire[i : i + step] for i in range(0, len(wire), step)]), "larger than")


def test_interim_heads_count_towards_the_cap(loop: asyncio.AbstractEventLoop) -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: " + b"x" * 8000 + b"\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert feed(loop, interim * 7 + final).body == b"ok"
    refused(feed(loop, interim * 9 + final), "larger than")


def test_an_endless_head_is_refused_once_past_the_cap(loop: asyncio.AbstractEventLoop) -> None:
    conn, transport = _connection(loop)
    conn.start(b"GET / HTTP/1.1\r\n\r\n", head_request=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nX-Big: ")
    sent = 0
    while not conn.closed:
        conn.data_received(b"a" * 1000)
        sent += 1000
        assert sent < MAX_HEAD_BYTES + 2000
    assert transport.aborted
    assert len(conn._head_buffer) <= MAX_HEAD_BYTES + 1000


def _trickle_cpu(loop: asyncio.AbstractEventLoop, size: int) -> float:
    """CPU seconds to read a *size*-byte head fed one byte per read (best of three)."""
    pieces = bytewise(_head_of_size(size))
    best = float("inf")
    for _ in range(3):
        conn, _ = _connection(loop)
        conn.start(b"GET / HTTP/1.1\r\n\r\n", head_request=False)
        started = time.process_time()
        for piece in pieces:
            conn.data_received(piece)
        best = min(best, time.process_time() - started)
        assert conn.head is not None
    return best


def test_a_trickled_head_costs_linear_cpu(loop: asyncio.AbstractEventLoop) -> None:
    # Finding 7: a 63 KiB head one byte per read cost 1.1 s of CPU (the
    # buffer rebuilt and rescanned per byte); now ~16 ms (bench/trickled_head.py).
    small = _trickle_cpu(loop, 16 * 1024)
    large = _trickle_cpu(loop, 63 * 1024)
    assert large < 0.5
    assert large < 8 * max(small, 1e-3)  # ~4x the bytes: linear ~4x, quadratic ~16x


# -- encode_request --------------------------------------------------------------


def test_encode_get_exact_bytes() -> None:
    wire = encode_request("GET", "/x?a=1", "h:8080", [("B", "2"), ("A", "1"), ("B", "3")], b"")
    assert wire == b"GET /x?a=1 HTTP/1.1\r\nHost: h:8080\r\nB: 2\r\nA: 1\r\nB: 3\r\n\r\n"


def test_encode_post_body_and_length_last() -> None:
    body = b'{"a": 1}'
    wire = encode_request("POST", "/p", "host", [("Content-Type", "application/json")], body)
    assert wire == (
        b"POST /p HTTP/1.1\r\nHost: host\r\nContent-Type: application/json\r\n"
        b"Content-Length: 8\r\n\r\n" + body
    )


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_encode_empty_body_methods_send_zero_length(method: str) -> None:
    wire = encode_request(method, "/", "h", [], b"")
    assert wire == f"{method} / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n".encode()


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS"])
def test_encode_bodyless_methods_send_no_length(method: str) -> None:
    wire = encode_request(method, "/", "h", [], b"")
    assert b"Content-Length" not in wire
    assert wire.endswith(b"\r\n\r\n")


def test_encode_body_on_any_method_gets_a_length() -> None:
    wire = encode_request("DELETE", "/", "h", [], b"abc")
    assert wire == b"DELETE / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X", "a\r\nEvil: 1"),
        ("X", "a\nEvil: 1"),
        ("X", "a\rb"),
        ("X", "trailing\r\n"),
        ("X", "\r\n\r\nGET /smuggled HTTP/1.1"),
        ("X\r\nEvil", "1"),
        ("X\n", "1"),
        ("\rX", "1"),
    ],
)
def test_encode_rejects_line_breaks_in_headers(name: str, value: str) -> None:
    with pytest.raises(ProtocolError, match="line break"):
        encode_request("POST", "/", "h", [("Ok", "1"), (name, value), ("Ok2", "2")], b"x")


def test_encode_rejects_line_breaks_in_several_headers() -> None:
    with pytest.raises(ProtocolError):
        encode_request("GET", "/", "h", [("A", "1\r"), ("B", "2\n")], b"")


@pytest.mark.parametrize(
    ("target", "host"), [("/a\r\nX: y", "h"), ("/a", "h\r\nX: y"), ("/a\n", "h")]
)
def test_encode_rejects_line_breaks_in_target_or_host(target: str, host: str) -> None:
    with pytest.raises(ProtocolError):
        encode_request("GET", target, host, [], b"")


@pytest.mark.parametrize(
    ("length", "framing"),
    [(12, b"Content-Length: 12"), (None, b"Transfer-Encoding: chunked")],
    ids=["length", "chunked"],
)
def test_encode_stream_head_announces_the_body_it_does_not_hold(
    length: int | None, framing: bytes
) -> None:
    head = encode_stream_head("POST", "/up", "h", [("A", "1")], length)
    assert head == b"POST /up HTTP/1.1\r\nHost: h\r\nA: 1\r\n" + framing + b"\r\n\r\n"
    with pytest.raises(ProtocolError, match="line break"):
        encode_stream_head("POST", "/up", "h", [("A", "1\r\nEvil: 1")], length)


def test_encode_non_latin_values_round_trip_via_surrogateescape() -> None:
    # What aiohttp's server hands over for raw header bytes that are not UTF-8.
    raw = b"caf\xc3\xa9 \xff\xfe\x80 \xe9t\xe9"
    value = raw.decode("utf-8", "surrogateescape")
    assert "\udcff" in value  # the invalid bytes really are surrogate-escaped
    wire = encode_request("GET", "/", "h", [("X-Name", value)], b"")
    assert b"\r\nX-Name: " + raw + b"\r\n" in wire
    # Back through the same decoding gives the same string.
    line = wire.split(b"\r\n")[2]
    assert line.decode("utf-8", "surrogateescape") == f"X-Name: {value}"


def test_encode_plain_unicode_values_are_utf8() -> None:
    wire = encode_request("GET", "/", "h", [("X", "caf\u00e9 \u2603")], b"")
    assert b"X: caf\xc3\xa9 \xe2\x98\x83\r\n" in wire


def test_encode_body_is_bytes_exact() -> None:
    body = bytes(range(256)) * 3
    wire = encode_request("POST", "/", "h", [], body)
    assert wire.endswith(b"\r\nContent-Length: 768\r\n\r\n" + body)


# -- chunked bodies ---------------------------------------------------------------

_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
_CHUNKED = (
    b"5\r\nhello\r\n"
    b"1;ext=1\r\n \r\n"
    b"a\r\n0123456789\r\n"
    b'10;name="quoted"\r\nABCDEFGHIJKLMNOP\r\n'
    b"2\r\n\r\n\r\n"  # the payload is itself CRLF
    b"0\r\n"
    b"X-Trailer: dropped\r\n"
    b"Y: also dropped\r\n"
    b"\r\n"
)
_PAYLOAD = b"hello 0123456789ABCDEFGHIJKLMNOP\r\n"


def chunked_body(loop: asyncio.AbstractEventLoop, *pieces: bytes) -> Received:
    """Feeds a chunked head, then *pieces*."""
    return feed(loop, _CHUNKED_HEAD, *pieces)


def test_chunked_whole(loop: asyncio.AbstractEventLoop) -> None:
    got = chunked_body(loop, _CHUNKED)
    assert got.body == _PAYLOAD
    assert got.reusable
    assert got.head is not None
    assert got.head.get("x-trailer") is None  # trailers are dropped


def test_chunked_in_the_same_read_as_the_head(loop: asyncio.AbstractEventLoop) -> None:
    got = feed(loop, _CHUNKED_HEAD + _CHUNKED)
    assert got.body == _PAYLOAD
    assert got.reusable


def test_chunked_byte_by_byte_never_runs_ahead(loop: asyncio.AbstractEventLoop) -> None:
    conn, _ = _connection(loop)
    conn.start(b"GET / HTTP/1.1\r\n\r\n", head_request=False)
    conn.data_received(_CHUNKED_HEAD)
    out = b""
    for i in range(len(_CHUNKED)):
        conn.data_received(_CHUNKED[i : i + 1])
        out += b"".join(conn._body_queue)
        conn._body_queue.clear()
        assert _PAYLOAD.startswith(out)
        # done exactly when the last byte of the trailer section arrives
        assert conn.body_done is (i == len(_CHUNKED) - 1)
        assert conn._error is None
    assert out == _PAYLOAD


def test_chunked_every_pair_of_split_points(loop: asyncio.AbstractEventLoop) -> None:
    n = len(_CHUNKED)
    for i in range(n + 1):
        for j in range(i, n + 1):
            pieces = [p for p in (_CHUNKED[:i], _CHUNKED[i:j], _CHUNKED[j:]) if p]
            got = chunked_body(loop, *pieces)
            assert (got.body, got.reusable) == (_PAYLOAD, True), (i, j)


def test_chunked_random_splits(loop: asyncio.AbstractEventLoop) -> None:
    rng = random.Random(20240611)
    wire = _CHUNKED_HEAD + _CHUNKED
    for _ in range(300):
        pieces: list[bytes] = []
        at = 0
        while at < len(wire):
            step = rng.randint(1, 12)
            pieces.append(wire[at : at + step])
            at += step
        got = feed(loop, *pieces)
        assert got.body == _PAYLOAD
        assert got.reusable


def test_chunked_large_random_payload_random_splits(loop: asyncio.AbstractEventLoop) -> None:
    rng = random.Random(7)
    payload = rng.randbytes(200_000)
    wire = bytearray()
    at = 0
    while at < len(payload):
        size = min(rng.randint(1, 9000), len(payload) - at)
        wire += f"{size:x}\r\n".encode() + payload[at : at + size] + b"\r\n"
        at += size
    wire += b"0\r\n\r\n"
    data = bytes(wire)
    pieces = []
    at = 0
    while at < len(data):
        step = rng.randint(1, 5000)
        pieces.append(data[at : at + step])
        at += step
    got = chunked_body(loop, *pieces)
    assert got.body == payload
    assert got.reusable


def test_chunked_empty_body(loop: asyncio.AbstractEventLoop) -> None:
    got = chunked_body(loop, b"0\r\n\r\n")
    assert got.body == b""
    assert got.reusable


def test_chunked_not_done_until_trailer_section_ends(loop: asyncio.AbstractEventLoop) -> None:
    conn, _ = _connection(loop)
    conn.start(b"GET / HTTP/1.1\r\n\r\n", head_request=False)
    conn.data_received(_CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n")
    assert list(conn._body_queue) == [b"abc"]
    done = []
    for piece in (b"Trailer: x\r\n", b"\r\n"):
        done.append(conn.body_done)
        conn.data_received(piece)
    done.append(conn.body_done)
    assert done == [False, False, True]
    assert conn._error is None


@pytest.mark.parametrize("size", [b"a", b"A", b"0a", b"00000000000a", b"000000000000000a"])
def test_chunked_valid_size_spellings(loop: asyncio.AbstractEventLoop, size: bytes) -> None:
    got = chunked_body(loop, size + b"\r\n0123456789\r\n0\r\n\r\n")
    assert got.body == b"0123456789"
    assert got.reusable


@pytest.mark.parametrize(
    "size",
    [
        b"+1",
        b"0x1",
        b"1_0",
        b"-1",
        b"",
        b" ",
        b";ext",
        b"g",
        b"1 1",
        b"1.0",
        b"\xd9\xa1",  # Arabic-Indic one
        b"1" * 17,  # more than 64 bits
        # Finding 7: whitespace around a chunk size was accepted.
        b"1 ",
        b"1\t",
        b" 1",
        b"1 ;ext",
    ],
)
def test_chunked_invalid_sizes(loop: asyncio.AbstractEventLoop, size: bytes) -> None:
    wire = size + b"\r\nx\r\n0\r\n\r\n"
    refused_whole_and_bytewise(loop, wire, chunked=True)


@pytest.mark.parametrize(
    "wire",
    [
        b"1;a\nx\r\n0\r\n\r\n",  # finding 7: a bare LF in a chunk extension
        b"1;a=b\nc\r\nx\r\n0\r\n\r\n",
        b'1;a="b\nc"\r\nx\r\n0\r\n\r\n',
        b"1\nx\r\n0\r\n\r\n",  # a bare LF ending the size line
        b"1;a\rb\r\nx\r\n0\r\n\r\n",
        b"1\r\nx\r\n0\r\nT: 1\n\r\n",  # a bare LF in the trailer section
    ],
)
def test_chunked_bare_cr_or_lf_in_framing_lines(
    loop: asyncio.AbstractEventLoop, wire: bytes
) -> None:
    refused_whole_and_bytewise(loop, wire, chunked=True)


@pytest.mark.parametrize(
    "wire",
    [
        b"5\r\nhelloXY0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r0\r\n\r\n",
        b"5\r\nhello!\r\n0\r\n\r\n",  # one byte more than the size said
    ],
)
def test_chunked_data_must_be_followed_by_crlf(
    loop: asyncio.AbstractEventLoop, wire: bytes
) -> None:
    refused_whole_and_bytewise(loop, wire, chunked=True)


def test_chunked_one_whole_chunk_per_read_as_streams_arrive(
    loop: asyncio.AbstractEventLoop,
) -> None:
    conn, _ = _connection(loop)
    conn.start(b"GET / HTTP/1.1\r\n\r\n", head_request=False)
    conn.data_received(_CHUNKED_HEAD)
    events = [b"data: {}\n\n", b"data: " + b"x" * 300 + b"\n\n", b"data: [DONE]\n\n"]
    for event in events:
        conn.data_received(b"%x\r\n" % len(event) + event + b"\r\n")
        assert list(conn._body_queue) == [event]  # one read, one piece, as it came
        conn._body_queue.clear()
        assert not conn.body_done
    conn.data_received(b"0\r\n\r\n")
    assert conn.body_done
    assert conn._error is None


@pytest.mark.parametrize(
    "read",
    [
        b"+5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b"5_\r\nhello\r\n",
        b"5\r\nhelloXY",
        b"5\r\nhello!\r\n",
        b"4\r\nhello\r\n",
    ],
)
def test_chunked_one_read_that_only_looks_like_a_whole_chunk_is_refused(
    loop: asyncio.AbstractEventLoop, read: bytes
) -> None:
    refused(chunked_body(loop, read))


def test_chunked_bad_crlf_split_across_reads(loop: asyncio.AbstractEventLoop) -> None:
    got = chunked_body(loop, b"5\r\nhello\r", b"X")
    assert got.body == b"hello"
    refused(got)


@pytest.mark.parametrize(
    "extra",
    [
        b"EXTRA",
        b"\r\n",
        b"\n",
        b"\r",
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
        # Smuggled answers that end as cleanly as a chunked body does.
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_chunked_bytes_after_the_end_in_the_same_read(
    loop: asyncio.AbstractEventLoop, extra: bytes
) -> None:
    # llhttp itself skips CR and LF between messages; aigw refuses them too.
    refused(chunked_body(loop, b"2\r\nok\r\n0\r\n\r\n" + extra), "after the response")
    refused(feed(loop, _CHUNKED_HEAD + b"2\r\nok\r\n0\r\n\r\n" + extra), "after the response")
    refused(chunked_body(loop, b"2\r\nok\r\n0\r\nT: 1\r\n\r\n" + extra), "after the response")


@pytest.mark.parametrize("split", range(1, 6))
def test_chunked_bytes_after_a_split_end(loop: asyncio.AbstractEventLoop, split: int) -> None:
    end = b"2\r\nok\r\n0\r\n\r\n"
    # The end itself split anywhere is clean ...
    got = chunked_body(loop, end[:-split], end[-split:])
    assert got.reusable
    # ... with anything after it in the last read it is not.
    refused(chunked_body(loop, end[:-split], end[-split:] + b"\r\n"), "after the response")
    refused(chunked_body(loop, end[:-split], end[-split:] + b"X"), "after the response")


@pytest.mark.parametrize(
    "extra", [b"EXTRA", b"\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"]
)
def test_content_length_bytes_after_the_end(loop: asyncio.AbstractEventLoop, extra: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    refused(feed(loop, head + b"ok" + extra), "Content-Length")
    refused(feed(loop, head, b"ok" + extra), "Content-Length")
    refused(feed(loop, head + b"o", b"k" + extra), "Content-Length")


@pytest.mark.parametrize(
    ("wire", "head_request"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (_CHUNKED_HEAD + b"2\r\nok\r\n0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False),
    ],
)
@pytest.mark.parametrize("later", [b"\r\n", b"ok", b"HTTP/1.1 200 OK\r\n"])
def test_bytes_in_a_later_read_after_a_complete_response(
    loop: asyncio.AbstractEventLoop, wire: bytes, head_request: bool, later: bytes
) -> None:
    got = feed(loop, wire, later, head_request=head_request)
    assert got.body == (b"" if head_request or b"204" in wire else b"ok")  # nothing more
    assert not got.reusable
    assert isinstance(got.error, ProtocolError)


@pytest.mark.parametrize(
    "prefix",
    [
        b"0" * 70_000,  # an endless chunk-size line
        b"1;" + b"e" * 70_000,  # an endless chunk extension
        b"3\r\nabc\r\n0\r\nX-Trailer: " + b"t" * 70_000,  # an endless trailer
    ],
)
def test_chunk_framing_that_never_ends_is_refused(
    loop: asyncio.AbstractEventLoop, prefix: bytes
) -> None:
    # One of the fixed bugs: a line limit bypassed by packet boundaries.
    # llhttp keeps none of these bytes; aigw still bounds how many may come.
    got = chunked_body(loop, *[prefix[i : i + 7] for i in range(0, len(prefix), 7)])
    refused(got, "chunk framing")


def test_chunk_extension_just_under_the_bound_is_kept(loop: asyncio.AbstractEventLoop) -> None:
    got = chunked_body(loop, b"3;" + b"e" * 60_000, b"\r\nabc\r\n0\r\n\r\n")
    assert got.body == b"abc"
    assert got.reusable


def test_chunk_framing_bound_grows_with_the_payload(loop: asyncio.AbstractEventLoop) -> None:
    chunk = b"100;" + b"e" * 200 + b"\r\n" + b"x" * 256 + b"\r\n"
    got = chunked_body(loop, *[chunk] * 200, b"0\r\n\r\n")
    assert got.body == b"x" * 256 * 200
    assert got.reusable


# -- early answers --------------------------------------------------------------


def test_an_answer_before_the_request_was_sent_is_never_reused(
    loop: asyncio.AbstractEventLoop,
) -> None:
    conn, transport = _connection(loop)
    transport.unsent = 1 << 20  # the request body is still queued to send
    got = _receive(conn, [b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig"])
    assert got.status == 413
    assert got.body == b"big"
    assert got.complete
    assert not got.reusable


# -- chunk framing without payload ---------------------------------------------

_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_body_of_one_byte_chunks_with_extensions_is_legal(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # Legal HTTP, if wasteful: framing outweighs the payload many times over.
    chunks = b"".join(b"1;ext=value\r\nx\r\n" for _ in range(20_000))
    got = feed(loop, _CHUNKED_HEAD, chunks, b"0\r\n\r\n")
    assert got.complete and got.reusable
    assert got.body == b"x" * 20_000
