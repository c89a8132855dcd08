"""Prometheus metrics, served on the admin listener at ``/metrics``.

PERF: label children are resolved once per route when its chain is compiled
(``RouteMetrics``); per request the access-log stage only increments and
observes pre-bound children, plus one dict lookup for the status code.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["METRICS", "Metrics", "RouteMetrics"]

# LLM calls span milliseconds (errors, embeddings) to minutes (long generations).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    """Every metric aigw exports, registered in one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "aigw_requests",
            "Requests answered, by route, HTTP status and configured model.",
            ["route", "status", "model"],
            registry=registry,
        )
        self.latency = Histogram(
            "aigw_request_duration_seconds",
            "Time from request received to response finished (whole stream for SSE).",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "aigw_upstream_duration_seconds",
            "Time from request sent upstream to upstream response headers.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "aigw_time_to_first_token_seconds",
            "Streams: time from request received to the first token relayed.",
            ["route"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "aigw_tokens",
            "Tokens reported by the upstream, by route, model and kind (prompt/completion).",
            ["route", "model", "kind"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "aigw_upstream_errors",
            "Upstream failures by route and kind (unreachable, timeout, reset, truncated, ...).",
            ["route", "kind"],
            registry=registry,
        )
        self.streams_in_flight = Gauge(
            "aigw_streams_in_flight",
            "SSE streams being relayed right now.",
            ["route"],
            registry=registry,
        )
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
        """Children of every per-route metric, bound once at compile time."""
        return RouteMetrics(self, route, model or "-")


class RouteMetrics:
    """One route's pre-bound metric children."""

    __slots__ = (
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
        self._status: dict[int, Any] = {}
        self.latency = metrics.latency.labels(route)
        self.upstream_latency = metrics.upstream_latency.labels(route)
        self.ttft = metrics.ttft.labels(route)
        self.prompt_tokens = metrics.tokens.labels(route, model, "prompt")
        self.completion_tokens = metrics.tokens.labels(route, model, "completion")
        self.streams_in_flight = metrics.streams_in_flight.labels(route)

    def count(self, status: int) -> None:
        """Counts one answered request."""
        child = self._status.get(status)
        if child is None:
            child = self._metrics.requests.labels(self._route, str(status), self._model)
            self._status[status] = child
        child.inc()

    def upstream_error(self, kind: str) -> None:
        """Counts one upstream failure of *kind*."""
        self._metrics.upstream_errors.labels(self._route, kind).inc()


METRICS = Metrics()
"""The process's metrics (one registry per process; each worker exports its own)."""
