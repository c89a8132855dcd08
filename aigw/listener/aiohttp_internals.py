"""The aiohttp internals the socket layer relies on, named in one place and checked at start-up.

aigw serves with aiohttp's low-level ``web.Server`` and its per-connection
``RequestHandler``. The guards of the socket layer (the request-head deadline,
reclaiming idle connections at the connection limit, refusals, the ``Server``
header) need a little more than aiohttp's public API. Everything private they
touch is listed here:

* :data:`_PRIVATE_HANDLER_ATTRS`, read through :func:`head_count`,
  :func:`is_idle` and :func:`idle_order`;
* ``web_protocol.ERROR`` (:data:`PARSE_ERROR_MESSAGE`);
* ``web_response.SERVER_SOFTWARE`` (:func:`brand_server_header`);
* the parameters of ``RequestHandler.handle_error``, which
  :class:`~aigw.listener.refusals.RefusingRequestHandler` overrides.

:func:`check_aiohttp_internals` runs at every listener start and fails it if
any of them is gone or reshaped; tests check their *meaning* against live
connections. An aiohttp upgrade that changes them therefore fails loudly
instead of silently disabling a guard.

Also here, because it guards against the same kind of silent switch:
:func:`require_c_parser` refuses aiohttp's pure-Python request parser.
"""

from __future__ import annotations

import asyncio
import inspect
import types

from aiohttp import http_parser, web_protocol, web_response
from aiohttp.http import RawRequestMessage
from aiohttp.web_protocol import RequestHandler

__all__ = [
    "PARSE_ERROR_MESSAGE",
    "SERVER_HEADER",
    "brand_server_header",
    "check_aiohttp_internals",
    "head_count",
    "idle_order",
    "is_idle",
    "require_c_parser",
]

#: Private ``RequestHandler`` slots read by the connection wrapper
#: (``aigw.listener.connection``):
#:
#: * ``_request_count``: incremented by ``data_received`` each time the parser
#:   completes a request *head* (llhttp emits the message at headers-complete,
#:   before the body) or reports a parse error. A change means "a head arrived".
#: * ``_waiter``: the future ``RequestHandler.start()`` awaits while it has no
#:   parsed request to handle. Pending means the connection is idle between
#:   requests: no handler running, no response being written. aiohttp's own
#:   keep-alive timer (``_process_keepalive``) uses the same test.
#: * ``_next_keepalive_close_time``: when aiohttp's keep-alive timer closes the
#:   connection if it stays idle. Set at ``connection_made`` and again when
#:   each keep-alive response is finished, to that moment plus
#:   ``keepalive_timeout``; every connection of a listener has the same
#:   timeout, so it orders idle connections by how long they have been idle,
#:   at no cost per request (aiohttp computes it anyway).
_PRIVATE_HANDLER_ATTRS = ("_request_count", "_waiter", "_next_keepalive_close_time")

#: The request message ``RequestHandler.start()`` builds the request of a parse
#: error from (``web_protocol.ERROR``, version HTTP/1.0). Recognised by identity
#: in the version guard so a refusal is answered in HTTP/1.1 like the rest.
PARSE_ERROR_MESSAGE: object = getattr(web_protocol, "ERROR", None)

#: ``handle_error``'s parameters, which ``RefusingRequestHandler`` overrides.
_HANDLE_ERROR_PARAMS = ("self", "request", "status", "exc", "message")

SERVER_HEADER = "aigw"
"""What the ``Server`` header says (aiohttp: ``Python/3.11 aiohttp/3.14.5``).

Naming the product tells a client which hop answered (aigw or something in
front of it), as nginx's ``server_tokens off`` does; the versions only help
someone looking for a known vulnerability."""


def head_count(handler: RequestHandler) -> int:
    """Number of request heads (or parse errors) seen on this connection so far."""
    count: int = handler._request_count
    return count


def is_idle(handler: RequestHandler) -> bool:
    """Whether the handler is waiting for the next request, with nothing in flight."""
    waiter: asyncio.Future[None] | None = handler._waiter
    return waiter is not None and not waiter.done()


def idle_order(handler: RequestHandler) -> float:
    """A key that sorts idle connections longest idle first: aiohttp's keep-alive deadline.

    Meaningful only while :func:`is_idle` holds: the loop time at which aiohttp
    would close the connection for idleness, counted from when it was opened
    or its last response was finished.
    """
    close_time: float = handler._next_keepalive_close_time
    return close_time


def check_aiohttp_internals() -> None:
    """Fails start-up if the aiohttp internals named above are gone or changed.

    Raises:
        RuntimeError: An aiohttp upgrade removed, renamed or reshaped one of them.
    """
    missing = [
        name
        for name in _PRIVATE_HANDLER_ATTRS
        if not isinstance(getattr(RequestHandler, name, None), types.MemberDescriptorType)
    ]
    if not isinstance(PARSE_ERROR_MESSAGE, RawRequestMessage):
        missing.append("aiohttp.web_protocol.ERROR")
    if not isinstance(getattr(web_response, "SERVER_SOFTWARE", None), str):
        missing.append("aiohttp.web_response.SERVER_SOFTWARE")
    params = tuple(inspect.signature(RequestHandler.handle_error).parameters)
    if params != _HANDLE_ERROR_PARAMS:
        missing.append(f"RequestHandler.handle_error{_HANDLE_ERROR_PARAMS[1:]}")
    if missing:
        raise RuntimeError(
            f"aiohttp.web_protocol.RequestHandler no longer has {missing}; "
            "aigw's request-head timeout, idle-connection reclaiming, refusals and Server "
            "header depend on them. Review aigw/listener/aiohttp_internals.py against this aiohttp "
            "version."
        )


def brand_server_header() -> None:
    """Makes every response aiohttp sends say ``Server: aigw``.

    ``StreamResponse._prepare_headers`` reads the ``web_response`` module
    global ``SERVER_SOFTWARE`` for every response it sends: replacing that one
    value costs nothing per response.
    """
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]


def require_c_parser() -> None:
    """Refuses to run on aiohttp's pure-Python HTTP request parser.

    Raises:
        RuntimeError: The C (llhttp) parser is not the one ``RequestHandler``
            uses, e.g. because ``AIOHTTP_NO_EXTENSIONS`` is set or the
            extension failed to import.
    """
    # SECURITY: most aiohttp request-smuggling advisories (CVE-2023-47627,
    # CVE-2024-23829, ...) were in the pure-Python parser only. Check the
    # module global RequestHandler actually instantiates, not just the
    # http_parser module's; if aiohttp renames it, this fails closed.
    c_parser = getattr(http_parser, "HttpRequestParserC", None)
    in_use: object = getattr(web_protocol, "HttpRequestParser", None)
    if c_parser is None or in_use is not c_parser:
        raise RuntimeError(
            "aiohttp's RequestHandler is not using the C (llhttp) HTTP request "
            f"parser but {in_use!r}. The pure-Python parser has a history of "
            "request-smuggling bugs the C parser did not have, so aigw refuses "
            "to serve with it. Unset AIOHTTP_NO_EXTENSIONS and install an aiohttp "
            "wheel with its C extensions for this platform."
        )
