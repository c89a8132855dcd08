"""The per-request state that travels down a route's chain and back.

Compiled routes and their closures are immutable and shared by every request;
anything that varies per request lives here, on a fresh ``Exchange``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web

from aigw.chain.body_budget import BodyBudget
from aigw.consumers.index import EMPTY_CONSUMERS, Consumer, ConsumerIndex
from aigw.upstream.pool import UpstreamPool
from aigw.upstream.target import UpstreamTarget

if TYPE_CHECKING:
    from aigw.apis.operations import ApiStyle, Operation
    from aigw.realtime.stats import SessionStats
    from aigw.templates.resolve import Resolved
    from aigw.upstream.body_stream import BodyStream

__all__ = ["Attempt", "Exchange", "Handler"]


class Attempt(NamedTuple):
    """One try of one target of a balanced route, for the access log.

    Attributes:
        target: The target's name (``azure_instance``, else the upstream host).
        status: The upstream's status, when it answered.
        error: What failed instead (an ``ex.outcome`` such as
            ``upstream_unreachable``), when it did not answer usably.
        ms: How long the try took, milliseconds.
    """

    target: str
    status: int | None
    error: str | None
    ms: float


@dataclass(slots=True, eq=False)
class Exchange:
    """One request's journey through the gateway.

    Attributes are filled in by the chain stages in order: the gateway sets the
    request and path; ``request_id`` the id; ``body`` the payload
    fields; the relay the upstream and usage fields; ``access_log`` reads them
    all at the end.
    """

    request: web.BaseRequest
    path: str
    pool: UpstreamPool
    body_budget: BodyBudget
    generation: int = 0
    started_ns: int = field(default_factory=time.perf_counter_ns)
    request_id: str = ""
    preset_error: Exception | None = None
    # The route match's captures (``uri_captures``); never mutated. None when
    # no route matched.
    params: Mapping[str, str] | None = None
    # A templated route's target for this request (aigw.templates); None on
    # every other route, whose target is bound into its chain at load.
    resolved: Resolved | None = None
    # The consumers of the table this request started on (set by the gateway
    # with the table, read once); who the caller is, once ``key_auth`` knows.
    consumers: ConsumerIndex = EMPTY_CONSUMERS
    consumer: Consumer | None = None
    credential_id: str | None = None
    # Headers every answer carries, relayed or aigw's own: names from
    # aigw.upstream.headers.ANSWER_HEADER_NAMES (a token quota's x-ratelimit-*),
    # which replace the upstream's own.
    response_headers: tuple[tuple[str, str], ...] = ()

    # The Azure operation this request asks for and how the client named the
    # deployment (aigw.apis.operations); None on a route whose route_type and
    # path fix both (its compiled target's path is used as it is).
    operation: Operation | None = None
    api_style: ApiStyle | None = None
    # The model dispatcher (aigw.apis.dispatch) read the body, and parsed its
    # JSON into ``payload``, before the route was known; it holds the body's
    # budget reservation, so the route's body stage neither reads nor releases.
    body_preread: bool = False
    # A multipart body sent upstream as it arrives (never held whole); the
    # relay sends it instead of ``upstream_body``.
    upstream_stream: BodyStream | None = None
    # A realtime WebSocket session's counters (aigw.realtime), for its log line.
    session: SessionStats | None = None

    # Request body: what the client sent, and what goes upstream (differs only
    # when aigw rewrote the JSON: defaults, include_usage, body-param auth).
    client_body: bytes = b""
    upstream_body: bytes = b""
    payload: dict[str, Any] | None = None
    stream: bool = False
    hide_usage_chunk: bool = False
    # Why a stream's usage cannot be known (e.g. "api_version": too old for
    # stream_options), for the access log; None when it can.
    usage_unavailable: str | None = None
    requested_model: str | None = None
    extra_query: tuple[tuple[str, str], ...] = ()
    extra_headers: tuple[tuple[str, str], ...] = ()

    # Balanced routes only (aigw.balancer.stage), set per attempt: the target
    # the relay sends to (None: the route's own), the upstream statuses that
    # make the relay give up the answer unsent (RetryableAnswer) so the next
    # target can be tried; every attempt made; the target that answered.
    target: UpstreamTarget | None = None
    failover_statuses: frozenset[int] = frozenset()
    attempts: list[Attempt] | None = None
    target_name: str | None = None

    # Upstream side, filled by the relay.
    api_version: str | None = None
    upstream_status: int | None = None
    upstream_sent_ns: int | None = None
    upstream_headers_ns: int | None = None
    upstream_request_id: str | None = None
    first_token_ns: int | None = None
    response_model: str | None = None
    usage: dict[str, Any] | None = None
    response_body: bytes | None = None
    bytes_out: int = 0
    outcome: str = "ok"
    error: str | None = None


Handler = Callable[[Exchange], Awaitable[web.StreamResponse]]
"""A compiled chain stage: takes the exchange, returns the response it sent."""
