"""Chain stage: give every request an id, accepting the client's when it is sane."""

from __future__ import annotations

import itertools
import os
import re

from aiohttp import web

from aigw.chain.exchange import Exchange, Handler

__all__ = ["new_request_id", "request_id"]

# SECURITY: the id is echoed in a response header and written to the log, so a
# client-supplied one must be short and plain (no CR/LF, no JSON tricks).
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


# PERF: a random per-process prefix and a counter: unique across processes and
# restarts like a UUID, without an os.urandom() system call per request.
_PREFIX = os.urandom(12).hex()
_COUNTER = itertools.count()


def new_request_id() -> str:
    """A fresh 32-hex-digit id (longer after 2**32 requests in one process)."""
    return f"{_PREFIX}{next(_COUNTER):08x}"


def request_id(next_: Handler) -> Handler:
    """Sets ``ex.request_id`` from ``x-request-id`` if valid, else a new one."""

    async def stage(ex: Exchange) -> web.StreamResponse:
        incoming = ex.request.headers.get("x-request-id")
        if incoming is not None and _ACCEPTABLE.fullmatch(incoming):
            ex.request_id = incoming
        else:
            ex.request_id = new_request_id()
        return await next_(ex)

    return stage
