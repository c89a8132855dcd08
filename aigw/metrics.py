"""Prometheus metrics, served on the admin listener at ``/metrics``.

PERF: the per-request metrics are plain accumulators, not prometheus_client
metric objects. Every ``inc``/``observe`` of a prometheus_client child takes a
``threading.Lock``; here all updates happen on the worker's event-loop thread,
so the locks only cost time (about 4% of a worker's CPU in profiles). The
accumulators are ints and floats in ``__slots__`` objects, each histogram a
list of per-bucket counts plus a sum, and a custom collector turns them into
metric families when ``/metrics`` is scraped.

Series are owned by ``Metrics`` and keyed by their label values, so a route
recompiled under the same name on a hot reload keeps counting from its old
totals, as prometheus_client's ``labels()`` children did. A route gone from the
serving table has its series dropped (``Metrics.retain``) once its last
in-flight request has ended, so deleted routes do not stay exported forever. The series are
resolved once per route when its chain is compiled (``RouteMetrics``); per
request the access-log stage only bumps pre-bound accumulators, plus one dict
lookup for the status code.

The connection series (``ListenerSeries``) are plain accumulators too: the
listener's accept loop bumps them once per connection, never per request. The
request-body budget (``aigw.chain.body_budget``) is read where it keeps its
own count: nothing is updated twice per body.

The cold metrics (config generation, rejected files, reloads, routes) are
ordinary prometheus_client objects: they move once per reload.

Not thread-safe by design: only the event-loop thread may update the
per-request series. A scrape from another thread sees each value whole, though
a histogram's sum can be one observation apart from its buckets.
"""

from __future__ import annotations

import functools
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol, TypeVar

import prometheus_client.metrics
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = [
    "METRICS",
    "UNMATCHED_ROUTE",
    "BodyBudgetSeries",
    "CounterSeries",
    "FamiliesCollector",
    "HistogramSeries",
    "ListenerSeries",
    "Metrics",
    "RouteActivity",
    "RouteLifetimes",
    "RouteMetrics",
    "StreamsInFlight",
    "counter_family",
]

# LLM calls span milliseconds (errors, embeddings) to minutes (long generations).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)

_REQUESTS = ("aigw_requests", "Requests answered, by route, HTTP status and configured model.")
_LATENCY = (
    "aigw_request_duration_seconds",
    "Time from request received to response finished (whole stream for SSE).",
)
_UPSTREAM_LATENCY = (
    "aigw_upstream_duration_seconds",
    "Time from request sent upstream to upstream response headers.",
)
_TTFT = (
    "aigw_time_to_first_token_seconds",
    "Streams: time from request received to the first token relayed.",
)
_TOKENS = (
    "aigw_tokens",
    "Tokens reported by the upstream, by route, model and kind (prompt/completion).",
)
_UPSTREAM_ERRORS = (
    "aigw_upstream_errors",
    "Upstream failures by route and kind (unreachable, timeout, reset, truncated, ...).",
)
_STREAMS_IN_FLIGHT = ("aigw_streams_in_flight", "SSE streams being relayed right now.")
_CLIENT_CONNECTIONS = (
    "aigw_client_connections",
    "Client connections open now, by listener (proxy, admin).",
)
_MAX_CLIENT_CONNECTIONS = (
    "aigw_max_client_connections",
    "Most client connections a listener serves at once (--max-connections, or derived "
    "from the open-file limit).",
)
_CONNECTION_LIMIT_REACHED = (
    "aigw_connection_limit_reached",
    "Times a listener reached its connection limit with no idle connection to reclaim and "
    "stopped accepting; new connections wait in the kernel's listen queue until one closes.",
)
_CONNECTIONS_RECLAIMED = (
    "aigw_connections_reclaimed",
    "Idle client connections (keep-alive, or no byte of a request yet) a listener closed, "
    "longest idle first, to accept a new one at its connection limit.",
)

_BODY_BUFFERED = (
    "aigw_request_body_buffered_bytes",
    "Request-body bytes held in memory now: bodies being read, and bodies of requests in progress.",
)
_BODY_BUFFER_LIMIT = (
    "aigw_request_body_buffer_limit_bytes",
    "Most request-body bytes a worker holds at once (--max-buffered-request-bytes).",
)
_BODY_EVICTIONS = (
    "aigw_request_body_evictions",
    "Requests answered 503 server_busy because the request-body budget was full: the "
    "bodies stalled longest, or a body that did not fit.",
)

UNMATCHED_ROUTE = "-"
"""The route label of requests that matched no route (their series always stay)."""

_K = TypeVar("_K")
_Labels = TypeVar("_Labels", bound=tuple[str, ...])
_S = TypeVar("_S")


class CounterSeries:
    """One counter series: a running total and when the series appeared."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        """Adds *amount* (never negative)."""
        self.value += amount


class RouteLifetimes:
    """Which routes have a compiled stage alive, to drop their series with the last one.

    A route's series outlive any one compile of it (totals carry on across reloads,
    where the new chain is compiled before the old one is dropped) and go with the
    route itself: *forget* is called with a route once no stage holding it is alive.
    """

    __slots__ = ("_alive", "_forget")

    def __init__(self, forget: Callable[[str], None]) -> None:
        self._alive: dict[str, int] = {}  # route -> its compiled stages alive
        self._forget = forget

    def hold(self, route: str, stage: object) -> None:
        """Keeps *route*'s series while *stage* is alive."""
        self._alive[route] = self._alive.get(route, 0) + 1
        weakref.finalize(stage, self._release, route)

    def _release(self, route: str) -> None:
        left = self._alive[route] - 1
        if left:
            self._alive[route] = left
            return
        del self._alive[route]
        self._forget(route)


class HistogramSeries:
    """One histogram series: per-bucket (not cumulative) counts and the sum.

    ``buckets[i]`` counts the observations ``bounds[i - 1] < v <= bounds[i]``;
    the last slot is the ``+Inf`` bucket. The cumulative counts Prometheus
    wants are computed at scrape time.
    """

    __slots__ = ("bounds", "buckets", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Records one observation of *amount*."""
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.buckets[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class StreamsInFlight:
    """A route's open SSE streams; ``with streams_in_flight:`` around a relay."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def __enter__(self) -> None:
        self.value += 1

    def __exit__(self, *_exc: object) -> None:
        self.value -= 1


class RouteActivity:
    """A route's requests in progress (all its compiled versions), and whether
    the serving table still has the route."""

    __slots__ = ("requests", "retired")

    def __init__(self) -> None:
        self.requests = 0
        self.retired = False


class ListenerSeries:
    """One listener's connection series: open now, its limit, times the limit was hit, reclaims."""

    __slots__ = ("limit", "limit_reached", "open", "reclaimed")

    def __init__(
        self, limit: int, limit_reached: CounterSeries, reclaimed: CounterSeries | None = None
    ) -> None:
        self.open = 0
        self.limit = limit
        self.limit_reached = limit_reached
        self.reclaimed = reclaimed if reclaimed is not None else CounterSeries()


class BodyBudgetSeries(Protocol):
    """What the request-body budget exposes for export (``aigw.chain.body_budget``)."""

    @property
    def held(self) -> int:
        """Bytes reserved now."""

    @property
    def limit(self) -> int:
        """The budget."""

    @property
    def evictions(self) -> CounterSeries:
        """Requests refused or evicted because the budget was full."""


def _series(store: dict[_K, _S], key: _K, new: Callable[[], _S]) -> _S:
    """The series for *key* in *store*, created on first use."""
    series = store.get(key)
    if series is None:
        series = store[key] = new()
    return series


class Metrics:
    """Every metric aigw exports, registered in one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        # Per-request series, keyed by label values in label-name order.
        self.requests: dict[tuple[str, str, str], CounterSeries] = {}  # route, status, model
        self.latency: dict[str, HistogramSeries] = {}  # route
        self.upstream_latency: dict[str, HistogramSeries] = {}
        self.ttft: dict[str, HistogramSeries] = {}
        self.tokens: dict[tuple[str, str, str], CounterSeries] = {}  # route, model, kind
        self.upstream_errors: dict[tuple[str, str], CounterSeries] = {}  # route, kind
        self.streams_in_flight: dict[str, StreamsInFlight] = {}  # route
        self.activity: dict[str, RouteActivity] = {}  # route; not exported
        self.listeners: dict[str, ListenerSeries] = {}  # listener name
        self.body_budget: BodyBudgetSeries | None = None
        # Registered first: the families come out in the order they always did.
        registry.register(_RouteCollector(self))
        self.config_generation = Gauge(
            "aigw_config_generation", "Generation of the route table serving.", registry=registry
        )
        self.config_rejected_files = Gauge(
            "aigw_config_rejected_files",
            "conf.d files whose current content is refused (serving last known good or nothing).",
            registry=registry,
        )
        self.config_reloads = Counter(
            "aigw_config_reloads",
            "Reloads by result: published, unchanged, failed.",
            ["result"],
            registry=registry,
        )
        self.routes = Gauge("aigw_routes", "Routes in the serving table.", registry=registry)

    def for_route(self, route: str, model: str | None) -> RouteMetrics:
        """Every per-route series, bound once at compile time.

        Called again for the same route (a reload), it binds the same series:
        the totals carry on.
        """
        return RouteMetrics(self, route, model or "-")

    def retain(self, routes: Iterable[str]) -> None:
        """Keeps the series of *routes* (the table now serving) and drops the others'.

        A route no longer served whose requests are still in progress (a long
        stream on the previous table) is only marked: its series go when its
        last request ends. The unmatched-request series (route ``-``) always stay.
        """
        keep = {*routes, UNMATCHED_ROUTE}
        for route, activity in list(self.activity.items()):
            if route in keep:
                activity.retired = False
            elif activity.requests:
                activity.retired = True
            else:
                self._drop(route)

    def _drop(self, route: str) -> None:
        for store in (self.latency, self.upstream_latency, self.ttft, self.streams_in_flight):
            store.pop(route, None)
        self.activity.pop(route, None)
        _drop_keys(self.requests, route)
        _drop_keys(self.tokens, route)
        _drop_keys(self.upstream_errors, route)

    def _idle(self, route: str, activity: RouteActivity) -> None:
        """*route*'s last request in progress ended; drop its series if it is no longer served."""
        if activity.retired and self.activity.get(route) is activity:
            self._drop(route)

    def for_listener(self, name: str, limit: int) -> ListenerSeries:
        """Fresh connection series for a listener starting under *name*.

        A listener started again under the same name (tests, mostly) replaces
        the exported open count and limit, and keeps counting the times the
        limit was reached and the reclaimed connections from the old totals.
        """
        previous = self.listeners.get(name)
        if previous is None:
            series = ListenerSeries(limit, CounterSeries())
        else:
            series = ListenerSeries(limit, previous.limit_reached, previous.reclaimed)
        self.listeners[name] = series
        return series

    def watch_body_budget(self, budget: BodyBudgetSeries) -> None:
        """Exports *budget*'s bytes held, limit and evictions (one budget per worker)."""
        self.body_budget = budget

    def request_counter(self, route: str, status: str, model: str) -> CounterSeries:
        """The ``aigw_requests_total`` series for these labels."""
        return _series(self.requests, (route, status, model), CounterSeries)

    def upstream_error_counter(self, route: str, kind: str) -> CounterSeries:
        """The ``aigw_upstream_errors_total`` series for these labels."""
        return _series(self.upstream_errors, (route, kind), CounterSeries)


class RouteMetrics:
    """One route's pre-bound series."""

    __slots__ = (
        "_activity",
        "_errors",
        "_metrics",
        "_model",
        "_route",
        "_status",
        "completion_tokens",
        "latency",
        "prompt_tokens",
        "streams_in_flight",
        "ttft",
        "upstream_latency",
    )

    def __init__(self, metrics: Metrics, route: str, model: str) -> None:
        self._metrics = metrics
        self._route = route
        self._model = model
        self._status: dict[int, CounterSeries] = {}
        self._errors: dict[str, CounterSeries] = {}
        # Bound now (not on first use) so they are exported at zero, as before.
        self.latency = _series(metrics.latency, route, _latency_histogram)
        self.upstream_latency = _series(metrics.upstream_latency, route, _latency_histogram)
        self.ttft = _series(metrics.ttft, route, _ttft_histogram)
        self.prompt_tokens = _series(metrics.tokens, (route, model, "prompt"), CounterSeries)
        self.completion_tokens = _series(
            metrics.tokens, (route, model, "completion"), CounterSeries
        )
        self.streams_in_flight = _series(metrics.streams_in_flight, route, StreamsInFlight)
        self._activity = _series(metrics.activity, route, RouteActivity)

    def enter(self) -> None:
        """A request on this route started."""
        self._activity.requests += 1

    def leave(self) -> None:
        """A request on this route ended (after it was counted)."""
        activity = self._activity
        activity.requests -= 1
        if not activity.requests and activity.retired:
            self._metrics._idle(self._route, activity)

    def count(self, status: int) -> None:
        """Counts one answered request."""
        counter = self._status.get(status)
        if counter is None:
            counter = self._metrics.request_counter(self._route, str(status), self._model)
            self._status[status] = counter
        counter.value += 1

    def upstream_error(self, kind: str) -> None:
        """Counts one upstream failure of *kind*."""
        counter = self._errors.get(kind)
        if counter is None:
            counter = self._metrics.upstream_error_counter(self._route, kind)
            self._errors[kind] = counter
        counter.value += 1


def _drop_keys(store: dict[_Labels, CounterSeries], route: str) -> None:
    """Removes the series of *store* whose first label (the route) is *route*."""
    for key in [key for key in store if key[0] == route]:
        del store[key]


def _latency_histogram() -> HistogramSeries:
    return HistogramSeries(_LATENCY_BUCKETS)


def _ttft_histogram() -> HistogramSeries:
    return HistogramSeries(_TTFT_BUCKETS)


class FamiliesCollector:
    """Exports series kept in aigw's own accumulators, turned into families at scrape time.

    Args:
        families: Yields the families; with ``describe`` true, without samples
            (the registry only reserves their names); ``created`` says whether to
            add ``_created`` samples.
    """

    def __init__(self, families: Callable[[bool, bool], Iterator[Metric]]) -> None:
        self._families = families

    def describe(self) -> Iterator[Metric]:
        """The families, without samples."""
        return self._families(True, False)

    def collect(self) -> Iterator[Metric]:
        """The families with every series' current values."""
        # Same switch as prometheus_client's own metrics (PROMETHEUS_DISABLE_CREATED_SERIES).
        return self._families(False, getattr(prometheus_client.metrics, "_use_created", True))


_LabelValues = TypeVar("_LabelValues", bound=str | tuple[str, ...])


def counter_family(
    name: str,
    documentation: str,
    labels: list[str],
    store: Mapping[_LabelValues, CounterSeries],
    created: bool,
    describe: bool,
) -> Metric:
    """A counter family with one sample per series of *store*, keyed by its label
    values (a tuple, or one string for a single label)."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    if not describe:
        for key, series in list(store.items()):
            values = [key] if isinstance(key, str) else list(key)
            family.add_metric(
                values, float(series.value), created=series.created if created else None
            )
    return family


class _RouteCollector(FamiliesCollector):
    """Exports ``Metrics``' per-request series."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(self._route_families)
        self._metrics = metrics

    def _route_families(self, describe: bool, created: bool) -> Iterator[Metric]:
        m = self._metrics
        yield counter_family(
            *_REQUESTS, ["route", "status", "model"], m.requests, created, describe
        )
        yield _histograms(*_LATENCY, m.latency, created, describe)
        yield _histograms(*_UPSTREAM_LATENCY, m.upstream_latency, created, describe)
        yield _histograms(*_TTFT, m.ttft, created, describe)
        yield counter_family(*_TOKENS, ["route", "model", "kind"], m.tokens, created, describe)
        yield counter_family(
            *_UPSTREAM_ERRORS, ["route", "kind"], m.upstream_errors, created, describe
        )
        gauge = GaugeMetricFamily(*_STREAMS_IN_FLIGHT, labels=["route"])
        if not describe:
            for route, in_flight in list(m.streams_in_flight.items()):
                gauge.add_metric([route], float(in_flight.value))
        yield gauge
        yield from _listener_families(m.listeners, created, describe)
        yield from _body_budget_families(m.body_budget, created, describe)


def _listener_families(
    listeners: dict[str, ListenerSeries], created: bool, describe: bool
) -> Iterator[Metric]:
    open_now = GaugeMetricFamily(*_CLIENT_CONNECTIONS, labels=["listener"])
    limits = GaugeMetricFamily(*_MAX_CLIENT_CONNECTIONS, labels=["listener"])
    reached = CounterMetricFamily(*_CONNECTION_LIMIT_REACHED, labels=["listener"])
    reclaimed = CounterMetricFamily(*_CONNECTIONS_RECLAIMED, labels=["listener"])
    if not describe:
        for name, series in list(listeners.items()):
            open_now.add_metric([name], float(series.open))
            limits.add_metric([name], float(series.limit))
            for family, counter in ((reached, series.limit_reached), (reclaimed, series.reclaimed)):
                family.add_metric(
                    [name], float(counter.value), created=counter.created if created else None
                )
    yield open_now
    yield limits
    yield reached
    yield reclaimed


def _body_budget_families(
    budget: BodyBudgetSeries | None, created: bool, describe: bool
) -> Iterator[Metric]:
    held = GaugeMetricFamily(*_BODY_BUFFERED)
    limit = GaugeMetricFamily(*_BODY_BUFFER_LIMIT)
    evictions = CounterMetricFamily(*_BODY_EVICTIONS)
    if budget is not None and not describe:
        held.add_metric([], float(budget.held))
        limit.add_metric([], float(budget.limit))
        counter = budget.evictions
        evictions.add_metric([], float(counter.value), created=counter.created if created else None)
    yield held
    yield limit
    yield evictions


@functools.cache
def _le_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The ``le`` label values of *bounds*, spelled as prometheus_client spells them."""
    return tuple(floatToGoString(bound) for bound in bounds)  # type: ignore[no-untyped-call]


def _histograms(
    name: str,
    documentation: str,
    store: dict[str, HistogramSeries],
    created: bool,
    describe: bool,
) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["route"])
    if describe:
        return family
    for route, series in list(store.items()):
        counts = list(series.buckets)  # one snapshot: count == the +Inf bucket
        buckets: list[tuple[str, float]] = []
        total = 0
        for le, count in zip(_le_labels(series.bounds), counts, strict=False):
            total += count
            buckets.append((le, float(total)))
        buckets.append(("+Inf", float(total + counts[-1])))
        family.add_metric([route], buckets, series.sum)
        if created:
            family.samples.append(Sample(name + "_created", {"route": route}, series.created, None))
    return family


METRICS = Metrics()
"""The process's metrics (one registry per process; each worker exports its own)."""
