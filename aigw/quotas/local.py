"""In-process token counters: one entry per identifier, bounded in number and in time.

Identifiers may be chosen by an attacker (a client IP, a header's value), so
the store never grows without bound: it holds at most ``max_keys`` entries,
evicting the least recently used first, and an entry unused for two of its
longest windows (after which it counts nothing) is dropped when the store
next grows. Every entry lives equally long after its last use, so the least
recently used entry is also the first to expire: both are at the front.

Not thread-safe by design: only the worker's event-loop thread touches it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

__all__ = ["DEFAULT_MAX_KEYS", "LocalCounters"]

DEFAULT_MAX_KEYS = 100_000
"""Identifiers one limiter remembers at most: about 330 bytes each with two windows (key
included), so some 33 MB for a limiter at its cap."""


# One identifier's counters, as one flat list (the smallest object that holds
# them: a store at its cap is ~100,000 of these): the expiry, then per window
# its start, current count and previous count.
_Entry = list[int]
_EXPIRES = 0


def _base(window: int) -> int:
    """Where window *window*'s ``start, current, previous`` begin in an entry."""
    return 1 + 3 * window


class LocalCounters:
    """Counters of one limiter, in this process.

    Args:
        sizes_ms: The window sizes, in the order every call uses.
        max_keys: Identifiers kept at most.
    """

    __slots__ = ("_entries", "_sizes", "_ttl_ms", "max_keys")

    def __init__(self, sizes_ms: tuple[int, ...], max_keys: int = DEFAULT_MAX_KEYS) -> None:
        # (base index in an entry, size) per window.
        self._sizes = tuple((_base(i), size) for i, size in enumerate(sizes_ms))
        # A window's count matters while it is the current or the previous one.
        self._ttl_ms = 2 * max(sizes_ms)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.max_keys = max_keys

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def counts(self, key: str, now_ms: int) -> list[tuple[int, int, int]]:
        """``(current, previous, elapsed_ms)`` per window for *key* at *now_ms*."""
        entry = self._entry(key, now_ms)
        return [(entry[b + 1], entry[b + 2], now_ms - entry[b]) for b, _size in self._sizes]

    def headroom(
        self, key: str, now_ms: int, limits: tuple[int, ...], reservation: int, sliding: bool
    ) -> tuple[int, int, int, int] | None:
        """The admitted case of `aigw.quotas.windows.admission`, read straight off the entry.

        Returns ``(limit, remaining, reset_ms, window_ms)`` of the most constrained
        window when every window admits a request reserving *reservation*; None
        when one would not, and the caller decides with the general code.

        PERF: nearly every request is far from its limit, and this is the whole
        cost of deciding it: no per-window objects, no function call per window
        (a test checks it agrees with ``admission`` on random counters).
        """
        entry = self._entry(key, now_ms)
        tight_left = math.inf
        tight = (0, 0, 0, 0)
        for (b, size), limit in zip(self._sizes, limits, strict=True):
            current = entry[b + 1]
            if current < 0:
                current = 0
            previous = entry[b + 2]
            elapsed = now_ms - entry[b]
            spent: float = current
            if sliding and previous > 0:
                spent += previous * (size - elapsed) / size
            if reservation > 0 and spent >= limit - min(reservation, limit - 1):
                return None
            if spent >= limit:
                return None
            left = limit - spent
            if left < tight_left:
                tight_left = left
                if current > 0:
                    reset = size - elapsed if not sliding else 2 * size - elapsed
                elif sliding and previous > 0:
                    reset = size - elapsed
                else:
                    reset = 0
                tight = (limit, 0, reset, size)
        limit, _, reset, size = tight
        reserved = min(max(reservation, 0), limit)
        return limit, max(math.floor(tight_left) - reserved, 0), reset, size

    def add(self, key: str, now_ms: int, amount: int) -> None:
        """Counts *amount* tokens in every window holding *now_ms*."""
        if amount:
            entry = self._entry(key, now_ms)
            for b, _size in self._sizes:
                entry[b + 1] += amount

    def settle(
        self, key: str, now_ms: int, reserved: int, reserved_at_ms: int, actual: int
    ) -> None:
        """Replaces a reservation of *reserved* tokens made at *reserved_at_ms* by *actual*.

        The reservation is taken back from the window it was counted in (if that
        window still counts), and *actual* is counted in the window holding *now_ms*.
        """
        if reserved == actual == 0:
            return
        entry = self._entry(key, now_ms)
        for b, size in self._sizes:
            reserved_start = reserved_at_ms - reserved_at_ms % size
            start = entry[b]
            if reserved_start == start:
                entry[b + 1] += actual - reserved
                continue
            if reserved_start == start - size:
                entry[b + 2] -= reserved
            entry[b + 1] += actual

    def _entry(self, key: str, now_ms: int) -> _Entry:
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            self._make_room(now_ms)
            entry = entries[key] = [0] * (1 + 3 * len(self._sizes))
        else:
            entries.move_to_end(key)
        entry[_EXPIRES] = now_ms + self._ttl_ms
        for b, size in self._sizes:
            start = now_ms - now_ms % size
            if start != entry[b]:
                # The window rolled: the old current one is the previous one
                # if it was the window just before, else both are history.
                entry[b + 2] = entry[b + 1] if start - entry[b] == size else 0
                entry[b + 1] = 0
                entry[b] = start
        return entry

    def _make_room(self, now_ms: int) -> None:
        entries = self._entries
        # Expired entries first (at the front, see the module docstring), then
        # the least recently used ones while the store is full.
        while entries:
            oldest = next(iter(entries.values()))
            if oldest[_EXPIRES] > now_ms and len(entries) < self.max_keys:
                break
            entries.popitem(last=False)
