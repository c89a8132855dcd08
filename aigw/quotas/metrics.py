"""Prometheus series of token quotas, exported on ``/metrics`` with aigw's others.

Plain accumulators (``aigw.metrics.CounterSeries``) bumped on the event-loop
thread, turned into metric families at scrape time, as ``aigw.metrics`` does
for the per-request series. Series are keyed by their label value, so a route
recompiled by a reload keeps counting; a route's series are dropped once no
compiled stage of that route is left (the route left every table, and its
last request ended), so deleted routes do not stay exported forever.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import prometheus_client.metrics
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from aigw.metrics import CounterSeries

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
        self._stages: dict[str, int] = {}  # route -> its compiled stages alive
        registry.register(_QuotaCollector(self))

    def bind(self, route: str, stage: object) -> tuple[CounterSeries, CounterSeries]:
        """*route*'s rejections and charged-tokens series, kept while *stage* (or another
        stage of the route) is alive."""
        self._stages[route] = self._stages.get(route, 0) + 1
        weakref.finalize(stage, self._release, route)
        return self.rejections_for(route), self.charged_for(route)

    def _release(self, route: str) -> None:
        left = self._stages[route] - 1
        if left:
            self._stages[route] = left
            return
        del self._stages[route]
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


class _QuotaCollector:
    def __init__(self, metrics: QuotaMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return self._families(describe=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(describe=False)

    def _families(self, *, describe: bool) -> Iterator[Metric]:
        metrics = self._metrics
        # As aigw.metrics: no _created samples when the process disabled them.
        created = getattr(prometheus_client.metrics, "_use_created", True)
        for (name, documentation), label, store in (
            (_REJECTIONS, "route", metrics.rejections),
            (_BACKEND_ERRORS, "backend", metrics.backend_errors),
            (_CHARGED, "route", metrics.charged),
        ):
            family = CounterMetricFamily(name, documentation, labels=[label])
            if not describe:
                for value, series in list(store.items()):
                    family.add_metric(
                        [value], series.value, created=series.created if created else None
                    )
            yield family


QUOTA_METRICS = QuotaMetrics()
"""The process's quota series."""
