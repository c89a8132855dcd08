"""Chain stage: give every request an id, accepting the client's when it is sane."""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from aigw.chain.exchange import Exchange, Handler

__all__ = ["request_id"]

# SECURITY: the id is echoed in a response header and written to the log, so a
# client-supplied one must be short and plain (no CR/LF, no JSON tricks).
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(next_: Handler) -> Handler:
    """Sets ``ex.request_id`` from ``x-request-id`` if valid, else a new UUID."""

    async def stage(ex: Exchange) -> web.StreamResponse:
        incoming = ex.request.headers.get("x-request-id")
        if incoming is not None and _ACCEPTABLE.fullmatch(incoming):
            ex.request_id = incoming
        else:
            ex.request_id = uuid.uuid4().hex
        return await next_(ex)

    return stage
