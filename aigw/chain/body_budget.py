"""A worker's budget for buffered request-body bytes, shared by every request.

SECURITY: the body deadlines (``aigw.chain.body_reader``) bound how long a
client may hold a partial body, not how much of them the gateway holds at
once: 60 clients each sending all but one byte of an 8 MiB body cost 480 MiB
until their deadlines passed, and about 125 of them cross the systemd unit's
1 GiB ``MemoryMax``, where the OOM killer ends every stream in flight. So every
body byte the gateway holds is counted against one per-worker budget
(``--max-buffered-request-bytes``): a body as it is read, and the whole body
until its request ends (``ex.client_body`` keeps it alive while the upstream
answers, for the whole of a stream).

When a read would cross the budget, bytes are reclaimed from the bodies still
arriving that look most like an attacker's, rather than refusing whoever
happens to read next:

* The victim is the body that has gone *longest without a byte*, and only a
  body idle for at least ``_MIN_IDLE_S``: an attack that holds memory has to
  stop sending (or sending much) to hold it cheaply, while a legitimate upload
  is read continuously and a body that arrived with its head is never in the
  running. Measured first as bytes per second over a body's life, this picked
  badly under load: attackers that had sent 4 MiB in a burst a moment before
  "averaged" faster than a 1 MiB upload still arriving, which was refused.
* Bodies that have fully arrived are never evicted: their requests are being
  forwarded or streamed, and cutting one would fail work already paid for.
* Nothing is evicted in vain: if the idle bodies together would not make room,
  the reader itself is refused (it is the one asking for more); so is a body
  that arrives whole when no idle body can make room.

The evicted or refused request gets a 503 ``server_busy`` with
``Retry-After``, not a 408: the client broke no deadline, the gateway ran out
of room, and a retry a moment later may well fit (the openai SDK retries a 503
and honours ``Retry-After``). Its connection closes, since the rest of its
body will not be read. Its access-log line has the outcome ``body_buffer_full``.

The cost: a genuinely slow client that pauses longer than any attacker when
the budget is full is the one told to retry; the body deadlines end every
stall soon after.

Counted: the body bytes as they came. A route that rewrites the JSON also
holds the parsed payload and the rewritten copy, each about the body's size,
for requests that completed their body; partial bodies, which is what an
attacker can pile up, are counted exactly.

PERF: one event loop per worker, so no lock. A body that arrived with its head
(the usual SDK request) costs one ``reserve`` and one ``release``: a
comparison and two additions. Only a body still in flight is registered, and
the eviction scan runs only when the budget is full.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aigw.errors import ServiceUnavailable
from aigw.metrics import CounterSeries

__all__ = [
    "BODY_BUFFER_FULL",
    "BodyBudget",
    "BodyInFlight",
    "evicted_error",
]

BODY_BUFFER_FULL = "body_buffer_full"
"""The access log's outcome for a request evicted or refused by the budget."""

RETRY_AFTER_S = 1
"""What a refused client is told to wait: memory frees as soon as bodies finish
or deadlines pass, and a fast retry is what a legitimate client needs."""

_MIN_IDLE_S = 0.05
"""A body that read bytes more recently than this is arriving, not stalled:
never evicted (a reader's next read is microseconds to milliseconds away)."""


class BodyInFlight:
    """One request body still arriving: what it holds, since when, how to stop it.

    Attributes:
        held: Bytes reserved for it so far.
        last_read: When it last brought bytes (``time.monotonic``).
        evicted: Set when the budget took its bytes back; its reader answers 503.
    """

    __slots__ = ("_stop", "evicted", "held", "last_read")

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self.held = 0
        self.last_read = time.monotonic()
        self.evicted = False

    def evict(self) -> int:
        """Marks it evicted, wakes its reader and returns the bytes it held."""
        held, self.held = self.held, 0
        self.evicted = True
        self._stop()
        return held


class BodyBudget:
    """The bytes of request bodies one worker may hold at once.

    Args:
        limit: The budget in bytes (``--max-buffered-request-bytes``).

    Attributes:
        limit: The budget.
        held: Bytes reserved now (exported as a gauge).
        evictions: Requests answered 503 because the budget was full (a counter).
    """

    __slots__ = ("_arriving", "evictions", "held", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the request body budget must be >= 1 byte, got {limit}")
        self.limit = limit
        self.held = 0
        self.evictions = CounterSeries()
        self._arriving: set[BodyInFlight] = set()

    def reserve(self, size: int) -> None:
        """Reserves *size* bytes (at most ``limit``) for a body that has fully arrived.

        ``release`` them when the request ends.

        Raises:
            ServiceUnavailable: They do not fit, even after evicting every body
                still arriving.
        """
        if self.held + size > self.limit:
            self._reclaim(size, None, time.monotonic())
        self.held += size

    def release(self, size: int) -> None:
        """Gives back *size* bytes reserved by ``reserve`` or by a finished read."""
        self.held -= size

    def start(self, stop: Callable[[], None]) -> BodyInFlight:
        """Registers a body about to be read in parts; *stop* wakes its reader if evicted."""
        body = BodyInFlight(stop)
        self._arriving.add(body)
        return body

    def take(self, body: BodyInFlight, size: int) -> None:
        """Reserves *size* more bytes for *body*, which has just read them.

        The caller keeps ``body.held + size`` within ``limit``.

        Raises:
            ServiceUnavailable: the bodies idle long enough to evict would not
                make room; *body*'s bytes stay held until ``abandon``.
        """
        body.last_read = now = time.monotonic()
        if self.held + size > self.limit:
            self._reclaim(size, body, now)
        self.held += size
        body.held += size

    def finish(self, body: BodyInFlight) -> None:
        """*body* has fully arrived: no longer evictable; its bytes stay reserved."""
        self._arriving.discard(body)

    def abandon(self, body: BodyInFlight) -> None:
        """*body* will not be used (refused, timed out, failed): frees what it holds."""
        self._arriving.discard(body)
        self.held -= body.held
        body.held = 0

    def _reclaim(self, size: int, reader: BodyInFlight | None, now: float) -> None:
        """Evicts the bodies idle longest until *size* more bytes fit.

        Only bodies idle for ``_MIN_IDLE_S`` or more qualify, never *reader*
        (None: a body that arrived whole with its head). Nothing is evicted in
        vain: if all of them together would not make room, the reader is
        refused instead.
        """
        stalled_since = now - _MIN_IDLE_S
        idle = sorted(
            (body.last_read, id(body), body)
            for body in self._arriving
            if body is not reader and body.last_read <= stalled_since
        )
        missing = self.held + size - self.limit
        if sum(body.held for _, _, body in idle) < missing:
            self.evictions.inc()
            raise _busy("the gateway's buffer for request bodies is full")
        for _, _, body in idle:
            self._arriving.discard(body)
            freed = body.evict()
            self.held -= freed
            missing -= freed
            self.evictions.inc()
            if missing <= 0:
                return


def evicted_error() -> ServiceUnavailable:
    """The answer to a body evicted because it had sent nothing for longest."""
    return _busy(
        "the gateway's buffer for request bodies is full and this body had stalled the longest"
    )


def _busy(why: str) -> ServiceUnavailable:
    error = ServiceUnavailable(
        "server_busy",
        f"{why}; retry in a moment",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
    # The rest of the body is never read: it could not be told from the next request.
    error.close_connection = True
    return error
