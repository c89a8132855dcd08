"""Chain stage: ``key-auth``, who is calling, from a consumer key (Kong's plugin).

Every per-route decision is taken when the route compiles: which headers to
try, in which order, which of them carries ``Bearer <key>``, which query
parameters, and the text of the refusal. Per request the stage reads at most
one header per key name, hashes one key and probes one dict
(`ConsumerIndex.authenticate`).

SECURITY: a missing key and an unknown key get the same answer, byte for
byte (status, body, headers), after the same work: a missing key has a dummy
hashed and looked up in its place, so neither the answer nor its timing tells
a caller whether a key it tried exists. The operator still tells them apart:
the access log's ``outcome`` is ``missing_api_key`` or ``invalid_api_key``
(the key itself is never logged), and ``aigw_auth_failures_total`` counts
each ``reason``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Final

from aiohttp import web

from aigw.chain.body_reader import drop_unread_body
from aigw.chain.exchange import Exchange, Handler
from aigw.config.model import KeyAuthConfig
from aigw.errors import Unauthorized

__all__ = [
    "DENIED_MESSAGE",
    "INVALID_KEY_OUTCOME",
    "MISSING_KEY_OUTCOME",
    "bearer_token",
    "find_key",
    "key_auth",
    "key_places",
    "unauthorized",
]

INVALID_KEY_OUTCOME: Final = "invalid_api_key"
"""The access log's ``outcome`` for a key no consumer has (also the answer's ``error.code``)."""

MISSING_KEY_OUTCOME: Final = "missing_api_key"
"""The access log's ``outcome`` for a request without a key; the answer is the
same as for an unknown key (``error.code`` ``invalid_api_key``)."""

_AUTHORIZATION: Final = "authorization"

_BEARER: Final = "bearer"

_DUMMY_KEY: Final = "aigw-no-key-" + "0" * 40
"""Hashed and looked up when a request has no key: the same work as for a key
of the usual length (the result is ignored, so it matching a real key, which
it would not, changes nothing)."""

_CHALLENGE: Final = {"WWW-Authenticate": 'Key realm="aigw"'}

DENIED_MESSAGE: Final = "Access denied due to a missing or invalid API key."
"""How every 401 of aigw starts (as Azure's own 401 does: "Access denied due to ...")."""


def unauthorized(message: str) -> Unauthorized:
    """The 401 for a request without a known consumer (a fresh error: stages set
    ``close_connection`` on it).

    Args:
        message: The answer's ``error.message``: the same for every refusal of
            one route, whatever the cause.
    """
    return Unauthorized(INVALID_KEY_OUTCOME, message, headers=_CHALLENGE)


def key_places(config: KeyAuthConfig) -> str:
    """Where *config* looks for a key, as the 401 tells the client: e.g.
    ``the `api-key` header or `Authorization: Bearer <key>` ``."""
    places: list[str] = []
    if config.key_in_header:
        for name in config.key_names:
            if name.lower() == _AUTHORIZATION:
                places.append("`Authorization: Bearer <key>`")
            else:
                places.append(f"the `{name}` header")
    if config.key_in_query:
        places.extend(f"the `{name}` query parameter" for name in config.key_names)
    if not places:
        return "nowhere (key-auth has neither key_in_header nor key_in_query)"
    if len(places) == 1:
        return places[0]
    return ", ".join(places[:-1]) + " or " + places[-1]


def bearer_token(value: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme in any case),
    or None for another scheme or an empty token."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != _BEARER:
        return None
    return token.strip() or None


def _header_plan(config: KeyAuthConfig) -> tuple[tuple[str, bool], ...]:
    """(header name, takes Bearer) in the order to try; empty when headers are off."""
    if not config.key_in_header:
        return ()
    return tuple((name, name.lower() == _AUTHORIZATION) for name in config.key_names)


def _query_plan(config: KeyAuthConfig) -> tuple[str, ...]:
    return tuple(config.key_names) if config.key_in_query else ()


def find_key(
    request: web.BaseRequest, headers_plan: Sequence[tuple[str, bool]], query_plan: Sequence[str]
) -> str | None:
    """The first non-empty key in *request*: headers in plan order, then the query."""
    headers = request.headers
    for name, bearer in headers_plan:
        value = headers.get(name)
        if value:
            key = bearer_token(value) if bearer else value
            if key:
                return key
    if query_plan and request.query_string:
        query = request.query
        for name in query_plan:
            value = query.get(name)
            if value:
                return value
    return None


def key_auth(config: KeyAuthConfig, next_: Handler) -> Handler:
    """Builds the key-auth stage for one route.

    Per request: finds the key (see `find_key`), sets ``ex.consumer`` and
    ``ex.credential_id``, or refuses with the route's one 401 before the body
    is read (closing the connection when the body is still coming).
    """
    headers_plan = _header_plan(config)
    query_plan = _query_plan(config)
    message = f"{DENIED_MESSAGE} Send a consumer key in {key_places(config)}."

    # PERF: a plain function returning the rest of the chain's awaitable (see
    # aigw.consumers.acl): no frame of its own on the request's await chain.
    def stage(ex: Exchange) -> Awaitable[web.StreamResponse]:
        request = ex.request
        key = find_key(request, headers_plan, query_plan)
        # A missing key costs what an unknown one does: hash and probe a dummy.
        found = ex.consumers.authenticate(_DUMMY_KEY if key is None else key)
        if key is None or found is None:
            error = unauthorized(message)
            # For the operator only (the log line): the answer is the same.
            ex.outcome = MISSING_KEY_OUTCOME if key is None else INVALID_KEY_OUTCOME
            if drop_unread_body(request):
                error.close_connection = True
            raise error
        ex.consumer, ex.credential_id = found
        return next_(ex)

    return stage
