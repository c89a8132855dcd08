"""Wire-level tests for aigw.upstream.http1: request encoding, response heads, chunked bodies.

Everything here is pure (bytes in, values or ProtocolError out); the socket side
is in test_upstream_pool.py.
"""

from __future__ import annotations

import random

import pytest

from aigw.upstream.http1 import (
    MAX_HEAD_BYTES,
    ChunkedDecoder,
    ProtocolError,
    ResponseHead,
    encode_request,
    parse_response_head,
)


def _head(*lines: bytes, head_request: bool = False) -> ResponseHead:
    return parse_response_head(b"\r\n".join(lines), head_request=head_request)


# -- status line ---------------------------------------------------------------


def test_status_line_with_reason() -> None:
    head = _head(b"HTTP/1.1 404 Not Found Here", b"Content-Length: 0")
    assert head.status == 404
    assert head.reason == "Not Found Here"
    assert head.keep_alive is True
    assert head.content_length == 0
    assert head.chunked is False


@pytest.mark.parametrize("line", [b"HTTP/1.1 200", b"HTTP/1.1 200 "])
def test_status_line_without_reason(line: bytes) -> None:
    head = _head(line, b"Content-Length: 2")
    assert head.status == 200
    assert head.reason == ""
    assert head.content_length == 2


def test_reason_phrase_is_latin1_text() -> None:
    assert _head(b"HTTP/1.1 200 \xe9t\xe9", b"Content-Length: 0").reason == "\xe9t\xe9"


def test_http11_is_keep_alive_by_default() -> None:
    assert _head(b"HTTP/1.1 200 OK", b"Content-Length: 0").keep_alive is True


def test_http10_is_not_keep_alive_by_default() -> None:
    head = _head(b"HTTP/1.0 200 OK", b"Content-Length: 0")
    assert head.status == 200
    assert head.keep_alive is False


@pytest.mark.parametrize("value", [b"keep-alive", b"Keep-Alive", b"foo, keep-alive"])
def test_http10_keep_alive_when_asked(value: bytes) -> None:
    head = _head(b"HTTP/1.0 200 OK", b"Connection: " + value, b"Content-Length: 3")
    assert head.keep_alive is True
    assert head.content_length == 3


def test_http10_keep_alive_needs_a_length() -> None:
    # Without a length the body runs until the close: the connection cannot be reused.
    head = _head(b"HTTP/1.0 200 OK", b"Connection: keep-alive")
    assert head.content_length is None
    assert head.keep_alive is False


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
def test_http11_connection_close(lines: list[bytes]) -> None:
    head = _head(b"HTTP/1.1 200 OK", b"Content-Length: 1", *lines)
    assert head.keep_alive is False
    assert head.content_length == 1


@pytest.mark.parametrize("value", [b"upgrade", b"closed", b"keep-alive", b"x-close"])
def test_http11_other_connection_tokens_keep_alive(value: bytes) -> None:
    assert _head(b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Connection: " + value).keep_alive


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
        b"HTTP/2.0 200 OK",
        b"http/1.1 200 OK",
        b"ICY 200 OK",
        b" HTTP/1.1 200 OK",
        b"HTTP/1.1 \xd9\xa2\xd9\xa0\xd9\xa0 OK",  # Arabic-Indic digits
    ],
)
def test_invalid_status_lines(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="status line"):
        parse_response_head(line + b"\r\nContent-Length: 0")


@pytest.mark.parametrize("code", [b"000", b"099"])
def test_status_codes_below_100_are_rejected(code: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_response_head(b"HTTP/1.1 " + code + b" X\r\nContent-Length: 0")


# -- header fields -------------------------------------------------------------


def test_headers_keep_order_names_and_trimmed_values() -> None:
    head = _head(
        b"HTTP/1.1 200 OK",
        b"X-B:  two  ",
        b"x-a:\tone\t",
        b"Content-Type: application/json",
        b"X-B: again",
        b"Empty:",
        b"Content-Length: 0",
    )
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


def test_no_content_type_is_empty_string() -> None:
    assert _head(b"HTTP/1.1 200 OK", b"Content-Length: 0").content_type == ""


def test_header_values_with_colons_and_latin1_bytes() -> None:
    head = _head(
        b"HTTP/1.1 200 OK", b"Link: <http://a:1/x>; rel=a", b"X: caf\xe9", b"Content-Length: 0"
    )
    assert head.get("link") == "<http://a:1/x>; rel=a"
    assert head.get("x") == "caf\xe9"


@pytest.mark.parametrize("fold", [b" folded", b"\tfolded", b" X-Other: 1"])
def test_obs_fold_is_rejected(fold: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed header"):
        _head(b"HTTP/1.1 200 OK", b"X-A: start", fold, b"Content-Length: 0")


@pytest.mark.parametrize("line", [b"Content-Length : 5", b"X-A\t: 1", b"X-A : 1"])
def test_whitespace_before_colon_is_rejected(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed header"):
        _head(b"HTTP/1.1 200 OK", line)


@pytest.mark.parametrize("line", [b"no colon here", b": no name", b""])
def test_malformed_header_lines(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed header"):
        _head(b"HTTP/1.1 200 OK", b"Content-Length: 0", line)


@pytest.mark.parametrize("value", [b"a\nTransfer-Encoding: chunked", b"a\rb", b"a\x00b"])
def test_control_characters_in_field_values_are_rejected(value: bytes) -> None:
    with pytest.raises(ProtocolError):
        _head(b"HTTP/1.1 200 OK", b"X-A: " + value, b"Content-Length: 0")


def test_content_length_parsed() -> None:
    head = _head(b"HTTP/1.1 200 OK", b"content-length:  0042 ")
    assert head.content_length == 42
    assert head.keep_alive is True
    assert head.chunked is False


def test_duplicated_equal_content_length_is_accepted() -> None:
    head = _head(b"HTTP/1.1 200 OK", b"Content-Length: 7", b"X: y", b"content-length: 7")
    assert head.content_length == 7


def test_conflicting_content_length_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="conflicting Content-Length"):
        _head(b"HTTP/1.1 200 OK", b"Content-Length: 7", b"Content-Length: 8")


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
def test_invalid_content_length_is_rejected(value: bytes) -> None:
    with pytest.raises(ProtocolError, match="invalid Content-Length"):
        _head(b"HTTP/1.1 200 OK", b"Content-Length: " + value)


def test_absurdly_long_content_length_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        _head(b"HTTP/1.1 200 OK", b"Content-Length: " + b"1" * 5000)


@pytest.mark.parametrize(
    "lines",
    [
        [b"Content-Length: 10", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked", b"Content-Length: 10"],
        [b"Transfer-Encoding: Chunked"],
        [b"Transfer-Encoding: gzip, chunked"],
        [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"],
    ],
)
def test_transfer_encoding_chunked(lines: list[bytes]) -> None:
    head = _head(b"HTTP/1.1 200 OK", *lines)
    assert head.chunked is True
    assert head.content_length is None  # Transfer-Encoding overrides Content-Length
    assert head.keep_alive is True


@pytest.mark.parametrize(
    "lines",
    [
        [b"Transfer-Encoding: gzip"],
        [b"Transfer-Encoding: chunked, gzip"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"],
        [b"Transfer-Encoding: gzip", b"Content-Length: 10"],
    ],
)
def test_transfer_encoding_not_ending_in_chunked_reads_until_close(lines: list[bytes]) -> None:
    head = _head(b"HTTP/1.1 200 OK", *lines)
    assert head.chunked is False
    assert head.content_length is None
    assert head.keep_alive is False


def test_no_length_means_read_until_close() -> None:
    head = _head(b"HTTP/1.1 200 OK", b"Content-Type: text/plain")
    assert head.content_length is None
    assert head.chunked is False
    assert head.keep_alive is False


def test_http10_with_transfer_encoding_is_not_kept_alive() -> None:
    head = _head(b"HTTP/1.0 200 OK", b"Connection: keep-alive", b"Transfer-Encoding: chunked")
    assert head.keep_alive is False


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified", b"100 Continue"])
@pytest.mark.parametrize(
    "framing", [b"Content-Length: 10", b"Transfer-Encoding: chunked", b"X-None: 1"]
)
def test_statuses_without_a_body(status: bytes, framing: bytes) -> None:
    head = _head(b"HTTP/1.1 " + status, framing)
    assert head.content_length == 0
    assert head.chunked is False
    assert head.keep_alive is True


@pytest.mark.parametrize(
    "framing", [b"Content-Length: 10", b"Transfer-Encoding: chunked", b"X-None: 1"]
)
def test_head_request_response_has_no_body(framing: bytes) -> None:
    head = _head(b"HTTP/1.1 200 OK", framing, head_request=True)
    assert head.content_length == 0
    assert head.chunked is False
    assert head.keep_alive is True
    # The same head for a GET does have a body.
    get = _head(b"HTTP/1.1 200 OK", framing)
    assert get.content_length != 0


def test_max_head_bytes_is_64_kib() -> None:
    assert MAX_HEAD_BYTES == 64 * 1024


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


# -- ChunkedDecoder ---------------------------------------------------------------

_CHUNKED = (
    b"5\r\nhello\r\n"
    b"1;ext=1\r\n \r\n"
    b"a\r\n0123456789\r\n"
    b'10 ; name="quoted"\r\nABCDEFGHIJKLMNOP\r\n'
    b"2\r\n\r\n\r\n"  # the payload is itself CRLF
    b"0\r\n"
    b"X-Trailer: dropped\r\n"
    b"Y: also dropped\r\n"
    b"\r\n"
)
_PAYLOAD = b"hello 0123456789ABCDEFGHIJKLMNOP\r\n"


def _done(decoder: ChunkedDecoder) -> bool:
    # A call, not an attribute: mypy would keep an asserted value narrowed across feed().
    return decoder.done


def _decode(pieces: list[bytes]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = b""
    for piece in pieces:
        if piece:
            assert not _done(decoder)
        out += decoder.feed(piece)
    return out, decoder


def test_chunked_whole() -> None:
    out, decoder = _decode([_CHUNKED])
    assert out == _PAYLOAD
    assert decoder.done is True
    assert decoder.leftover == b""


def test_chunked_byte_by_byte_never_runs_ahead() -> None:
    decoder = ChunkedDecoder()
    out = b""
    for i in range(len(_CHUNKED)):
        out += decoder.feed(_CHUNKED[i : i + 1])
        assert _PAYLOAD.startswith(out)
        # done exactly when the last byte of the trailer section arrives
        assert decoder.done is (i == len(_CHUNKED) - 1)
    assert out == _PAYLOAD
    assert decoder.leftover == b""


def test_chunked_every_pair_of_split_points() -> None:
    n = len(_CHUNKED)
    for i in range(n + 1):
        for j in range(i, n + 1):
            out, decoder = _decode([_CHUNKED[:i], _CHUNKED[i:j], _CHUNKED[j:]])
            assert (out, decoder.done, decoder.leftover) == (_PAYLOAD, True, b""), (i, j)


def test_chunked_random_splits() -> None:
    rng = random.Random(20240611)
    for _ in range(500):
        pieces: list[bytes] = []
        at = 0
        while at < len(_CHUNKED):
            step = rng.randint(0, 12)  # zero-length feeds included
            pieces.append(_CHUNKED[at : at + step])
            at += step
        out, decoder = _decode(pieces)
        assert out == _PAYLOAD
        assert _done(decoder)
        assert decoder.leftover == b""


def test_chunked_large_random_payload_random_splits() -> None:
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
    out, decoder = _decode(pieces)
    assert out == payload
    assert _done(decoder)


def test_chunked_empty_body() -> None:
    out, decoder = _decode([b"0\r\n\r\n"])
    assert out == b""
    assert _done(decoder)


def test_chunked_not_done_until_trailer_section_ends() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc\r\n0\r\n") == b"abc"
    assert not _done(decoder)
    assert decoder.feed(b"Trailer: x\r\n") == b""
    assert not _done(decoder)
    assert decoder.feed(b"\r\n") == b""
    assert _done(decoder)


@pytest.mark.parametrize("size", [b"a", b"A", b"0a", b"00000000000a", b"a ", b"a\t", b" a"])
def test_chunked_valid_size_spellings(size: bytes) -> None:
    out, decoder = _decode([size + b"\r\n0123456789\r\n0\r\n\r\n"])
    assert out == b"0123456789"
    assert _done(decoder)


def test_chunked_sixteen_hex_digits_are_accepted() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"000000000000000F\r\n" + b"x" * 15 + b"\r\n0\r\n\r\n") == b"x" * 15
    assert _done(decoder)


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
        b"0" * 17,
        b"1" * 17,
    ],
)
def test_chunked_invalid_sizes(size: bytes) -> None:
    wire = size + b"\r\nx\r\n0\r\n\r\n"
    with pytest.raises(ProtocolError, match="invalid chunk size"):
        ChunkedDecoder().feed(wire)
    decoder = ChunkedDecoder()
    with pytest.raises(ProtocolError, match="invalid chunk size"):
        for i in range(len(wire)):
            decoder.feed(wire[i : i + 1])


@pytest.mark.parametrize(
    "wire",
    [
        b"5\r\nhelloXY0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r0\r\n\r\n",
        b"5\r\nhello!\r\n0\r\n\r\n",  # one byte more than the size said
    ],
)
def test_chunked_data_must_be_followed_by_crlf(wire: bytes) -> None:
    with pytest.raises(ProtocolError, match="not followed by CRLF"):
        ChunkedDecoder().feed(wire)
    decoder = ChunkedDecoder()
    with pytest.raises(ProtocolError, match="not followed by CRLF"):
        for i in range(len(wire)):
            decoder.feed(wire[i : i + 1])


def test_chunked_one_whole_chunk_per_read_as_streams_arrive() -> None:
    # The decoder's shortcut for a read that is exactly one chunk, as SSE deltas arrive.
    decoder = ChunkedDecoder()
    events = [b"data: {}\n\n", b"data: " + b"x" * 300 + b"\n\n", b"data: [DONE]\n\n"]
    for event in events:
        assert decoder.feed(b"%x\r\n" % len(event) + event + b"\r\n") == event
        assert not _done(decoder)
    assert decoder.feed(b"0\r\n\r\n") == b""
    assert _done(decoder)


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
def test_chunked_one_read_that_only_looks_like_a_whole_chunk_is_refused(read: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(read)


def test_chunked_bad_crlf_split_across_feeds() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"5\r\nhello\r") == b"hello"
    with pytest.raises(ProtocolError):
        decoder.feed(b"X")


def test_chunked_leftover_after_the_end() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"2\r\nok\r\n0\r\n\r\nEXTRA") == b"ok"
    assert _done(decoder)
    assert decoder.leftover == b"EXTRA"


def test_chunked_leftover_after_a_split_end() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"2\r\nok\r\n0\r\n\r") == b"ok"
    assert not _done(decoder)
    assert decoder.feed(b"\nHTTP/1.1") == b""
    assert _done(decoder)
    assert decoder.leftover == b"HTTP/1.1"


@pytest.mark.parametrize(
    "prefix",
    [
        b"",  # a chunk-size line
        b"1;",  # a chunk extension
        b"3\r\nabc\r\n0\r\nX-Trailer: ",  # a trailer line
    ],
)
def test_chunked_overlong_line_without_crlf(prefix: bytes) -> None:
    long = prefix + b"0" * 5000
    with pytest.raises(ProtocolError, match="too long"):
        ChunkedDecoder().feed(long)
    decoder = ChunkedDecoder()
    with pytest.raises(ProtocolError, match="too long"):
        for i in range(0, len(long), 7):
            decoder.feed(long[i : i + 7])


def test_chunked_line_just_under_the_limit_is_kept() -> None:
    decoder = ChunkedDecoder()
    line = b"3;" + b"e" * 4000
    assert decoder.feed(line) == b""
    assert decoder.feed(b"\r\nabc\r\n0\r\n\r\n") == b"abc"
    assert _done(decoder)


def test_chunked_overlong_line_rejected_regardless_of_split() -> None:
    wire = b"3;" + b"e" * 5000 + b"\r\nabc\r\n0\r\n\r\n"
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(wire)
