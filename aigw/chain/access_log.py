"""Chain stage: one structured access-log line per request, however it ends."""

from __future__ import annotations

import asyncio
from time import perf_counter_ns
from typing import Any

from aiohttp import web

from aigw.balancer.metrics import BALANCER_METRICS
from aigw.chain.exchange import Attempt, Exchange, Handler
from aigw.chain.info import RouteInfo
from aigw.consumers.metrics import AUTH_FAILURE_REASONS, CONSUMER_METRICS, RouteConsumerMetrics
from aigw.listener.connection import client_connection, cut_outcome
from aigw.logs import get_logger, scrubber
from aigw.metrics import RouteMetrics
from aigw.templates.resolve import Resolved

__all__ = ["access_log"]

_log = get_logger("aigw.access")

_CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer

_USER_AGENT_MAX = 200
"""Characters of the client's ``User-Agent`` logged: enough for the SDK, its
version and platform; a header is otherwise unbounded (up to aiohttp's 8 KiB)."""

_UPSTREAM_ANSWERED_ERROR = "upstream_error"
"""The outcome of a request the upstream answered with a 4xx or 5xx, relayed
as it came (``upstream_status`` says which)."""

_OWN_FAULTS = frozenset({"internal_error"})
"""Outcomes that are aigw's own bugs: logged at level ``error``."""


_UPSTREAM_FAILURES = frozenset(
    {
        "upstream_timeout",
        "upstream_tls_error",
        "upstream_unreachable",
        "upstream_error",
        "upstream_redirect",
        "upstream_idle_timeout",
        "upstream_reset",
        "upstream_truncated",
        "upstream_response_too_large",
        "upstream_event_too_large",
    }
)


def access_log(info: RouteInfo, metrics: RouteMetrics, next_: Handler) -> Handler:
    """Logs and counts the request once it has been answered, cancelled or has failed.

    The route's static fields and metric children are bound here, at compile
    time; per request only the measured values are added.
    """
    static: dict[str, Any] = {"route": info.name, "provider": info.provider}
    consumer_metrics = CONSUMER_METRICS.for_route(info.name)
    if info.log_statistics:
        static["model"] = info.model
        static["deployment"] = info.deployment

    async def stage(ex: Exchange) -> web.StreamResponse:
        status = 500
        # Kept to ask, if the request is cut, whether the client stopped
        # reading (the send deadline) or a shutdown cut it, rather than the
        # client went away.
        connection = client_connection(ex.request)
        # Counted in flight until the line is written: a deleted route's
        # series are dropped only once its last request has ended.
        metrics.enter()
        try:
            response = await next_(ex)
            status = response.status
            return response
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client disconnects.
            status = _CLIENT_CLOSED
            if ex.outcome in _CLIENT_GONE:
                ex.outcome = cut_outcome(connection)
            raise
        except ConnectionResetError:
            status = _CLIENT_CLOSED
            ex.outcome = cut_outcome(connection)
            raise
        finally:
            resolved = ex.resolved
            if resolved is None:
                _emit(ex, info, static, status)
                _count(ex, metrics, status)
            else:  # a templated route: its model and deployment are this request's
                _emit(ex, info, _resolved_fields(static, resolved), status)
                _count(ex, resolved.metrics, status)
            _count_consumer(ex, consumer_metrics, status)
            attempts = ex.attempts
            if attempts:  # a balanced route's
                balancer_metrics.count(attempts)
            metrics.leave()

    # Any route may be compiled with a balancer; series appear only once counted.
    balancer_metrics = BALANCER_METRICS.bind(info.name, stage)
    return stage


# Outcomes a cut connection overrides: none yet, or the relay's guess from a
# failed write (it cannot tell a closed connection from an aborted one).
_CLIENT_GONE = frozenset({"ok", "client_disconnect"})


def _count(ex: Exchange, metrics: RouteMetrics, status: int) -> None:
    # PERF: once per request; the series are plain lock-free accumulators
    # (aigw.metrics) and each field of the exchange is read once.
    metrics.count(status)
    started = ex.started_ns
    metrics.latency.observe((perf_counter_ns() - started) / 1e9)
    sent, headers = ex.upstream_sent_ns, ex.upstream_headers_ns
    if sent is not None and headers is not None:
        metrics.upstream_latency.observe((headers - sent) / 1e9)
    first_token = ex.first_token_ns
    if first_token is not None:
        metrics.ttft.observe((first_token - started) / 1e9)
    usage = ex.usage
    if usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt > 0:
            metrics.prompt_tokens.inc(prompt)
        if isinstance(completion, int) and completion > 0:
            metrics.completion_tokens.inc(completion)
    outcome = ex.outcome
    if outcome in _UPSTREAM_FAILURES:
        metrics.upstream_error(outcome)


def _count_consumer(ex: Exchange, metrics: RouteConsumerMetrics, status: int) -> None:
    consumer = ex.consumer
    if consumer is not None:  # only on a route with key-auth
        metrics.count(consumer.username, status, ex.usage)
    if status >= 400:
        reason = AUTH_FAILURE_REASONS.get(ex.outcome)
        if reason is not None:
            metrics.auth_failure(reason)


def _emit(ex: Exchange, info: RouteInfo, static: dict[str, Any], status: int) -> None:
    now = perf_counter_ns()
    request = ex.request
    headers = request.headers
    outcome = ex.outcome
    upstream_status = ex.upstream_status
    if outcome == "ok" and upstream_status is not None and upstream_status >= 400:
        # Relayed as it came, but a failure all the same: `aigw tail --errors`
        # and a reader grepping outcomes must see it as one.
        outcome = _UPSTREAM_ANSWERED_ERROR
    event: dict[str, Any] = {
        "request_id": ex.request_id,
        **static,
        "method": request.method,
        # The normalised path, never the query: query strings can carry keys.
        "path": ex.path,
        "status": status,
        "latency_ms": _ms(now - ex.started_ns),
        "upstream_latency_ms": _ms_between(ex.upstream_sent_ns, ex.upstream_headers_ns),
        "stream": ex.stream,
        "outcome": outcome,
        # A body never read (no route, refused early) still counts as sent: the
        # declared length says how much the client meant to send.
        "bytes_in": len(ex.client_body) or request.content_length or _streamed(ex),
        "bytes_out": ex.bytes_out,
        "client": request.remote,
        "generation": ex.generation,
        "user_agent": _user_agent(headers.get("User-Agent")),
        "retry_count": _retry_count(headers.get("x-stainless-retry-count")),
    }
    consumer = ex.consumer
    if consumer is not None:
        # Who, never the key: the username and the credential's derived id.
        event["consumer"] = consumer.username
        event["credential"] = ex.credential_id
    if upstream_status is not None:
        event["upstream_status"] = upstream_status
        event["api_version"] = ex.api_version
        event["upstream_request_id"] = ex.upstream_request_id
    if ex.stream:
        event["ttft_ms"] = _ms_between(ex.started_ns, ex.first_token_ns)
    if ex.usage_unavailable is not None:
        event["usage_unavailable"] = ex.usage_unavailable
    session = ex.session
    if session is not None:  # a realtime WebSocket session, logged when it closed
        event["bytes_in"] = session.bytes_in
        event["frames_in"] = session.frames_in
        event["frames_out"] = session.frames_out
        event["close_code"] = session.close_code
        event["closed_by"] = session.closed_by
        event["responses"] = session.responses
    attempts = ex.attempts
    if attempts is not None:
        # The target that answered (None: none did), then every try, in order.
        event["target"] = ex.target_name
        event["attempts"] = [_attempt(attempt) for attempt in attempts]
    if info.log_statistics:
        event["response_model"] = ex.response_model
        usage = ex.usage or {}
        event["prompt_tokens"] = usage.get("prompt_tokens")
        event["completion_tokens"] = usage.get("completion_tokens")
        event["total_tokens"] = usage.get("total_tokens")
    if ex.error is not None:
        event["error"] = ex.error
    if info.log_payloads:
        event["request_body"] = ex.client_body.decode("utf-8", "replace")
        if ex.response_body is not None:
            event["response_body"] = ex.response_body.decode("utf-8", "replace")
    if status < 500:
        _log.info("request", **event)
    elif outcome in _OWN_FAULTS:
        _log.error("request", **event)
    else:
        _log.warning("request", **event)


def _streamed(ex: Exchange) -> int:
    """Bytes of an upload streamed as it came (a chunked one declares no length)."""
    stream = ex.upstream_stream
    return 0 if stream is None else stream.received


def _attempt(attempt: Attempt) -> dict[str, Any]:
    # Names only: a target's name is its azure_instance or host, never a credential.
    return {
        "target": attempt.target,
        "status": attempt.status,
        "error": attempt.error,
        "ms": attempt.ms,
    }


def _user_agent(value: str | None) -> str | None:
    if value is None or len(value) <= _USER_AGENT_MAX:
        return value  # the renderer's scrubber still sees it whole
    # Scrubbed before the cut: a secret cut in half would no longer be found
    # in the rendered line, and its first half would be logged.
    return scrubber.scrub(value)[:_USER_AGENT_MAX]


def _retry_count(value: str | None) -> int | None:
    """The openai SDK's ``x-stainless-retry-count``: 0 on a first try, n on the n-th retry."""
    if value is None or len(value) > 6 or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def _ms_between(start: int | None, end: int | None) -> float | None:
    if start is None or end is None:
        return None
    return _ms(end - start)


def _resolved_fields(static: dict[str, Any], resolved: Resolved) -> dict[str, Any]:
    if "model" not in static:  # log_statistics is off
        return static
    target = resolved.target
    return {**static, "model": target.model, "deployment": target.deployment}
