"""Chain stage: ``acl``, which consumer groups may use a route (Kong's plugin).

The route's groups are a frozenset built when the route compiles, and the
allow and deny cases are two different stages, so a request costs one
``isdisjoint`` of two small frozensets and no allocation.

PERF: the stage only decides before the rest of the chain runs, so it is a
plain function that returns the rest's awaitable (or raises) instead of a
coroutine awaiting it: no frame of its own on the request's await chain,
which every suspension of the request would pass through.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Final

from aiohttp import web

from aigw.chain.body_reader import drop_unread_body
from aigw.chain.exchange import Exchange, Handler
from aigw.config.model import AclConfig
from aigw.consumers.key_auth import DENIED_MESSAGE, MISSING_KEY_OUTCOME, unauthorized
from aigw.errors import Forbidden, GatewayError

__all__ = ["ACCESS_DENIED", "acl"]

ACCESS_DENIED: Final = "access_denied"
"""``error.code`` of the 403, and the access log's ``outcome``."""


def acl(route: str, config: AclConfig, next_: Handler) -> Handler:
    """Builds the ACL stage for one route.

    A request without a consumer (the route has no key-auth) gets key-auth's
    401; a consumer outside ``allow``, or in ``deny``, a 403 naming the route
    (never the groups: they are the operator's business).
    """
    allow = frozenset(config.allow)
    deny = frozenset(config.deny)
    missing = f"{DENIED_MESSAGE} Route `{route}` identifies no consumer (it has no key-auth)."
    refused = f"Access denied: this key's consumer is not allowed to use route `{route}`."

    def refuse(ex: Exchange, error: GatewayError) -> GatewayError:
        if drop_unread_body(ex.request):
            error.close_connection = True
        return error

    if allow:

        def allow_stage(ex: Exchange) -> Awaitable[web.StreamResponse]:
            consumer = ex.consumer
            if consumer is None:
                ex.outcome = MISSING_KEY_OUTCOME
                raise refuse(ex, unauthorized(missing))
            if allow.isdisjoint(consumer.groups):
                raise refuse(ex, Forbidden(ACCESS_DENIED, refused))
            return next_(ex)

        return allow_stage

    def deny_stage(ex: Exchange) -> Awaitable[web.StreamResponse]:
        consumer = ex.consumer
        if consumer is None:
            ex.outcome = MISSING_KEY_OUTCOME
            raise refuse(ex, unauthorized(missing))
        if not deny.isdisjoint(consumer.groups):
            raise refuse(ex, Forbidden(ACCESS_DENIED, refused))
        return next_(ex)

    return deny_stage
