"""A limiter: the counters of one quota (local, or Redis with a local fallback) and its verdicts.

One limiter exists per distinct counting setup (namespace, identifier, windows,
count strategy, backend; see ``aigw.quotas.QuotaRegistry``); the routes that
share it may each bring their own limits.

Redis failing or timing out never fails a request on its own account: by
default the limiter counts in its local counters meanwhile (fail open); with
``fail_closed`` it answers 503. A charge to Redis runs in the background, so it
never delays the answer; when it fails the tokens are counted locally.
"""

from __future__ import annotations

import math

from aigw.errors import ServiceUnavailable
from aigw.quotas.local import DEFAULT_MAX_KEYS, LocalCounters
from aigw.quotas.redis_counters import BackendUnavailable, RedisCounters, identifier_digest
from aigw.quotas.windows import Admission, WindowCounts, WindowType, admission, threshold

__all__ = ["Limiter"]


class Limiter:
    """The counters of one quota and how to decide and charge against them.

    Args:
        window_type: ``sliding`` or ``fixed``.
        sizes_ms: The window sizes, in the order limits are given.
        redis: The shared counters, for ``strategy: redis``; None counts locally only.
        max_keys: Identifiers the local counters keep at most.
    """

    __slots__ = ("__weakref__", "local", "redis", "sizes_ms", "window_type")

    def __init__(
        self,
        window_type: WindowType,
        sizes_ms: tuple[int, ...],
        redis: RedisCounters | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.window_type: WindowType = window_type
        self.sizes_ms = sizes_ms
        self.local = LocalCounters(sizes_ms, max_keys)
        self.redis = redis

    def admit_local(
        self, key: str, now_ms: int, limits: tuple[int, ...], reservation: int
    ) -> Admission:
        """Decides on a request with the local counters; counts its reservation if admitted."""
        local = self.local
        fast = local.headroom(key, now_ms, limits, reservation, self.window_type == "sliding")
        if fast is not None:
            if reservation:
                local.add(key, now_ms, reservation)
            return Admission(True, 0, *fast)
        verdict = self._verdict(local.counts(key, now_ms), limits, reservation)
        if verdict.admitted and reservation:
            local.add(key, now_ms, reservation)
        return verdict

    async def admit(
        self,
        key: str,
        now_ms: int,
        limits: tuple[int, ...],
        reservation: int,
        fail_closed: bool,
    ) -> tuple[Admission, bool]:
        """Decides on a request with Redis; returns the verdict and whether Redis decided.

        Raises:
            ServiceUnavailable: Redis cannot be used and the quota fails closed.
        """
        redis = self.redis
        assert redis is not None, "a local limiter decides with admit_local"
        thresholds = tuple(threshold(limit, reservation) for limit in limits)
        try:
            admitted, counts = await redis.admit(
                identifier_digest(key), now_ms, self.window_type, thresholds, reservation
            )
        except BackendUnavailable:
            if fail_closed:
                retry = max(math.ceil(redis.backend.retry_after_s()), 1)
                raise ServiceUnavailable(
                    "rate_limit_backend_unavailable",
                    "the token quota cannot be checked now (its counters are unreachable); "
                    "retry later",
                    headers={"retry-after": str(retry)},
                ) from None
            return self.admit_local(key, now_ms, limits, reservation), False
        verdict = self._verdict(counts, limits, reservation)
        if verdict.admitted != admitted:  # Redis decided; the verdict only explains it
            verdict = verdict._replace(admitted=admitted, retry_after_ms=0 if admitted else 1)
        return verdict, True

    def charge(
        self, key: str, reserved: int, reserved_at_ms: int, actual: int, now_ms: int, remote: bool
    ) -> None:
        """Replaces the request's reservation by the *actual* tokens it spent.

        *remote*: the admission was decided by Redis, so the charge goes there, in
        the background; it is counted locally when Redis cannot take it.
        """
        if not remote:
            self.local.settle(key, now_ms, reserved, reserved_at_ms, actual)
            return
        if reserved == actual == 0:
            return
        redis = self.redis
        assert redis is not None
        local = self.local

        def count_here() -> None:
            # The reservation, if any, stays in Redis; the real tokens count here.
            local.add(key, now_ms, actual)

        redis.settle(identifier_digest(key), now_ms, reserved, reserved_at_ms, actual, count_here)

    def _verdict(
        self, counts: list[tuple[int, int, int]], limits: tuple[int, ...], reservation: int
    ) -> Admission:
        windows = tuple(
            [
                WindowCounts(size, limit, *count)
                for size, limit, count in zip(self.sizes_ms, limits, counts, strict=True)
            ]
        )
        return admission(self.window_type, windows, reservation)
