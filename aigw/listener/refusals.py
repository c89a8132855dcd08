"""Requests refused before routing: one JSON error, one access-log line, nothing else.

aiohttp answers a request its parser refuses (a header line over 8190 bytes,
more than 128 header fields, a control character in a header, a garbage
request line, the HTTP/2 prior-knowledge preface) from
``RequestHandler.handle_error``: a ``text/plain`` 400 whose body, like the
traceback it logs at ERROR, quotes the offending line, secrets included
(``Authorization: Bearer sk-...``). :class:`RefusingRequestHandler` overrides
that one public method for parse errors and answers like every other error
aigw makes on its own account:

* an OpenAI-style JSON body with a fixed message (never the parser's, which
  quotes the request): 431 ``request_header_fields_too_large`` for a line over
  the limit or too many fields, 505 ``http_version_not_supported`` for the
  HTTP/2 preface and request lines in other HTTP versions, 400 ``bad_request``
  for the rest;
* a fresh ``x-request-id`` and ``Connection: close`` (nothing after a broken
  head can be trusted to start the next request);
* one access-log line (event ``request``, route ``-``, the error code as
  outcome) without any header content or raw bytes, counted in
  ``aigw_requests_total{route="-"}`` like requests that match no route;
* nothing on stderr.

Which refusal it is comes from the exception aiohttp's C parser raised: its
class for over-long lines, and for the rest the llhttp reason at the start of
its message (``"Invalid HTTP version"``, ``"Pause on PRI/Upgrade"``...). Should
an aiohttp upgrade reword them, a refusal falls back to 400 ``bad_request``:
still JSON and still logged without the request's bytes; the tests name each
case, so the change is noticed.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from aigw.chain.request_id import new_request_id
from aigw.errors import BadRequest, GatewayError, HeaderFieldsTooLarge, VersionNotSupported
from aigw.logs import get_logger
from aigw.metrics import METRICS

__all__ = ["RefusingRequestHandler", "log_refusal", "refusal_for", "refuse", "version_refusal"]

# The access log's logger: a refused request gets its line among the others.
_access = get_logger("aigw.access")

# Refused requests count with the requests that match no route (route "-").
_ROUTE_METRICS = METRICS.for_route("-", None)

# aiohttp's own message for more than ``max_headers`` fields (a BadHttpMessage).
_TOO_MANY_HEADERS = "Too many headers received"

# llhttp reasons that mean "not a version we speak" rather than "not HTTP".
# ``Expected dot`` is ``HTTP/2`` and ``HTTP/11.1``; the last two are the
# HTTP/2 prior-knowledge preface, whole or broken.
_VERSION_REASONS = frozenset(
    {
        "Invalid HTTP version",
        "Expected dot",
        "Pause on PRI/Upgrade",
        "Expected HTTP/2 Connection Preface",
    }
)
# aiohttp prefixes the llhttp reason of a BadStatusLine with this.
_STATUS_LINE_PREFIX = "Bad status line:\n  "


def version_refusal() -> VersionNotSupported:
    """The answer to a request line in an HTTP version other than 1.0 and 1.1."""
    return VersionNotSupported(
        "http_version_not_supported", "aigw speaks HTTP/1.1 and HTTP/1.0 only"
    )


def _llhttp_reason(exc: HttpProcessingError) -> str:
    """The llhttp reason an aiohttp parse error starts with (e.g. ``Expected dot``)."""
    return exc.message.removeprefix(_STATUS_LINE_PREFIX).partition(":\n")[0]


def refusal_for(exc: HttpProcessingError, *, max_field_size: int, max_headers: int) -> GatewayError:
    """The error to answer for a request head aiohttp's parser refused with *exc*.

    The message is fixed text: the parser's own quotes the offending bytes.
    """
    if isinstance(exc, LineTooLong) or exc.message == _TOO_MANY_HEADERS:
        return HeaderFieldsTooLarge(
            "request_header_fields_too_large",
            f"the request head is too large: every line must be under {max_field_size} "
            f"bytes and there may be at most {max_headers} header fields",
        )
    if _llhttp_reason(exc) in _VERSION_REASONS:
        return version_refusal()
    return BadRequest("bad_request", "the request is not valid HTTP/1.1 and was refused")


def refuse(request: web.BaseRequest, error: GatewayError) -> web.Response:
    """Answers *error* as JSON, closes the connection, writes the access-log line.

    For requests that never reach a route: a fresh request id, route ``-``,
    and no method, path or header of the request in the log line (they may be
    what was malformed, and may carry a secret).
    """
    request_id = new_request_id()
    body = error.body()
    response = web.Response(
        status=error.status,
        body=body,
        content_type="application/json",
        headers={"x-request-id": request_id},
    )
    response.force_close()
    log_refusal(request_id, error, client=request.remote, bytes_out=len(body))
    return response


def log_refusal(
    request_id: str, error: GatewayError, *, client: str | None, bytes_out: int
) -> None:
    """The access-log line (and request count) of a request refused before routing."""
    _access.info(
        "request",
        request_id=request_id,
        route="-",
        method="-",
        path="-",
        status=error.status,
        outcome=error.code,
        error=error.message,
        bytes_in=0,
        bytes_out=bytes_out,
        client=client,
    )
    _ROUTE_METRICS.count(error.status)


class RefusingRequestHandler(RequestHandler):
    """aiohttp's per-connection ``RequestHandler``, answering parse errors as aigw does.

    Only ``handle_error`` differs: for ``HttpProcessingError`` (what the
    parser raises), and for a client that went away mid-response, which the
    access log has already recorded; any other exception from a handler keeps
    aiohttp's 500.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The response to a request that failed before or outside the handler."""
        if isinstance(exc, ConnectionError):
            # The client is gone (a write to its closed transport failed): the
            # chain has logged it (499) and there is nobody to answer. aiohttp
            # would print a traceback to stderr first; raising is how it then
            # ends the connection quietly.
            raise ConnectionError("the client went away; nothing to answer") from exc
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            # As aiohttp does: a response is on the wire already; only closing is left.
            raise ConnectionError("response already started; cannot answer the parse error")
        error = refusal_for(exc, max_field_size=self.max_field_size, max_headers=self.max_headers)
        return refuse(request, error)
