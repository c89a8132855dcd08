"""Prometheus series of token quotas, exported on ``/metrics`` with aigw's others.

Plain accumulators (``aigw.metrics.CounterSeries``) bumped on the event-loop
thread, turned into metric families at scrape time, as ``aigw.metrics`` does
for the per-request series. Series are keyed by their label value, so a route
recompiled by a reload keeps counting; a route's series are dropped once no
compiled stage of that route is left (the route left every table, and its
last request ended), so deleted routes do not stay exported forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric

from aigw.metrics import CounterSeries, FamiliesCollector, RouteLifetimes, counter_family

__all__ = ["QUOTA_METRICS", "QuotaMetrics"]

_REJECTIONS = (
    "aigw_ratelimit_rejections",
    "Requests refused 429 because a token quota was spent, by route.",
)
_BACKEND_ERRORS = (
    "aigw_ratelimit_backend_errors",
    "Failed or timed-out calls to a shared quota backend (Redis), by backend.",
)
_CHARGED = (
    "aigw_ratelimit_tokens_charged",
    "Tokens charged to quotas (the configured tokens_count_strategy), by route.",
)


class QuotaMetrics:
    """The quota series of one process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.rejections: dict[str, CounterSeries] = {}  # route
        self.backend_errors: dict[str, CounterSeries] = {}  # backend
        self.charged: dict[str, CounterSeries] = {}  # route
        self._lifetimes = RouteLifetimes(self._forget)
        registry.register(FamiliesCollector(partial(_families, self)))

    def bind(self, route: str, stage: object) -> tuple[CounterSeries, CounterSeries]:
        """*route*'s rejections and charged-tokens series, kept while *stage* (or another
        stage of the route) is alive."""
        self._lifetimes.hold(route, stage)
        return self.rejections_for(route), self.charged_for(route)

    def _forget(self, route: str) -> None:
        self.rejections.pop(route, None)
        self.charged.pop(route, None)

    def rejections_for(self, route: str) -> CounterSeries:
        """The ``aigw_ratelimit_rejections_total`` series of *route*."""
        return self.rejections.setdefault(route, CounterSeries())

    def backend_errors_for(self, backend: str) -> CounterSeries:
        """The ``aigw_ratelimit_backend_errors_total`` series of *backend*."""
        return self.backend_errors.setdefault(backend, CounterSeries())

    def charged_for(self, route: str) -> CounterSeries:
        """The ``aigw_ratelimit_tokens_charged_total`` series of *route*."""
        return self.charged.setdefault(route, CounterSeries())


def _families(metrics: QuotaMetrics, describe: bool, created: bool) -> Iterator[Metric]:
    for (name, documentation), label, store in (
        (_REJECTIONS, "route", metrics.rejections),
        (_BACKEND_ERRORS, "backend", metrics.backend_errors),
        (_CHARGED, "route", metrics.charged),
    ):
        yield counter_family(name, documentation, [label], store, created, describe)


QUOTA_METRICS = QuotaMetrics()
"""The process's quota series."""
