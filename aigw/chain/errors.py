"""Chain stage: turn errors into OpenAI-style JSON answers the SDK understands."""

from __future__ import annotations

from aiohttp import web

from aigw.chain.exchange import Exchange, Handler
from aigw.chain.info import RouteInfo
from aigw.errors import GatewayError, InternalError
from aigw.logs import get_logger

__all__ = ["error_response", "error_responses"]

_log = get_logger("aigw.errors")


def error_response(ex: Exchange, error: GatewayError) -> web.Response:
    """The JSON response for *error*, carrying the request id and ``ex.response_headers``."""
    if ex.error is None:  # else a stage logged the detail it kept out of the message
        ex.error = error.message
    if ex.outcome == "ok":
        ex.outcome = error.code
    response = web.Response(status=error.status, body=error.body(), content_type="application/json")
    headers = response.headers
    headers["x-request-id"] = ex.request_id
    # The answer's own headers (x-ratelimit-* of the token limit) first: the
    # error's (a 429's retry-after) are more specific.
    for name, value in ex.response_headers:
        headers[name] = value
    headers.update(error.headers)
    if error.close_connection:
        response.force_close()
    ex.bytes_out = response.content_length or 0
    return response


def error_responses(info: RouteInfo, next_: Handler) -> Handler:
    """Answers ``GatewayError`` with its status, and any other exception with a 500."""

    async def stage(ex: Exchange) -> web.StreamResponse:
        try:
            return await next_(ex)
        except GatewayError as error:
            return error_response(ex, error)
        except (ConnectionResetError, web.HTTPException):
            raise
        except Exception:
            # A bug: the traceback goes to the log (without frame locals), the
            # client gets a generic message with the id to quote.
            _log.exception("unhandled_error", request_id=ex.request_id, route=info.name)
            return error_response(
                ex,
                InternalError(
                    "internal_error",
                    f"aigw failed to handle this request; quote request id {ex.request_id}",
                ),
            )

    return stage
