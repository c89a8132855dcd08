"""Multipart uploads (transcriptions, translations, image edits), streamed, never held whole.

An audio file may be 25 MiB; a gateway that buffered it would hold 25 MiB per
upload in flight. Instead ``open_multipart`` reads only the form's leading
fields, as far as the end of its ``model`` field (the openai SDK sends the
plain fields first, then the file), with python-multipart's push parser, and
keeps those bytes as the prefix of a ``MultipartStream``: the relay then sends
the prefix and the rest of the client's body upstream piece by piece as it
arrives (``aigw.upstream.stream_send``), under the same deadlines and size
limit as a buffered body (``aigw.chain.body_reader.BodyPieces``). Memory per
upload: the prefix (the leading fields, at most 64 KiB, plus the piece that
crossed it) and one piece in flight.

What is checked here and what is left to Azure: the ``Content-Type`` and its
boundary, the form's structure up to the model (garbled bytes are a 400 here),
the declared and received size. The file itself is not parsed; a form whose
file comes before ``model`` is streamed with its model unknown (None).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from aigw.chain.body_reader import BodyPieces, drop_unread_body
from aigw.chain.exchange import Exchange
from aigw.config.model import AiProxyAdvancedConfig
from aigw.errors import BadRequest, UpstreamUnavailable
from aigw.limits import Limits, MiB

__all__ = [
    "MULTIPART_LIMIT",
    "PREFIX_LIMIT",
    "MultipartStream",
    "multipart_limit",
    "open_multipart",
]

MULTIPART_LIMIT = 25 * MiB
"""A multipart route's ``max_request_body_size`` when it sets none: Azure's file limit."""

_ROUTE_DEFAULT = AiProxyAdvancedConfig(targets=()).max_request_body_size


def multipart_limit(max_request_body_size: int) -> int:
    """An upload's bound on a route: its ``max_request_body_size``, or `MULTIPART_LIMIT`
    when the route keeps the default (sized for JSON, not for a 25 MiB audio file)."""
    return MULTIPART_LIMIT if max_request_body_size == _ROUTE_DEFAULT else max_request_body_size


PREFIX_LIMIT = 64 * 1024
"""Leading-field bytes read before the body is streamed on, model found or not."""

_INVALID = "invalid_multipart"

# python-multipart logs what it refuses, quoting bytes of the client's body;
# aigw reports the refusal itself (one access-log line, no request bytes).
logging.getLogger("python_multipart").addHandler(logging.NullHandler())
logging.getLogger("python_multipart").propagate = False


class MultipartStream:
    """A multipart body on its way upstream: the leading fields read, the rest as it comes.

    A ``BodyStream`` (``aigw.upstream.body_stream``) for the upstream pool.

    Attributes:
        length: The body's size as sent upstream (the client's
            ``Content-Length``, adjusted by ``rewrite_model``); None for a
            chunked upload, which goes upstream chunked too.
        model: The form's ``model`` field, or None when the file (or the end
            of the 64 KiB of leading fields) came first.
        prefix_size: Bytes read ahead to find the model (held until sent).
    """

    __slots__ = (
        "_boundary",
        "_model_part",
        "_pieces",
        "_prefix",
        "_sent_model",
        "_span",
        "_started",
        "length",
        "model",
        "prefix_size",
    )

    def __init__(
        self,
        prefix: bytes,
        pieces: BodyPieces,
        length: int | None,
        boundary: bytes,
        model: bytes | None,
        model_part: int,
    ) -> None:
        self._prefix = prefix
        self._pieces = pieces
        self._boundary = boundary
        self._model_part = model_part
        self._span: tuple[int, int] | None = None
        self._started = False
        self.length = length
        self.prefix_size = len(prefix)
        self.model = model.decode("utf-8", "replace") if model is not None else None
        self._sent_model = model  # the value the prefix holds now

    @property
    def received(self) -> int:
        """Body bytes received from the client so far."""
        return self._pieces.received

    def tighten(self, limit: int) -> None:
        """Bounds the upload by *limit* from now on, if stricter (see ``BodyPieces.tighten``)."""
        self._pieces.tighten(limit)

    def rewrite_model(self, deployment: str) -> None:
        """Replaces the ``model`` field's value with *deployment* (before the stream is sent).

        The v1 API names the deployment in the body; the route's target may
        call it something else than the client did. A form without a leading
        ``model`` field is left as it is, and so is one that names *deployment*
        already. Each attempt of a balanced route names its own target's: the
        value is compared with what the prefix holds now, not with the client's.
        """
        value = deployment.encode()
        if self.model is None or self._started or value == self._sent_model:
            return
        span = self._span or self._find_model()
        start, end = span
        self._sent_model = value
        self._prefix = self._prefix[:start] + value + self._prefix[end:]
        self._span = (start, start + len(value))
        if self.length is not None:
            self.length += len(value) - (end - start)

    def _find_model(self) -> tuple[int, int]:
        """Where the model value lies in the prefix.

        The parser has checked the form's structure up to it, so plain
        searches are exact: the boundary delimiter cannot occur inside a part,
        and a part's headers end at its first empty line.
        """
        prefix, opening = self._prefix, b"--" + self._boundary
        delimiter = b"\r\n" + opening
        at = prefix.find(opening) + len(opening)
        for _ in range(self._model_part - 1):
            at = prefix.find(delimiter, at) + len(delimiter)
        start = prefix.find(b"\r\n\r\n", at) + 4
        end = prefix.find(delimiter, start)
        # Cheap insurance that the search agrees with the parser.
        if prefix[start:end].decode("utf-8", "replace") != self.model:
            raise RuntimeError("the model field was not found where the parser saw it")
        return start, end

    async def chunks(self) -> AsyncIterator[bytes]:
        """The prefix, then the client's body as it arrives; may be iterated once.

        Raises:
            PayloadTooLarge, RequestTimeout: the client's body broke a bound.
            UpstreamUnavailable: iterated a second time (a retry after the
                body was sent: its bytes are gone).
        """
        if self._started:
            raise UpstreamUnavailable(
                "upstream_error",
                "the upload was already sent to an upstream that did not answer usably; "
                "a streamed body cannot be sent twice",
            )
        self._started = True
        pieces = self._pieces
        finished = False
        try:
            prefix, self._prefix = self._prefix, b""
            yield prefix
            while piece := await pieces.read():
                yield piece
            finished = True
        finally:
            if not finished:
                # Abandoned half-way (the upstream answered early, or failed):
                # the client's connection closes instead of draining the rest.
                pieces.abandon()


async def open_multipart(ex: Exchange, limit: int, limits: Limits) -> str | None:
    """Reads a multipart request's leading fields and sets ``ex.upstream_stream``.

    Args:
        ex: The request (``multipart/form-data``).
        limit: The route's ``max_request_body_size`` (0: none); see
            ``MULTIPART_LIMIT`` for the default of multipart routes.
        limits: The process's body deadlines.

    Returns:
        The form's ``model`` field, or None when the file (or 64 KiB of other
        fields) comes before it.

    Raises:
        BadRequest: 400 ``invalid_multipart``: not ``multipart/form-data``
            with a boundary, a garbled form, or one that ends before any field.
        PayloadTooLarge: The declared size is over *limit* (refused before
            reading), or the leading fields already are.
        RequestTimeout: The leading fields did not arrive in time.
        ExpectationFailed: ``Expect`` other than ``100-continue``.
    """
    request = ex.request
    try:
        boundary = _boundary(request.headers.get("Content-Type", ""))
    except BadRequest as error:
        # Not a form: whatever body follows is not worth draining.
        if drop_unread_body(request):
            error.close_connection = True
        raise
    pieces = BodyPieces(request, limit, limits)
    peek = _FormPeek(boundary)
    parts: list[bytes] = []
    size = 0
    try:
        while not peek.done and size <= PREFIX_LIMIT:
            piece = await pieces.read()
            if not piece:
                peek.end()
                break
            parts.append(piece)
            size += len(piece)
            peek.feed(piece)
    except BadRequest as error:
        pieces.abandon()
        error.close_connection = True  # the rest of the form stays unread
        raise
    finally:
        pieces.pause()
    stream = MultipartStream(
        b"".join(parts), pieces, request.content_length, boundary, peek.model, peek.model_part
    )
    ex.upstream_stream = stream
    return stream.model


def _boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, else a 400."""
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise BadRequest(
            _INVALID,
            "this operation takes a multipart/form-data body (Content-Type: "
            "multipart/form-data; boundary=...)",
            param="Content-Type",
        )
    boundary = options.get(b"boundary", b"")
    # RFC 2046 5.1.1: 1 to 70 characters.
    if not 0 < len(boundary) <= 70:
        raise BadRequest(
            _INVALID,
            "the multipart/form-data Content-Type has no valid boundary (1 to 70 characters)",
            param="Content-Type",
        )
    return boundary


class _Found(Exception):
    """Raised out of the parser once the peek knows enough: parse no further."""


class _FormPeek:
    """python-multipart callbacks that watch the leading fields for ``model``."""

    __slots__ = (
        "_capturing",
        "_fed",
        "_field",
        "_is_file",
        "_name",
        "_parser",
        "_value",
        "done",
        "model",
        "model_part",
        "parts",
    )

    def __init__(self, boundary: bytes) -> None:
        self.done = False
        self.parts = 0
        self._fed = 0
        self.model: bytes | None = None
        self.model_part = 0
        self._field = bytearray()
        self._value = bytearray()
        self._name: bytes | None = None
        self._is_file = False
        self._capturing: bytearray | None = None
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, data: bytes) -> None:
        """Parses the next bytes of the body (until the peek is done)."""
        try:
            self._parser.write(data)
        except _Found:
            self.done = True
        except FormParserError as exc:
            # python-multipart's own wording quotes bytes of the body: only where.
            offset = getattr(exc, "offset", -1)
            where = f" at byte {self._fed + offset}" if offset >= 0 else ""
            raise BadRequest(
                _INVALID,
                f"the multipart/form-data body is malformed{where}: its boundary lines or "
                "part headers do not follow the Content-Type's boundary",
            ) from None
        self._fed += len(data)

    def end(self) -> None:
        """The body ended before the peek was done."""
        if self.done:
            return
        what = "before any field" if self.parts == 0 else "in the middle of a part"
        raise BadRequest(_INVALID, f"the multipart/form-data body ends {what}")

    def _part_begin(self) -> None:
        self.parts += 1
        self._name = None
        self._is_file = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self._value))
            self._name = options.get(b"name")
            self._is_file = b"filename" in options
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        if self._is_file:
            raise _Found  # the file: the model, if any, comes after it
        if self._name == b"model":
            self._capturing = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._capturing is not None:
            self._capturing += data[start:end]

    def _part_end(self) -> None:
        if self._capturing is not None:
            self.model = bytes(self._capturing)
            self.model_part = self.parts
            raise _Found

    def _end(self) -> None:
        if self.parts == 0:
            raise BadRequest(_INVALID, "the multipart/form-data body ends before any field")
        raise _Found
