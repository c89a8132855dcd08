"""How long an upstream answer asks to be left alone: ``retry-after-ms`` / ``retry-after``.

Read by the relay when a balanced route gives an answer back (a 429 cools its
target for that long); a parser of response headers, so it lives with the
upstream client, not with the balancer that acts on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER_S", "retry_after_s"]

MAX_RETRY_AFTER_S = 86_400.0
"""A retry-after longer than a day is a broken upstream, not a plan: ignored."""


def retry_after_s(headers: Iterable[tuple[str, str]], *, now: float | None = None) -> float | None:
    """Seconds a 429 (or 503) asks to wait, from its response headers; None when absent or absurd.

    ``retry-after-ms`` (Azure's, and the OpenAI SDK's preference) wins over
    ``retry-after`` (delay-seconds or an HTTP date, RFC 9110 §10.2.3). Negative,
    non-finite and over-a-day values are ignored. ``now`` is wall-clock seconds
    for an HTTP date (default ``time.time()``); a date in the past means 0.
    """
    seconds_value: str | None = None
    ms_value: str | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == "retry-after-ms":
            ms_value = value
        elif lowered == "retry-after":
            seconds_value = value
    if ms_value is not None:
        parsed = _number(ms_value)
        if parsed is not None:
            return _bounded(parsed / 1000.0)
    if seconds_value is None:
        return None
    parsed = _number(seconds_value)
    if parsed is not None:
        return _bounded(parsed)
    return _from_http_date(seconds_value, time.time() if now is None else now)


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def _bounded(seconds: float) -> float | None:
    if not math.isfinite(seconds) or seconds < 0.0 or seconds > MAX_RETRY_AFTER_S:
        return None
    return seconds


def _from_http_date(text: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322's UTC of unknown origin
        when = when.replace(tzinfo=UTC)
    delay = when.timestamp() - now
    return _bounded(max(delay, 0.0))
