"""Chain stage: read, bound and check the request body before anything is forwarded.

What a body must be depends on the operation (``aigw.apis.operations``): its
JSON rules are ``aigw.chain.body_ops``'; a multipart upload is opened, not read
(``aigw.apis.multipart``: its leading fields only, the file streams on later); a
realtime session has no body. ``preserve`` forwards the body untouched.

A path route's operation is its ``route_type``, fixed at load. A model route
(``route.models``) learns it per request: from the model dispatcher
(``ex.operation``, ``/openai/v1/…`` and ``/openai/responses``), or from the rest of
a classic ``/openai/deployments/{model}/…`` path, read here. A route of a specific
type serves that operation only; ``auto`` serves them all.

The body itself is read by :func:`aigw.chain.body_reader.read_bounded`, within
the route's size limit and the process's body deadlines, and its bytes are
reserved in the worker's body budget (``aigw.chain.body_budget``) until the
request ends: ``ex.client_body`` keeps them alive that long. A body the model
dispatcher already read (``ex.body_preread``) is neither read nor parsed again,
and its reservation is the dispatcher's; only this route's size limit is checked.

A WebSocket upgrade (an empty body with ``Upgrade: websocket``) on a route that
does not speak it is refused here, where an empty body is noticed anyway.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from aiohttp import web

from aigw.apis.multipart import MultipartStream, multipart_limit, open_multipart
from aigw.apis.operations import BY_ROUTE_TYPE, BY_SUFFIX, OPERATIONS, Operation
from aigw.chain.body_budget import BODY_BUFFER_FULL
from aigw.chain.body_ops import (
    MODEL_IN_BODY,
    PayloadCheck,
    accepts_stream_options,
    compile_payload_check,
    dump_json,
    missing_defaults,
    option_defaults,
    parse_object,
    shared_option_defaults,
)
from aigw.chain.body_reader import read_bounded
from aigw.chain.exchange import Exchange, Handler
from aigw.config.model import AiProxyAdvancedConfig, TargetConfig
from aigw.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    RouteNotFound,
    ServiceUnavailable,
)
from aigw.limits import Limits
from aigw.realtime.upgrade import is_websocket_upgrade

__all__ = [
    "accepts_stream_options",
    "body_checks",
    "dump_json",
    "missing_defaults",
    "option_defaults",
    "shared_option_defaults",
]

_BODY_OUTCOMES = {408: "client_body_timeout", 503: BODY_BUFFER_FULL}
"""The access log's outcome for a body that did not arrive in time (408), or
that the worker's body budget had no room for (503)."""


def body_checks(
    proxy: AiProxyAdvancedConfig,
    target: TargetConfig,
    limits: Limits,
    next_: Handler,
    *,
    route: str = "",
    models: tuple[str, ...] = (),
) -> Handler:
    """Builds the body stage for one route (all decisions that can be made now, are).

    Args:
        proxy: The route's plugin config.
        target: Its first target (every target shares the route_type).
        limits: The process's body deadlines.
        next_: The rest of the chain.
        route: The route's name, for error messages.
        models: ``route.models``: a model route learns each request's operation
            (and its API style) per request.
    """
    limit = proxy.max_request_body_size
    route_type = target.route_type
    if route_type == "preserve":
        return _body_stage(limit, limits, route, _peek_at_stream, next_)
    bound = BY_ROUTE_TYPE.get(route_type)
    if not models and bound is not None:
        return _path_route_stage(bound, proxy, target, limits, route, next_)
    # One target: the body stage itself names the deployment in a model-in-body body.
    single = len(proxy.targets) == 1
    # Keyed by route_type: a str hashes once, an Operation on every lookup.
    checks: dict[str, PayloadCheck] = {
        operation.route_type: compile_payload_check(
            operation, proxy, target, route_models=models, rewrite_model=single
        )
        for operation in (OPERATIONS if bound is None else (bound,))
    }
    return _ModelRouteStage(
        route=route,
        bound=bound,
        checks=checks,
        limit=limit,
        limits=limits,
        deployment=target.model.options.azure_deployment_id if single else None,
        next_=next_,
    ).stage


def _path_route_stage(
    operation: Operation,
    proxy: AiProxyAdvancedConfig,
    target: TargetConfig,
    limits: Limits,
    route: str,
    next_: Handler,
) -> Handler:
    """A path route's stage: its operation is its route_type (no per-request choice)."""
    limit = proxy.max_request_body_size
    if operation.body == "none":
        return next_  # a realtime session: no body to check
    check = compile_payload_check(operation, proxy, target)
    if operation.body == "multipart":
        upload_limit = multipart_limit(limit)

        async def multipart_stage(ex: Exchange) -> web.StreamResponse:
            await _open_form(ex, upload_limit, limits, check, None)
            return await next_(ex)

        return multipart_stage

    def inspect(ex: Exchange, body: bytes) -> None:
        check(ex, parse_object(body))

    return _body_stage(limit, limits, route, inspect, next_)


class _ModelRouteStage:
    """The body stage of a model route: the operation is known per request."""

    __slots__ = ("_bound", "_checks", "_deployment", "_limit", "_limits", "_next", "_route")

    def __init__(
        self,
        *,
        route: str,
        bound: Operation | None,
        checks: dict[str, PayloadCheck],
        limit: int,
        limits: Limits,
        deployment: str | None,
        next_: Handler,
    ) -> None:
        self._route = route
        self._bound = bound
        self._checks = checks
        self._limit = limit
        self._limits = limits
        self._deployment = deployment
        self._next = next_

    async def stage(self, ex: Exchange) -> web.StreamResponse:
        """Finds the request's operation, checks its body, goes on."""
        operation = ex.operation or self._operation_of(ex)
        if operation is not self._bound and self._bound is not None:
            raise RouteNotFound(
                "operation_not_found",
                f"route `{self._route}` serves only {self._bound.route_type}; "
                f"{ex.path[:200]} asks for {operation.route_type}",
            )
        check = self._checks[operation.route_type]
        if operation.body == "json":
            if ex.body_preread:
                _within(len(ex.client_body), self._limit)
                payload = ex.payload
                if payload is None:  # the dispatcher always parses; kept honest
                    payload = parse_object(ex.client_body)
                check(ex, payload)
                return await self._next(ex)
            body = await _read(ex, self._limit, self._limits)
            try:
                ex.client_body = ex.upstream_body = body
                if not body:
                    _refuse_upgrade(ex, self._route)
                check(ex, parse_object(body))
                return await self._next(ex)
            finally:
                ex.body_budget.release(len(body))
        if operation.body == "multipart":
            limit = multipart_limit(self._limit)
            await _open_form(ex, limit, self._limits, check, self._deployment)
        return await self._next(ex)

    def _operation_of(self, ex: Exchange) -> Operation:
        """The operation of a request the dispatcher did not name: a classic deployment
        path's rest (``chat/completions``), else the route's own type."""
        params = ex.params
        rest = params.get("*") if params else None
        operation = BY_SUFFIX.get(rest) if rest is not None else self._bound
        if operation is None:
            # Not an Azure operation at all: as unknown as any path no route claims.
            raise RouteNotFound(
                "route_not_found",
                f"no route for {ex.request.method} {ex.path[:200]}: model route "
                f"`{self._route}` serves /openai/deployments/{{model}}/ followed by one of "
                f"{', '.join(sorted(BY_SUFFIX))}",
            )
        if rest is not None:
            ex.api_style = "deployments"
        ex.operation = operation
        return operation


async def _open_form(
    ex: Exchange, limit: int, limits: Limits, check: PayloadCheck, deployment: str | None
) -> None:
    """Opens a multipart upload (unless the dispatcher did): checks its ``model`` field
    as a JSON body's, and names the deployment in it on a model-in-body request."""
    if ex.upstream_stream is None:
        model = await open_multipart(ex, limit, limits)
    else:
        model = ex.requested_model
        if isinstance(ex.upstream_stream, MultipartStream):
            # The dispatcher opened it under the loosest bound of all model routes.
            ex.upstream_stream.tighten(limit)
    # The form's leading fields stand for a JSON body (only `model` is read).
    check(ex, {} if model is None else {"model": model})
    stream = ex.upstream_stream
    if (
        deployment is not None
        and ex.api_style in MODEL_IN_BODY
        and isinstance(stream, MultipartStream)
    ):
        stream.rewrite_model(deployment)


def _within(size: int, limit: int) -> None:
    """This route's size limit, on a body another limit let in (the dispatcher's is the
    loosest of all model routes'); worded as ``read_bounded`` words it."""
    if 0 < limit < size:
        raise PayloadTooLarge(
            "request_too_large",
            f"the request body is larger than this route's max_request_body_size ({limit} bytes)",
        )


def _refuse_upgrade(ex: Exchange, route: str) -> None:
    """400 for a WebSocket upgrade on a route that does not speak WebSocket."""
    if is_websocket_upgrade(ex.request):
        raise BadRequest(
            "websocket_not_supported",
            f"route `{route}` does not speak WebSocket; the Realtime API is served by routes "
            "of route_type realtime/v1/realtime or auto",
        )


def _peek_at_stream(ex: Exchange, body: bytes) -> None:
    """Pass-through: never rewrites the body, only peeks at it so a stream is logged as one."""
    if b'"stream"' in body:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        ex.stream = isinstance(payload, dict) and payload.get("stream") is True


async def _read(ex: Exchange, limit: int, limits: Limits) -> bytes:
    """The body, read within its bounds; its bytes reserved until the caller releases them."""
    try:
        return await read_bounded(ex.request, limit, limits, ex.body_budget)
    except (RequestTimeout, ServiceUnavailable) as error:
        ex.outcome = _BODY_OUTCOMES[error.status]
        raise


def _body_stage(
    limit: int,
    limits: Limits,
    route: str,
    inspect: Callable[[Exchange, bytes], None],
    next_: Handler,
) -> Handler:
    """The stage every path route with a body shares: read the body within its bounds,
    let *inspect* check it (and set ``ex.upstream_body`` if it rewrites it), go on.

    *inspect* is a plain function, so this costs no extra coroutine per request.
    """

    async def stage(ex: Exchange) -> web.StreamResponse:
        try:
            body = await read_bounded(ex.request, limit, limits, ex.body_budget)
        except (RequestTimeout, ServiceUnavailable) as error:
            ex.outcome = _BODY_OUTCOMES[error.status]
            raise
        # The body's bytes stay reserved until the request ends (ex.client_body).
        try:
            ex.client_body = ex.upstream_body = body
            if not body:
                _refuse_upgrade(ex, route)
            inspect(ex, body)
            return await next_(ex)
        finally:
            ex.body_budget.release(len(body))

    return stage
