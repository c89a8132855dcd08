"""Token counters in Redis, shared by every aigw process and host on the same Redis.

One round trip per admission: a Lua script reads every window's current and
previous counters, decides, and adds the request's reservation when it is
admitted (atomically, so concurrent admissions on other processes see it). At
most one round trip per charge, in the background: a pipeline of ``INCRBY`` +
``PEXPIRE`` per window key, carrying every charge queued while the previous
pipeline was in flight (under load, many charges per round trip).

Keys are ``aigw:tokens:{namespace}:{tokens_count_strategy}:{identifier
digest}:{window size s}:{window start s}``. The identifier (consumer name,
credential id, client IP or a header's digest) is hashed, so no client address
or key appears in Redis; each key expires once it can no longer be the current or previous window.

A ``RedisBackend`` is one Redis server as configured (one client, one
connection pool, for every limiter that uses it) plus its health: after a
failure it is skipped for ``BACKOFF_S`` so a dead Redis does not add its timeout
to every request, then tried again. Failures are logged once per transition
(``ratelimit_backend_error``, then ``ratelimit_backend_recovered``) and each is
counted in ``aigw_ratelimit_backend_errors_total``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from aigw.config.model import RedisConfig
from aigw.logs import get_logger
from aigw.metrics import CounterSeries
from aigw.quotas.metrics import QUOTA_METRICS

__all__ = [
    "BACKOFF_S",
    "MAX_PENDING_CHARGES",
    "BackendUnavailable",
    "RedisBackend",
    "RedisCounters",
    "identifier_digest",
]

_log = get_logger("aigw.quotas")

BACKOFF_S = 1.0
"""After a failure, Redis is left alone this long (the limiter counts locally meanwhile)."""

MAX_PENDING_CHARGES = 10_000
"""Charges queued for Redis at most; past it, a charge is counted locally."""

_MAX_CONNECTIONS = 64  # per backend and process; waiting for one is bounded by the timeout

# KEYS: per window, its current then its previous key.
# ARGV: window type, reservation, then per window: size ms, elapsed ms, threshold, key ttl ms.
# Returns {admitted (0/1), current 1, previous 1, current 2, previous 2, ...}.
# The estimate is computed as aigw.quotas.windows.estimate does, in the same
# order of double operations, so both sides agree on the verdict.
_ADMIT = """
local sliding = ARGV[1] == 'sliding'
local reservation = tonumber(ARGV[2])
local values = redis.call('MGET', unpack(KEYS))
local out = {1}
for i = 1, #KEYS / 2 do
  local current = tonumber(values[2 * i - 1]) or 0
  local previous = tonumber(values[2 * i]) or 0
  out[2 * i] = current
  out[2 * i + 1] = previous
  local base = 2 + (i - 1) * 4
  local size = tonumber(ARGV[base + 1])
  local spent = math.max(current, 0)
  if sliding then
    spent = spent + math.max(previous, 0) * (size - tonumber(ARGV[base + 2])) / size
  end
  if spent >= tonumber(ARGV[base + 3]) then
    out[1] = 0
  end
end
if out[1] == 1 and reservation > 0 then
  for i = 1, #KEYS / 2 do
    redis.call('INCRBY', KEYS[2 * i - 1], reservation)
    redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[2 + (i - 1) * 4 + 4])
  end
end
return out
"""

_KEY_GRACE_MS = 1000  # keys outlive their use a little: clocks of hosts differ


class BackendUnavailable(Exception):
    """Redis failed, timed out, or is being left alone after a recent failure."""


def identifier_digest(identifier: str) -> str:
    """The identifier as it appears in Redis keys: a digest, never the value."""
    return hashlib.blake2b(
        identifier.encode("utf-8", "surrogateescape"), digest_size=16
    ).hexdigest()


def _client(config: RedisConfig) -> redis.Redis:
    timeout = config.timeout / 1000
    kwargs: dict[str, Any] = {}
    if config.ssl:
        kwargs["connection_class"] = SSLConnection
        kwargs["ssl_cert_reqs"] = "required" if config.ssl_verify else "none"
        kwargs["ssl_check_hostname"] = config.ssl_verify
    pool = BlockingConnectionPool(
        host=config.host,
        port=config.port,
        db=config.database,
        username=config.username,
        password=config.password,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        # redis-py's default retries (timeouts included) would multiply the timeout: one
        # immediate retry, on a broken connection only, so that a pooled connection
        # to a Redis that restarted since is replaced instead of failing a request.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        max_connections=_MAX_CONNECTIONS,
        timeout=timeout,  # waiting for a free connection
        **kwargs,
    )
    return redis.Redis(connection_pool=pool)


class RedisBackend:
    """One configured Redis: its client, its health, and the charges in flight to it.

    Args:
        config: Where it is and how long a round trip may take.
    """

    def __init__(self, config: RedisConfig) -> None:
        self.label = f"redis://{config.host}:{config.port}/{config.database}"
        self.timeout_s = config.timeout / 1000
        self.client = _client(config)
        self.admit_script = self.client.register_script(_ADMIT)
        self._errors: CounterSeries = QUOTA_METRICS.backend_errors_for(self.label)
        self._down_until = 0.0  # time.monotonic()
        self._failing = False
        self._queue: list[tuple[list[tuple[str, int, int]], Callable[[], None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def available(self) -> bool:
        """False while recently failed (the back-off)."""
        return time.monotonic() >= self._down_until

    def retry_after_s(self) -> float:
        """Seconds left of the back-off."""
        return max(self._down_until - time.monotonic(), 0.0)

    def failed(self, error: BaseException, operation: str) -> None:
        """Counts a failure, starts the back-off, logs when Redis just went bad."""
        self._errors.inc()
        self._down_until = time.monotonic() + BACKOFF_S
        if not self._failing:
            self._failing = True
            _log.warning(
                "ratelimit_backend_error",
                backend=self.label,
                operation=operation,
                error=f"{type(error).__name__}: {error}"[:200],
                retry_in_s=BACKOFF_S,
            )

    def succeeded(self) -> None:
        """Notes a working round trip; logs when Redis just came back."""
        if self._failing:
            self._failing = False
            _log.info("ratelimit_backend_recovered", backend=self.label)

    def charge(self, increments: list[tuple[str, int, int]], fallback: Callable[[], None]) -> None:
        """Queues *increments* (key, tokens, ttl ms) for the next pipeline to Redis.

        Every charge queued while a pipeline is in flight goes out in the next
        one, so under load a round trip carries many charges (never more than
        one per charge). *fallback* runs instead when Redis cannot take them:
        in its back-off, with ``MAX_PENDING_CHARGES`` queued, or when the
        pipeline fails.
        """
        if not self.available() or len(self._queue) >= MAX_PENDING_CHARGES:
            fallback()
            return
        self._queue.append((increments, fallback))
        if self._flusher is None:
            # The event loop keeps only weak references to tasks: hold one.
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def drain(self) -> None:
        """Waits until every queued charge has been sent (or fallen back)."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._flusher = None

    async def _send(
        self, batch: list[tuple[list[tuple[str, int, int]], Callable[[], None]]]
    ) -> None:
        if not self.available():
            for _increments, fallback in batch:
                fallback()
            return
        # Charges of one identifier and window add up into one INCRBY.
        totals: dict[str, list[int]] = {}
        for increments, _fallback in batch:
            for key, amount, ttl_ms in increments:
                total = totals.get(key)
                if total is None:
                    totals[key] = [amount, ttl_ms]
                else:
                    total[0] += amount
                    total[1] = max(total[1], ttl_ms)
        pipe = self.client.pipeline(transaction=False)
        for key, (amount, ttl_ms) in totals.items():
            if amount:
                pipe.incrby(key, amount)
                pipe.pexpire(key, ttl_ms)
        if not len(pipe):
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await pipe.execute()
        except Exception as exc:
            self.failed(exc, "charge")
            for _increments, fallback in batch:
                fallback()
            return
        self.succeeded()

    async def aclose(self) -> None:
        """Lets queued charges go out (bounded by the timeout), then closes the client."""
        flusher = self._flusher
        if flusher is not None:
            await asyncio.wait({flusher}, timeout=self.timeout_s + 0.1)
            flusher.cancel()
        await self.client.aclose()
        # The client was given its pool, so it leaves the pool's connections open.
        await self.client.connection_pool.disconnect()


class RedisCounters:
    """One limiter's counters in one Redis.

    Args:
        backend: The Redis.
        namespace: Counters of the same namespace are shared.
        sizes_ms: The window sizes, in the order every call uses.
    """

    __slots__ = ("_prefix", "_sizes", "backend")

    def __init__(self, backend: RedisBackend, namespace: str, sizes_ms: tuple[int, ...]) -> None:
        self.backend = backend
        self._prefix = f"aigw:tokens:{namespace}:"
        self._sizes = sizes_ms

    def key(self, digest: str, size_ms: int, start_ms: int) -> str:
        """The key of one window of one identifier."""
        return f"{self._prefix}{digest}:{size_ms // 1000}:{start_ms // 1000}"

    async def admit(
        self,
        digest: str,
        now_ms: int,
        window_type: str,
        thresholds: tuple[int, ...],
        reservation: int,
    ) -> tuple[bool, list[tuple[int, int, int]]]:
        """Reads the counters, and adds *reservation* when every window is under its threshold.

        Returns the verdict and ``(current, previous, elapsed_ms)`` per window as read.

        Raises:
            BackendUnavailable: Redis failed, timed out, or is in its back-off.
        """
        backend = self.backend
        if not backend.available():
            raise BackendUnavailable
        keys: list[str] = []
        args: list[Any] = [window_type, reservation]
        elapsed: list[int] = []
        for size, threshold in zip(self._sizes, thresholds, strict=True):
            start = now_ms - now_ms % size
            keys.append(self.key(digest, size, start))
            keys.append(self.key(digest, size, start - size))
            elapsed.append(now_ms - start)
            args += (size, now_ms - start, threshold, start + 2 * size - now_ms + _KEY_GRACE_MS)
        try:
            async with asyncio.timeout(backend.timeout_s):
                reply = await backend.admit_script(keys=keys, args=args)
        except Exception as exc:
            backend.failed(exc, "admit")
            raise BackendUnavailable from exc
        backend.succeeded()
        counts = [
            (int(reply[1 + 2 * i]), int(reply[2 + 2 * i]), elapsed[i]) for i in range(len(elapsed))
        ]
        return reply[0] == 1, counts

    def settle(
        self,
        digest: str,
        now_ms: int,
        reserved: int,
        reserved_at_ms: int,
        actual: int,
        fallback: Callable[[], None],
    ) -> None:
        """Replaces a reservation by the tokens really spent, in the background.

        The reservation is taken back from the window it went into (while that
        window still counts) and *actual* counted in the current one. *fallback*
        runs instead when Redis cannot take it (see :meth:`RedisBackend.charge`).
        """
        increments: list[tuple[str, int, int]] = []
        for size in self._sizes:
            start = now_ms - now_ms % size
            reserved_start = reserved_at_ms - reserved_at_ms % size
            ttl_ms = start + 2 * size - now_ms + _KEY_GRACE_MS
            current = self.key(digest, size, start)
            if reserved_start == start:
                increments.append((current, actual - reserved, ttl_ms))
                continue
            if reserved_start == start - size and reserved:
                # The reservation went into what is now the previous window.
                previous = self.key(digest, size, reserved_start)
                increments.append((previous, -reserved, ttl_ms - size))
            increments.append((current, actual, ttl_ms))
        self.backend.charge(increments, fallback)
