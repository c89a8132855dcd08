"""Chain stage ``token_limit``: admit while the caller has tokens left, charge what was spent.

Per request: find the identifier, ask the limiter, set the ``x-ratelimit-*``
answer headers (on ``ex.response_headers``: the relay and ``error_response``
add them), refuse with 429 or call the rest of the chain, then charge.

What a request is charged (``tokens_count_strategy`` of the answer's usage):

* the answer's usage, when it gave one (a JSON body, or a stream's usage chunk,
  which the relay reads at the stream's end: a stream is never cut, it is
  charged when it ends, however far past the limit it went);
* else, when the request reached the upstream and no error status came back
  (a client gone mid-stream, an upstream timeout), its reservation: the
  prompt estimate with ``estimate_prompt``, nothing without;
* else nothing (refused before the upstream, or an upstream error answer).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from aigw.chain.exchange import Exchange, Handler
from aigw.chain.info import RouteInfo
from aigw.config.model import TokenLimitConfig
from aigw.errors import TooManyRequests
from aigw.quotas.limiter import Limiter
from aigw.quotas.metrics import QUOTA_METRICS
from aigw.quotas.windows import Admission, format_duration, reset_header_value
from aigw.upstream.headers import ANSWER_HEADER_NAMES

__all__ = ["limits_of", "prompt_estimate", "token_limit", "windows_of"]

_BYTES_PER_TOKEN = 4  # the usual rule of thumb for English text and BPE tokenizers


def windows_of(config: TokenLimitConfig) -> tuple[tuple[int, int], ...]:
    """``(window size ms, limit)`` pairs of the plugin's provider, shortest window first."""
    provider = config.llm_providers[0]  # aigw's routes are all azure (the checker says so)
    return tuple(
        sorted(
            (size * 1000, limit)
            for size, limit in zip(provider.window_size, provider.limit, strict=True)
        )
    )


def limits_of(config: TokenLimitConfig) -> tuple[int, ...]:
    """The limits, in the order of :func:`windows_of`."""
    return tuple(limit for _size, limit in windows_of(config))


def _identifier(config: TokenLimitConfig) -> Callable[[Exchange], str]:
    """The function that names whose tokens a request spends."""

    def ip(ex: Exchange) -> str:
        return f"ip:{ex.request.remote or '-'}"

    kind = config.identifier
    if kind == "consumer":

        def consumer(ex: Exchange) -> str:
            who = ex.consumer
            return ip(ex) if who is None else f"consumer:{who.username}"

        return consumer
    if kind == "credential":

        def credential(ex: Exchange) -> str:
            credential_id = ex.credential_id
            return ip(ex) if credential_id is None else f"credential:{credential_id}"

        return credential
    if kind == "header":
        name = config.header_name or ""
        prefix = f"header:{name.lower()}:"

        def header(ex: Exchange) -> str:
            value = ex.request.headers.get(name)
            if value is None:
                return ip(ex)
            # A digest: the value may be long, and it is the client's to choose.
            digest = hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=16)
            return prefix + digest.hexdigest()

        return header
    return ip


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of the text in a prompt, message content or input (str, parts, or lists)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list):
        return sum(_text_bytes(item) for item in value)
    if isinstance(value, dict):
        # A content part ({"type": "text", "text": ...}) or a message.
        return _text_bytes(value.get("text")) + _text_bytes(value.get("content"))
    return 0


def prompt_estimate(payload: dict[str, Any] | None) -> int:
    """Tokens a request may spend, before it is sent: its text / 4 plus its output cap."""
    if payload is None:
        return 0
    text = 0
    for field in ("messages", "prompt", "input"):
        text += _text_bytes(payload.get(field))
    cap = payload.get("max_completion_tokens", payload.get("max_tokens"))
    output = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else 0
    return -(-text // _BYTES_PER_TOKEN) + output


_LIMIT, _REMAINING, _RESET = ANSWER_HEADER_NAMES


def _headers(verdict: Admission) -> tuple[tuple[str, str], ...]:
    return (
        (_LIMIT, str(verdict.limit)),
        (_REMAINING, str(verdict.remaining)),
        (_RESET, reset_header_value(verdict.reset_ms)),
    )


def _spent(ex: Exchange, field: str, reservation: int) -> int:
    usage = ex.usage
    if usage is not None:
        tokens = usage.get(field)
        return tokens if isinstance(tokens, int) and tokens > 0 else 0
    if ex.upstream_sent_ns is None:
        return 0  # never reached the upstream
    status = ex.upstream_status
    return reservation if status is None or status < 400 else 0


def token_limit(
    info: RouteInfo, config: TokenLimitConfig, limiter: Limiter, next_: Handler
) -> Handler:
    """Builds the ``token_limit`` stage of one route over *limiter*."""
    windows = windows_of(config)
    limits = tuple(limit for _size, limit in windows)
    limit_of = dict(windows)
    identify = _identifier(config)
    field = config.tokens_count_strategy
    estimate = config.estimate_prompt
    hide = config.hide_client_headers
    fail_closed = config.fail_closed
    message = config.error_message
    remote = limiter.redis is not None

    def refuse(verdict: Admission) -> TooManyRequests:
        rejections.inc()
        retry_ms = verdict.retry_after_ms
        window_s = verdict.window_ms // 1000
        return TooManyRequests(
            "tokens_rate_limit_exceeded",
            f"{message}: the limit of {limit_of[verdict.window_ms]} tokens per {window_s} s "
            f"is spent; retry in {format_duration(retry_ms)}",
            headers={
                "retry-after": str(math.ceil(retry_ms / 1000)),
                "retry-after-ms": str(retry_ms),
            },
        )

    async def stage(ex: Exchange) -> web.StreamResponse:
        key = identify(ex)
        reservation = prompt_estimate(ex.payload) if estimate else 0
        admitted_at = time.time_ns() // 1_000_000
        if remote:
            verdict, decided_remotely = await limiter.admit(
                key, admitted_at, limits, reservation, fail_closed
            )
        else:
            verdict = limiter.admit_local(key, admitted_at, limits, reservation)
            decided_remotely = False
        if not hide:
            # Nothing else sets them before this stage (see ANSWER_HEADER_NAMES).
            ex.response_headers = _headers(verdict)
        if not verdict.admitted:
            raise refuse(verdict)
        try:
            return await next_(ex)
        finally:
            # Also on a client gone mid-stream (ConnectionResetError, or the task
            # cancelled): what is known is charged.
            tokens = _spent(ex, field, reservation)
            if tokens:
                charged.inc(tokens)
            limiter.charge(
                key, reservation, admitted_at, tokens, time.time_ns() // 1_000_000, decided_remotely
            )

    rejections, charged = QUOTA_METRICS.bind(info.name, stage)
    return stage
