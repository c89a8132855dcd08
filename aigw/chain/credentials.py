"""Chain stage: inject the route's Azure credential.

The client's own ``api-key`` / ``Authorization`` never reach the upstream: the
relay builds upstream headers from an allowlist that names neither. This stage
adds the configured credential as a header, a query parameter or a body field
(Kong's ``auth.header_*`` / ``auth.param_*``). With ``allow_override`` a client
that sends the same header or parameter keeps its own value.
"""

from __future__ import annotations

from aiohttp import web

from aigw.chain.body import dump_json
from aigw.chain.exchange import Exchange, Handler
from aigw.config.model import AuthConfig

__all__ = ["credentials"]


def credentials(auth: AuthConfig, next_: Handler) -> Handler:
    """Builds the credential stage for one route."""
    header: tuple[tuple[str, str], ...] = ()
    if auth.header_name and auth.header_value is not None:
        header = ((auth.header_name, auth.header_value),)
    param: tuple[tuple[str, str], ...] = ()
    if auth.param_name and auth.param_value is not None:
        param = ((auth.param_name, auth.param_value),)
    location = auth.param_location
    override = auth.allow_override
    header_name = auth.header_name
    param_name = auth.param_name

    async def stage(ex: Exchange) -> web.StreamResponse:
        if header:
            ex.extra_headers = header
            if override:
                sent = ex.request.headers.get(header_name or "")
                if sent is not None:
                    ex.extra_headers = ((header[0][0], sent),)
        if param and location == "query":
            ex.extra_query = param
            if override and param_name in ex.request.query:
                ex.extra_query = ((param[0][0], ex.request.query[param[0][0]]),)
        elif (
            param
            and location == "body"
            and ex.payload is not None
            and not (override and param_name in ex.payload)
        ):
            ex.payload[param[0][0]] = param[0][1]
            ex.upstream_body = dump_json(ex.payload)
        return await next_(ex)

    return stage
