"""The model dispatcher: the route of a model-in-body request is the one its ``model`` names.

``/openai/v1/chat/completions``, ``/openai/responses`` and the other paths of
`aigw.apis.operations.MODEL_PATHS` name no deployment: the body's ``model`` does
(realtime: the ``deployment`` or ``model`` query parameter). The table
(`aigw.table`) puts one `ModelDispatch` in the trie for each of those paths; the
gateway calls its ``handler`` exactly as it calls a route's.

Per request, a JSON operation's dispatcher reads the bounded body once, parses it
once with the body stage's rules, looks the ``model`` up in one dict, and hands the
parsed body to the route (``ex.body_preread``: the route's body stage neither reads
nor parses again). A multipart operation's reads only the form's leading fields
(`aigw.apis.multipart.open_multipart`); the file streams on to the upstream later.

Until a route is known, an error is answered through the unmatched chain
(`aigw.chain.unmatched`): one JSON error, one access-log line with route ``-``.
A route's own plugins (``key-auth``) therefore run after the body is read: the
body is bounded by the largest ``max_request_body_size`` of the model routes (the
route's own bound is checked again for a JSON body; an upload stream keeps the
loosest multipart bound).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web

from aigw.apis.multipart import multipart_limit, open_multipart
from aigw.apis.operations import MODEL_PATHS, REALTIME, REALTIME_PATHS, ApiStyle, Operation
from aigw.chain.body_budget import BODY_BUFFER_FULL
from aigw.chain.body_ops import parse_object
from aigw.chain.body_reader import read_bounded
from aigw.chain.exchange import Exchange, Handler
from aigw.chain.unmatched import answer_unmatched
from aigw.errors import BadRequest, GatewayError, RouteNotFound
from aigw.limits import Limits

if TYPE_CHECKING:
    from aigw.route import CompiledRoute

__all__ = ["ModelDispatch", "model_dispatchers"]

_BODY_OUTCOMES: Final = {408: "client_body_timeout", 503: BODY_BUFFER_FULL}
"""The access log's outcome for a body that did not arrive in time, or had no room."""
_SHOWN_MODEL: Final = 200
"""Characters of an unknown ``model`` quoted back: enough to spot a typo."""
_WHY: Final = "the model-in-body APIs choose the route by the body's `model`"


@dataclass(frozen=True, slots=True)
class ModelDispatch:
    """The trie value of one model-in-body path.

    Attributes:
        path: The request path it serves (``/openai/v1/chat/completions``).
        operation: What the path asks Azure to do.
        style: How the client named the deployment (``v1`` or ``openai``).
        models: Model name -> the route serving it, as frozen when the table was built.
        handler: Reads the model, picks the route, runs the route's chain.
    """

    path: str
    operation: Operation
    style: ApiStyle
    models: Mapping[str, CompiledRoute]
    handler: Handler


def model_dispatchers(
    models: Mapping[str, CompiledRoute], limits: Limits
) -> dict[str, ModelDispatch]:
    """One dispatcher per model-in-body path, bound to *models* (not copied: pass a
    mapping nobody changes afterwards).

    Args:
        models: Model name -> route, every model route's ``route.models``.
        limits: The process's body deadlines.

    Returns:
        Request path -> its dispatcher, for every path of ``MODEL_PATHS`` and
        ``REALTIME_PATHS``.
    """
    routes = {id(route): route for route in models.values()}.values()
    json_limit = _loosest(route.file.proxy.max_request_body_size for route in routes)
    upload_limit = _loosest(
        multipart_limit(route.file.proxy.max_request_body_size) for route in routes
    )
    dispatchers: dict[str, ModelDispatch] = {}
    for path, (operation, style) in MODEL_PATHS.items():
        if operation.body == "multipart":
            handler = _multipart(operation, style, models, upload_limit, limits)
        else:
            handler = _json(operation, style, models, json_limit, limits)
        dispatchers[path] = ModelDispatch(path, operation, style, models, handler)
    for path, (param, style) in REALTIME_PATHS.items():
        handler = _realtime(param, style, models)
        dispatchers[path] = ModelDispatch(path, REALTIME, style, models, handler)
    return dispatchers


def _loosest(sizes: Iterable[int]) -> int:
    """The largest size; 0 (no limit) wins over any."""
    largest = 0
    for size in sizes:
        if size == 0:
            return 0
        largest = max(largest, size)
    return largest


def _route_of(
    get_route: Callable[[str], CompiledRoute | None], model: object, param: str, where: str
) -> CompiledRoute:
    """The route serving *model* (the value of *param* in *where*), or the 400/404 to answer."""
    if not isinstance(model, str) or not model:
        raise _missing(model, param, where)
    route = get_route(model)
    if route is None:
        raise _unknown(model, param)
    return route


def _json(
    operation: Operation,
    style: ApiStyle,
    models: Mapping[str, CompiledRoute],
    limit: int,
    limits: Limits,
) -> Handler:
    get_route = models.get

    async def dispatch(ex: Exchange) -> web.StreamResponse:
        try:
            body = await read_bounded(ex.request, limit, limits, ex.body_budget)
        except GatewayError as error:
            ex.outcome = _BODY_OUTCOMES.get(error.status, ex.outcome)
            return await answer_unmatched(ex, error)
        # The body's bytes stay reserved until the request ends (ex.client_body).
        try:
            payload = parse_object(body)
            model = payload.get("model")
            route = _route_of(get_route, model, "model", "the request body")
        except GatewayError as error:
            ex.body_budget.release(len(body))
            return await answer_unmatched(ex, error)
        ex.client_body = ex.upstream_body = body
        ex.payload = payload
        ex.requested_model = model
        ex.body_preread = True
        ex.operation = operation
        ex.api_style = style
        try:
            return await route.handler(ex)
        finally:
            ex.body_budget.release(len(body))

    return dispatch


def _multipart(
    operation: Operation,
    style: ApiStyle,
    models: Mapping[str, CompiledRoute],
    limit: int,
    limits: Limits,
) -> Handler:
    get_route = models.get

    async def dispatch(ex: Exchange) -> web.StreamResponse:
        try:
            model = await open_multipart(ex, limit, limits)
            route = _route_of(get_route, model, "model", "the form (before its file)")
        except GatewayError as error:
            ex.outcome = _BODY_OUTCOMES.get(error.status, ex.outcome)
            return await answer_unmatched(ex, error)
        ex.requested_model = model
        ex.operation = operation
        ex.api_style = style
        return await route.handler(ex)

    return dispatch


def _realtime(param: str, style: ApiStyle, models: Mapping[str, CompiledRoute]) -> Handler:
    get_route = models.get

    # PERF: a plain function returning the route's awaitable: no frame of its own
    # stays on the session's await chain.
    def dispatch(ex: Exchange) -> Awaitable[web.StreamResponse]:
        model = ex.request.query.get(param)
        try:
            route = _route_of(get_route, model, param, "the query")
        except GatewayError as error:
            return answer_unmatched(ex, error)
        ex.requested_model = model
        ex.operation = REALTIME
        ex.api_style = style
        return route.handler(ex)

    return dispatch


def _missing(value: object, param: str, where: str) -> BadRequest:
    if value is None or value == "":
        problem = f"{where} has no `{param}`"
    else:
        problem = f"`{param}` must be a non-empty string naming a deployment"
    if param != "model":
        return BadRequest(
            "missing_model",
            f"{problem}; the Realtime API chooses the route by the `{param}` query parameter",
            param=param,
        )
    return BadRequest("missing_model", f"{problem}; {_WHY}", param=param)


def _unknown(model: str, param: str) -> RouteNotFound:
    shown = model if len(model) <= _SHOWN_MODEL else model[:_SHOWN_MODEL] + "..."
    return RouteNotFound(
        "model_not_found",
        f"no route serves the model `{shown}`: it is in no route's `route.models`",
        param=param,
    )
