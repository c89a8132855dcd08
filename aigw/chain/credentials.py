"""Inject a target's Azure key: the ``credentials`` chain stage and the per-target applier.

The client's own ``api-key`` / ``Authorization`` never reach the upstream: the
relay builds upstream headers from an allowlist that names neither. A
:class:`KeyCredential` adds the configured credential as a header, a query
parameter or a body field (Kong's ``auth.header_*`` / ``auth.param_*``). With
``allow_override`` a client that sends the same header or parameter keeps its
own value.

One target: the ``credentials`` stage applies it once. A pool
(``aigw.balancer``): each member has its own applier, applied per attempt, so
each target's key goes only to that target.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aigw.chain.body import dump_json
from aigw.chain.exchange import Exchange, Handler
from aigw.config.model import AuthConfig

__all__ = ["KeyCredential", "credentials"]


class KeyCredential:
    """One target's key credential, compiled once per route load.

    ``apply`` sets (replaces) ``ex.extra_headers`` and ``ex.extra_query``;
    ``body_fields`` says what a body-param credential adds to the JSON body.
    """

    __slots__ = ("_body", "_header", "_header_name", "_override", "_param_name", "_query")

    def __init__(self, auth: AuthConfig) -> None:
        self._header: tuple[tuple[str, str], ...] = ()
        if auth.header_name and auth.header_value is not None:
            self._header = ((auth.header_name, auth.header_value),)
        param: tuple[tuple[str, str], ...] = ()
        if auth.param_name and auth.param_value is not None:
            param = ((auth.param_name, auth.param_value),)
        self._query = param if auth.param_location == "query" else ()
        self._body = param if auth.param_location == "body" else ()
        self._override = auth.allow_override
        self._header_name = auth.header_name or ""
        self._param_name = auth.param_name or ""

    @property
    def uses_body(self) -> bool:
        """The credential goes in the JSON body (the body is re-serialised per target)."""
        return bool(self._body)

    def apply(self, ex: Exchange) -> None:
        """Sets this credential's header and query parameter, replacing any earlier target's."""
        header = self._header
        if header and self._override:
            sent = ex.request.headers.get(self._header_name)
            if sent is not None:
                header = ((header[0][0], sent),)
        ex.extra_headers = header
        query = self._query
        if query and self._override and self._param_name in ex.request.query:
            query = ((self._param_name, ex.request.query[self._param_name]),)
        ex.extra_query = query

    def body_fields(self, payload: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
        """The fields a body-param credential sets in *payload* (none when the client's own
        value stands, or there is no JSON body)."""
        body = self._body
        if not body or payload is None or (self._override and self._param_name in payload):
            return ()
        return body


def credentials(auth: AuthConfig, next_: Handler) -> Handler:
    """Builds the credential stage for a route with one key-auth target."""
    credential = KeyCredential(auth)
    if not credential.uses_body:
        apply = credential.apply

        async def stage(ex: Exchange) -> web.StreamResponse:
            apply(ex)
            return await next_(ex)

        return stage

    async def body_stage(ex: Exchange) -> web.StreamResponse:
        credential.apply(ex)
        fields = credential.body_fields(ex.payload)
        if fields and ex.payload is not None:
            for name, value in fields:
                ex.payload[name] = value
            ex.upstream_body = dump_json(ex.payload)
        return await next_(ex)

    return body_stage
