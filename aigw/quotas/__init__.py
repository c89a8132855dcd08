"""Token quotas (Kong's ``ai-rate-limiting-advanced``), in process or shared through Redis.

Modules: ``windows`` (the window math), ``local`` (in-process counters),
``redis_counters`` (counters in Redis and its health), ``limiter`` (verdicts,
charges, the fail-open fallback), ``stage`` (the chain stage), ``metrics``.

The ``QuotaRegistry`` is the process's quota state, owned by the app like the
upstream pool (created by ``aigw.server``, handed to the reloader, closed at
shutdown). It gives every route compiled with the same counting setup the same
limiter, so an unchanged plugin config keeps counting across reloads, and
owns one Redis client per distinct ``RedisConfig``.
"""

from __future__ import annotations

import weakref

from aigw.chain.exchange import Handler
from aigw.chain.info import RouteInfo
from aigw.config.model import RedisConfig, TokenLimitConfig
from aigw.quotas.limiter import Limiter
from aigw.quotas.redis_counters import RedisBackend, RedisCounters
from aigw.quotas.stage import token_limit, windows_of

__all__ = ["QuotaRegistry"]

_LimiterKey = tuple[object, ...]


class QuotaRegistry:
    """The process's quota state and Redis clients; owned by the app, never by a table."""

    def __init__(self) -> None:
        # Held strongly by the compiled chains that use them: a limiter goes
        # when the last route using it has left every table.
        self._limiters: weakref.WeakValueDictionary[_LimiterKey, Limiter] = (
            weakref.WeakValueDictionary()
        )
        self._backends: dict[RedisConfig, RedisBackend] = {}

    def stage(
        self, info: RouteInfo, config: TokenLimitConfig, namespace: str, next_: Handler
    ) -> Handler:
        """Builds the token-limit stage for one route (at compile time, never per request)."""
        return token_limit(info, config, self.limiter(config, namespace), next_)

    def limiter(self, config: TokenLimitConfig, namespace: str) -> Limiter:
        """The limiter of *config*'s counting setup in *namespace*, the same one on every call.

        Its key is all that decides what a counter means: the namespace, whose
        tokens (identifier kind and header), the window type and sizes, which
        usage field, and where the counters live. The limits are not part of it:
        a reload that only changes them keeps the counts.
        """
        sizes = tuple(size for size, _limit in windows_of(config))
        redis_config = config.redis if config.strategy == "redis" else None
        header = config.header_name.lower() if config.header_name else None
        key: _LimiterKey = (
            namespace,
            config.identifier,
            header,
            config.window_type,
            sizes,
            config.tokens_count_strategy,
            redis_config,
        )
        limiter = self._limiters.get(key)
        if limiter is None:
            counters = None
            if redis_config is not None:
                # What is counted is part of the key: prompt tokens and total
                # tokens of one namespace are different counters. (Fixed and
                # sliding windows count in the same buckets, so may share.)
                counted = f"{namespace}:{config.tokens_count_strategy}"
                counters = RedisCounters(self._backend(redis_config), counted, sizes)
            limiter = Limiter(config.window_type, sizes, counters)
            self._limiters[key] = limiter
        return limiter

    def _backend(self, config: RedisConfig) -> RedisBackend:
        backend = self._backends.get(config)
        if backend is None:
            backend = self._backends[config] = RedisBackend(config)
        return backend

    async def aclose(self) -> None:
        """Waits briefly for charges in flight to Redis, then closes every Redis client."""
        backends = list(self._backends.values())
        self._backends.clear()
        for backend in backends:
            await backend.aclose()
