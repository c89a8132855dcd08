"""Errors that aigw itself answers with, in the OpenAI error envelope.

The openai SDK maps the HTTP status to an exception class and reads
``error.code`` / ``error.message`` / ``error.type`` from the body, so every
answer aigw makes on its own account uses the same shape Azure does::

    {"error": {"code": "...", "message": "...", "type": "...", "param": null}}

Hierarchy::

    GatewayError
     ├── BadRequest            400  invalid_request_error
     ├── RouteNotFound         404  not_found_error
     ├── MethodNotAllowed      405  invalid_request_error
     ├── RequestTimeout        408  invalid_request_error
     ├── PayloadTooLarge       413  invalid_request_error
     ├── ExpectationFailed     417  invalid_request_error
     ├── HeaderFieldsTooLarge  431  invalid_request_error
     ├── InternalError         500  server_error
     ├── UpstreamUnavailable   502  upstream_error
     ├── ServiceUnavailable    503  server_error
     ├── UpstreamTimeout       504  upstream_error
     └── VersionNotSupported   505  invalid_request_error

Upstream (Azure) errors are never wrapped: they are relayed unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import ClassVar

__all__ = [
    "BadRequest",
    "ExpectationFailed",
    "Forbidden",
    "GatewayError",
    "HeaderFieldsTooLarge",
    "InternalError",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "RequestTimeout",
    "RouteNotFound",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "VersionNotSupported",
]


class GatewayError(Exception):
    """An error answered by aigw itself, before or instead of the upstream's answer.

    Args:
        code: A stable machine-readable code (``error.code`` in the body).
        message: A human-readable explanation; never contains a secret.
        param: The request field at fault, when there is one.
        headers: Extra response headers (e.g. ``Allow`` on a 405).
    """

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    close_connection: bool = False
    """Answer with ``Connection: close``: set when the rest of the request cannot
    be told from the next one (a body that never came, or was never sent)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.headers: Mapping[str, str] = headers or {}

    def body(self) -> bytes:
        """The JSON body, in the OpenAI/Azure error envelope."""
        error = {
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "type": self.error_type,
        }
        return json.dumps({"error": error}).encode()


class BadRequest(GatewayError):
    """The request cannot be forwarded as it is (400)."""

    status = 400
    error_type = "invalid_request_error"


class RouteNotFound(GatewayError):
    """No route claims the request path (404)."""

    status = 404
    error_type = "not_found_error"


class MethodNotAllowed(GatewayError):
    """A route claims the path, but not for this method (405)."""

    status = 405
    error_type = "invalid_request_error"


class Unauthorized(GatewayError):
    """The route needs a consumer key and the request has none, or an unknown one (401)."""

    status = 401
    error_type = "invalid_request_error"


class Forbidden(GatewayError):
    """The consumer is known but not allowed on this route (403)."""

    status = 403
    error_type = "invalid_request_error"


class TooManyRequests(GatewayError):
    """The caller's token quota is spent for now (429); ``Retry-After`` says until when."""

    status = 429
    error_type = "rate_limit_error"


class RequestTimeout(GatewayError):
    """The client did not send its request body in time (408); the connection closes."""

    status = 408
    error_type = "invalid_request_error"
    close_connection = True


class PayloadTooLarge(GatewayError):
    """The request body is larger than the route allows (413)."""

    status = 413
    error_type = "invalid_request_error"


class ExpectationFailed(GatewayError):
    """The request's ``Expect`` names something other than ``100-continue`` (417).

    The client is holding its body back, so the connection closes.
    """

    status = 417
    error_type = "invalid_request_error"
    close_connection = True


class HeaderFieldsTooLarge(GatewayError):
    """The request head has a line too long or too many fields (431); the connection closes."""

    status = 431
    error_type = "invalid_request_error"
    close_connection = True


class InternalError(GatewayError):
    """A bug in aigw; the details go to the log, not to the client (500)."""

    status = 500
    error_type = "server_error"


class UpstreamUnavailable(GatewayError):
    """The upstream could not be reached or answered unusably (502)."""

    status = 502
    error_type = "upstream_error"


class ServiceUnavailable(GatewayError):
    """aigw has no room for this request now; a retry later may succeed (503)."""

    status = 503
    error_type = "server_error"


class UpstreamTimeout(GatewayError):
    """The upstream did not answer in time (504)."""

    status = 504
    error_type = "upstream_error"


class VersionNotSupported(GatewayError):
    """The request is not HTTP/1.1 or HTTP/1.0 (505); the connection closes."""

    status = 505
    error_type = "invalid_request_error"
    close_connection = True
