"""HTTP version allowlist: anything but HTTP/1.0 and HTTP/1.1 gets a 505 before the application.

SECURITY: llhttp accepts ``HTTP/2.0`` request lines and versionless ``GET /``
(HTTP/0.9), and aiohttp answers them with a ``HTTP/2.0 200`` / ``HTTP/0.9 200``
status line. :func:`install_version_guard` wraps the ``request_factory`` and
``request_handler`` public attributes of a ``web.Server`` so such requests get
``HTTP/1.1 505`` (JSON, ``aigw.listener.refusals``) and the connection is closed; no
application handler or middleware has to cooperate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from aigw.listener.aiohttp_internals import PARSE_ERROR_MESSAGE
from aigw.listener.refusals import refuse, version_refusal

__all__ = ["install_version_guard"]

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    web.BaseRequest,
]

# Marker version for rejected requests: equal to HTTP/1.1 (so aiohttp writes an
# "HTTP/1.1" status line rather than echoing "HTTP/2.0"), but a distinct object,
# so the handler wrapper recognises it with an identity test.
_REJECTED_VERSION = HttpVersion(1, 1)


def _is_supported(version: HttpVersion) -> bool:
    return version in (HttpVersion11, HttpVersion10)


def install_version_guard(server: web.Server) -> None:
    """Makes ``server`` answer 505 to any HTTP version but 1.0 and 1.1.

    ``web.Server.request_factory`` and ``request_handler`` are public attributes
    (its constructor arguments); every ``RequestHandler`` reads them when it is
    built, so this must run before the first connection is accepted. Done at
    this level, no application handler or middleware has to cooperate and a
    frozen application needs no change.

    The factory also sees the placeholder message aiohttp builds a parse
    error's request from, and gives it version 1.1, so refusals (answered by
    ``RefusingRequestHandler``) go out as ``HTTP/1.1`` like every response.
    """
    make_request: _RequestFactory = server.request_factory
    app_handler: _Handler = server.request_handler
    parse_error = PARSE_ERROR_MESSAGE
    assert isinstance(parse_error, RawRequestMessage)  # check_aiohttp_internals
    parse_error_11 = parse_error._replace(version=HttpVersion11)

    def request_factory(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if message is parse_error:
            message = parse_error_11
        elif not _is_supported(message.version):
            # SECURITY: llhttp accepts "HTTP/2.0" and versionless HTTP/0.9
            # request lines (measured); neither is a protocol we speak.
            message = message._replace(version=_REJECTED_VERSION, should_close=True)
        return make_request(message, payload, protocol, writer, task)

    # Not async on purpose: returning the app's coroutine directly adds no
    # coroutine frame to every request.
    def request_handler(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        if request.version is _REJECTED_VERSION:
            return _reject_version(request)
        return app_handler(request)

    server.request_factory = request_factory
    server.request_handler = request_handler


async def _reject_version(request: web.BaseRequest) -> web.StreamResponse:
    return refuse(request, version_refusal())
