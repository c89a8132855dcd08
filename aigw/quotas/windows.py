"""Window math of token quotas: pure functions of counts and times, no state, no I/O.

Times are integer milliseconds of the wall clock (shared with Redis by every
process and host). A window of size ``W`` starting at ``s`` covers
``[s, s + W)``; window starts are multiples of ``W`` since the epoch, so every
process agrees on them without talking to each other.

* ``fixed``: the estimate is the current window's count; it drops to zero when
  the window ends.
* ``sliding``: Kong's weighted estimate. The sliding window of length ``W``
  ending now overlaps the previous fixed window by ``W - elapsed``; assuming the
  previous window's tokens were spread evenly, that part counts:
  ``estimate = current + previous * (W - elapsed) / W``.

A request is admitted while ``estimate < threshold`` in every window, where the
threshold is the window's limit less the request's own reservation
(``estimate_prompt``). Without new tokens an estimate never grows, so the wait
until admission is the largest of the windows' waits.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

__all__ = [
    "Admission",
    "WindowCounts",
    "WindowType",
    "admission",
    "estimate",
    "format_duration",
    "full_reset_ms",
    "reset_header_value",
    "threshold",
    "wait_ms",
    "window_start",
]

WindowType = Literal["fixed", "sliding"]


def window_start(now_ms: int, size_ms: int) -> int:
    """The start of the fixed window of *size_ms* that holds *now_ms*."""
    return now_ms - now_ms % size_ms


class WindowCounts(NamedTuple):
    """One window's counters as read at ``now``.

    Attributes:
        size_ms: The window length.
        limit: Tokens allowed per window.
        current: Tokens counted in the fixed window holding ``now`` (reservations included).
        previous: Tokens counted in the window before it.
        elapsed_ms: ``now`` less the current window's start, ``0 <= elapsed_ms < size_ms``.
    """

    size_ms: int
    limit: int
    current: int
    previous: int
    elapsed_ms: int


def estimate(kind: WindowType, counts: WindowCounts) -> float:
    """The tokens *counts* says were spent in the window ending now."""
    # Settling a reservation can leave a counter below zero: it counts as none.
    current = max(counts.current, 0)
    if kind == "fixed":
        return float(current)
    previous = max(counts.previous, 0)
    size = counts.size_ms
    return current + previous * (size - counts.elapsed_ms) / size


def wait_ms(kind: WindowType, counts: WindowCounts, threshold: float) -> int:
    """Whole milliseconds from now until the estimate is below *threshold*; 0 when it is.

    The first whole millisecond at which the window admits (nobody spending
    meanwhile). *threshold* must be positive: an estimate reaches 0 at the
    latest one whole window after the current one ends.
    """
    if estimate(kind, counts) < threshold:
        return 0
    size, elapsed = counts.size_ms, counts.elapsed_ms
    left = size - elapsed  # until the current window ends
    if kind == "fixed":
        return left  # the next window starts empty
    current = max(counts.current, 0)
    if current >= threshold:
        # Even the previous window's share gone, the current count alone is too
        # much: wait into the next window, where it becomes the previous one and
        # its share shrinks: current * (size - e) / size < threshold.
        exact = left + size * (1 - threshold / current)
    else:
        # Within this window: current + previous * (left - d) / size < threshold.
        previous = max(counts.previous, 0)
        exact = left - (threshold - current) * size / previous
    # The estimate equals the threshold at exactly ``exact`` and is below it
    # strictly after.
    return math.floor(exact) + 1


def full_reset_ms(kind: WindowType, counts: WindowCounts) -> int:
    """Milliseconds until the window's estimate is back to zero (OpenAI's ``reset``)."""
    left = counts.size_ms - counts.elapsed_ms
    if counts.current > 0:
        return left if kind == "fixed" else left + counts.size_ms
    if kind == "sliding" and counts.previous > 0:
        return left
    return 0


class Admission(NamedTuple):
    """The verdict on one request over all its windows.

    Attributes:
        admitted: Every window has room for it.
        retry_after_ms: When refused, the first whole millisecond from now at which
            every window would admit it (nobody spending meanwhile); 0 when admitted.
        limit: The most constrained window's limit (``x-ratelimit-limit-tokens``).
        remaining: Tokens left in that window, after this request's reservation.
        reset_ms: Milliseconds until that window is back to its full limit.
        window_ms: The size of the window that refused (the longest wait), or of
            the most constrained one when admitted.
    """

    admitted: bool
    retry_after_ms: int
    limit: int
    remaining: int
    reset_ms: int
    window_ms: int


def threshold(limit: int, reservation: int) -> int:
    """The estimate a window must stay under to admit a request reserving *reservation*.

    The reservation is capped at ``limit - 1``: a request estimated larger than
    the whole limit is still admitted into an (almost) empty window, rather than
    refused forever.
    """
    return limit - min(max(reservation, 0), limit - 1)


def admission(
    kind: WindowType, windows: tuple[WindowCounts, ...], reservation: int = 0
) -> Admission:
    """Decides on a request that reserves *reservation* tokens, given *windows*' counts.

    The counts are those read before the reservation is added.
    """
    admitted = True
    longest_wait = 0
    refusing: WindowCounts | None = None
    tightest: WindowCounts = windows[0]
    tightest_left = math.inf
    for counts in windows:
        spent = estimate(kind, counts)
        # PERF: threshold() inlined (this loop runs per request and window).
        limit = counts.limit
        bound = limit - min(reservation, limit - 1) if reservation > 0 else limit
        if spent >= bound:
            admitted = False
            wait = wait_ms(kind, counts, bound)
            if refusing is None or wait > longest_wait:
                longest_wait, refusing = wait, counts
        left = limit - spent
        if left < tightest_left:
            tightest_left, tightest = left, counts
    # Positional: a NamedTuple built from keywords costs twice as much (per request).
    if admitted:
        reserved = min(max(reservation, 0), tightest.limit)
        remaining = max(math.floor(tightest_left) - reserved, 0)
        return Admission(
            True, 0, tightest.limit, remaining, full_reset_ms(kind, tightest), tightest.size_ms
        )
    assert refusing is not None
    return Admission(
        False,
        longest_wait,
        tightest.limit,
        max(math.floor(tightest_left), 0),
        full_reset_ms(kind, tightest),
        refusing.size_ms,
    )


def format_duration(ms: int) -> str:
    """*ms* in OpenAI's ``x-ratelimit-reset-*`` format (Go's): ``250ms``, ``1.5s``, ``6m0s``."""
    if ms <= 0:
        return "0s"  # as Go spells a zero duration
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def reset_header_value(ms: int) -> str:
    """``x-ratelimit-reset-tokens`` for a reset *ms* away: whole seconds (rounded up) from
    one second on, as OpenAI's own values are, milliseconds below."""
    return _reset_text(ms if ms < 1000 else -(-ms // 1000) * 1000)


# PERF: one string per distinct value (at most a day of seconds plus a second of ms),
# rendered once, not per answer.
_reset_text = functools.lru_cache(maxsize=4096)(format_duration)
