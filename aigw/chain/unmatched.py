"""The answer to a request no route takes: an id, one JSON error, one access-log line.

The gateway answers here when no route matches the path; the model dispatcher
(`aigw.apis.dispatch`) when the body's ``model`` names no route (or there is no
body ``model`` to read). Both run the same stages as a routed request, compiled
once, with the route ``-`` in the log line.
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from aigw.chain.access_log import access_log
from aigw.chain.body_reader import drop_unread_body
from aigw.chain.errors import error_responses
from aigw.chain.exchange import Exchange
from aigw.chain.info import UNMATCHED
from aigw.chain.request_id import request_id
from aigw.errors import GatewayError
from aigw.metrics import METRICS
from aigw.route import compile_chain

__all__ = ["answer_unmatched"]


async def _raise_preset(ex: Exchange) -> web.StreamResponse:
    assert ex.preset_error is not None
    raise ex.preset_error


_UNMATCHED_CHAIN = compile_chain(
    [
        ("request_id", request_id),
        ("access_log", partial(access_log, UNMATCHED, METRICS.for_route("-", None))),
        ("error_responses", lambda next_: error_responses(UNMATCHED, next_)),
    ],
    _raise_preset,
)


async def answer_unmatched(ex: Exchange, error: GatewayError) -> web.StreamResponse:
    """Answers *ex* with *error* through the unmatched chain (route ``-``)."""
    if drop_unread_body(ex.request):
        # Answered without reading the body: a client waiting for 100
        # Continue never sends it, and its next request would be read as it.
        error.close_connection = True
    ex.preset_error = error
    return await _UNMATCHED_CHAIN(ex)
