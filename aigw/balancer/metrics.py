"""Prometheus series of balanced routes, exported on ``/metrics`` with aigw's others.

* ``aigw_upstream_requests_total{route,target,status}``: one per attempt; ``status`` is
  the upstream's HTTP status, or what failed instead (``upstream_unreachable``,
  ``upstream_connect_timeout``, ...) when it did not answer.
* ``aigw_failovers_total{route,from,reason}``: an attempt that was followed by another;
  ``reason`` is the ``failover_criteria`` word the failure falls under (``http_429``,
  ``http_503``, ``timeout``, ``error``) or, for a status no criterion names (a stale
  Entra token's 401), ``http_<status>`` too.
* ``aigw_target_ejections_total{route,target}``: the circuit breaker opened.
* ``aigw_target_state{route,target,state}``: 1 for the target's current state, 0 for
  the three others (``closed``, ``open``, ``half-open``, ``cooling``), read from the live
  ``TargetState`` s at scrape time.

How they are fed: the access-log stage calls :meth:`RouteBalancerMetrics.count` with
``ex.attempts`` once per balanced request (attempts and failovers need nothing from the
``balance`` stage); the ``balance`` stage calls :meth:`RouteBalancerMetrics.ejected`
(``BALANCER_METRICS.for_route(route)``) when ``TargetState.failed`` returns True; the
state gauge reads the pools of the
serving table through the source :meth:`BalancerMetrics.watch` was given (the admin
listener gives it the reloader's table).

Plain accumulators bumped on the event-loop thread, turned into families at scrape
time, as :mod:`aigw.metrics` does. A route's counters are kept across recompiles and
dropped once no compiled stage of the route is alive (as :mod:`aigw.quotas.metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from aigw.balancer.state import TargetState, TargetStatus
from aigw.chain.exchange import Attempt
from aigw.metrics import CounterSeries, FamiliesCollector, RouteLifetimes, counter_family

__all__ = [
    "BALANCER_METRICS",
    "STATES",
    "BalancerMetrics",
    "PoolView",
    "RouteBalancerMetrics",
    "failover_reason",
]

STATES: Final[tuple[TargetStatus, ...]] = ("closed", "open", "half-open", "cooling")

_UPSTREAM_REQUESTS = (
    "aigw_upstream_requests",
    "Attempts sent to a balanced route's targets, by route, target and upstream status "
    "(or the failure, when the target did not answer).",
)
_FAILOVERS = (
    "aigw_failovers",
    "Attempts that failed and were followed by another, by route, the target failed "
    "over from and the failover criterion (http_429, http_503, timeout, error).",
)
_EJECTIONS = (
    "aigw_target_ejections",
    "Times a target's circuit breaker opened (max_fails failures within fail_timeout).",
)
_STATE = (
    "aigw_target_state",
    "A balanced route's target state: 1 for the current one of closed, open (ejected), "
    "half-open (probing) and cooling (after a 429's retry-after), 0 for the others.",
)

_TIMEOUTS: Final = frozenset({"upstream_timeout", "upstream_connect_timeout"})

PoolView = tuple[str, Sequence[tuple[str, TargetState]]]
"""A route's name and its targets' names and states, in config order."""


def failover_reason(attempt: Attempt) -> str:
    """The ``failover_criteria`` word an attempt's failure falls under."""
    if attempt.status is not None:
        return f"http_{attempt.status}"
    return "timeout" if attempt.error in _TIMEOUTS else "error"


class RouteBalancerMetrics:
    """One route's balancer series, bound when the route is compiled."""

    __slots__ = ("__weakref__", "_attempts", "_ejections", "_failovers", "_metrics", "_route")

    def __init__(self, metrics: BalancerMetrics, route: str) -> None:
        self._metrics = metrics
        self._route = route
        # Pre-resolved children, keyed without the route label: one dict lookup each.
        self._attempts: dict[tuple[str, int | str], CounterSeries] = {}
        self._failovers: dict[tuple[str, str], CounterSeries] = {}
        self._ejections: dict[str, CounterSeries] = {}

    def count(self, attempts: list[Attempt]) -> None:
        """Counts one request's attempts, and a failover for every attempt but the last."""
        # PERF: once per balanced request; most have one attempt, so the failover
        # loop is skipped without slicing.
        children = self._attempts
        for attempt in attempts:
            status = attempt.status
            key = (attempt.target, status if status is not None else attempt.error or "error")
            series = children.get(key)
            if series is None:
                series = children[key] = self._metrics.series(
                    self._metrics.upstream_requests, (self._route, key[0], str(key[1]))
                )
            series.value += 1
        if len(attempts) > 1:
            for attempt in attempts[:-1]:
                moved = (attempt.target, failover_reason(attempt))
                series = self._failovers.get(moved)
                if series is None:
                    series = self._failovers[moved] = self._metrics.series(
                        self._metrics.failovers, (self._route, *moved)
                    )
                series.value += 1

    def ejected(self, target: str) -> None:
        """Counts one ejection of *target* (``TargetState.failed`` returned True)."""
        series = self._ejections.get(target)
        if series is None:
            series = self._ejections[target] = self._metrics.series(
                self._metrics.ejections, (self._route, target)
            )
        series.value += 1


class BalancerMetrics:
    """The balancer series of one process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.upstream_requests: dict[tuple[str, ...], CounterSeries] = {}  # route, target, status
        self.failovers: dict[tuple[str, ...], CounterSeries] = {}  # route, from, reason
        self.ejections: dict[tuple[str, ...], CounterSeries] = {}  # route, target
        self._lifetimes = RouteLifetimes(self._forget)
        self._pools: Callable[[], Iterable[PoolView]] = tuple
        self._clock: Callable[[], float] = time.monotonic
        registry.register(FamiliesCollector(partial(_families, self)))

    def bind(self, route: str, stage: object) -> RouteBalancerMetrics:
        """*route*'s series, kept while *stage* (or another compiled stage of the route)
        is alive; the totals carry on across recompiles."""
        self._lifetimes.hold(route, stage)
        return RouteBalancerMetrics(self, route)

    def for_route(self, route: str) -> RouteBalancerMetrics:
        """*route*'s series for a stage compiled with the route's ``access_log`` (the
        ``balance`` stage): they live as long as the route's access-log binding."""
        return RouteBalancerMetrics(self, route)

    def watch(
        self, pools: Callable[[], Iterable[PoolView]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Reads the target state gauge from *pools* (the serving table's) at scrape time."""
        self._pools = pools
        self._clock = clock

    def series(
        self, store: dict[tuple[str, ...], CounterSeries], key: tuple[str, ...]
    ) -> CounterSeries:
        """The series of *store* for *key*, created on first use."""
        series = store.get(key)
        if series is None:
            series = store[key] = CounterSeries()
        return series

    def _forget(self, route: str) -> None:
        for store in (self.upstream_requests, self.failovers, self.ejections):
            for key in [key for key in store if key[0] == route]:
                del store[key]

    def states(self) -> Iterator[tuple[str, str, TargetStatus]]:
        """(route, target, state) of every target of the watched pools, now."""
        now = self._clock()
        for route, targets in self._pools():
            for name, state in targets:
                yield route, name, state.status(now)


def _families(metrics: BalancerMetrics, describe: bool, created: bool) -> Iterator[Metric]:
    yield counter_family(
        *_UPSTREAM_REQUESTS,
        ["route", "target", "status"],
        metrics.upstream_requests,
        created,
        describe,
    )
    yield counter_family(
        *_FAILOVERS, ["route", "from", "reason"], metrics.failovers, created, describe
    )
    yield counter_family(*_EJECTIONS, ["route", "target"], metrics.ejections, created, describe)
    gauge = GaugeMetricFamily(*_STATE, labels=["route", "target", "state"])
    if not describe:
        for route, target, current in metrics.states():
            for state in STATES:
                gauge.add_metric([route, target, state], 1.0 if state == current else 0.0)
    yield gauge


BALANCER_METRICS = BalancerMetrics()
"""The process's balancer series."""
