"""A model route's classic paths, each bound to its operation at load.

``AzureOpenAI(azure_endpoint=…)`` names the deployment in the path:
``/openai/deployments/gpt-4o/chat/completions``. A model route serves those paths
for each of its models (``deployment_paths``, the default). Each operation's path
is a static trie entry whose value already knows the operation, so the request is
one dict lookup in the router, as on a path route: no wildcard search, no lookup
of the path's rest. The route's ``/openai/deployments/{model}/*`` claim stays
behind them for the paths that name no operation the route serves (a 404 that
says what it does serve).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from aigw.apis.operations import BY_ROUTE_TYPE, BY_SUFFIX, Operation
from aigw.chain.exchange import Exchange, Handler

if TYPE_CHECKING:
    from aigw.route import CompiledRoute

__all__ = ["ClassicPath", "classic_paths"]


@dataclass(frozen=True, slots=True)
class ClassicPath:
    """The trie value of one operation's classic path on a model route.

    Attributes:
        route: The model route.
        operation: The operation the path names.
        handler: Sets ``ex.operation`` and ``ex.api_style`` and runs the route's chain
            (a plain function returning the chain's coroutine: no frame of its own).
    """

    route: CompiledRoute
    operation: Operation
    handler: Handler


def classic_paths(route: CompiledRoute, model: str) -> list[tuple[str, ClassicPath]]:
    """The static classic paths *route* serves for *model*, with their trie values: every
    deployment-path operation on an ``auto`` route, its own operation on a route of one
    type (none when that operation has no deployment path, such as Responses)."""
    route_type = route.info.route_type
    if route_type == "auto":
        operations = list(BY_SUFFIX.values())
    else:
        own = BY_ROUTE_TYPE.get(route_type or "")
        operations = [own] if own is not None and own.in_deployment_path else []
    return [
        (f"/openai/deployments/{model}{operation.suffix}", _bind(route, operation))
        for operation in operations
    ]


def _bind(route: CompiledRoute, operation: Operation) -> ClassicPath:
    chain = route.handler

    def handler(ex: Exchange) -> Awaitable[web.StreamResponse]:
        ex.operation = operation
        ex.api_style = "deployments"
        return chain(ex)

    return ClassicPath(route=route, operation=operation, handler=handler)
