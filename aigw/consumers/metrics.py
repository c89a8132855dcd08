"""Prometheus series with a ``consumer`` label, and the refusals of key-auth and acl.

``aigw_consumer_requests_total{consumer,route,status}``,
``aigw_consumer_tokens_total{consumer,route,type}`` (``prompt``/``completion``)
and ``aigw_auth_failures_total{route,reason}`` (``missing``/``unknown``/``forbidden``).

Kept as `aigw.metrics` keeps its per-request series (plain accumulators on the
event-loop thread, turned into families at scrape time) and counted from the
access-log stage, once per request. Each route binds a `RouteConsumerMetrics`
at compile time; per request with a consumer it costs one dict lookup by
username and one by status, plus the token counters.

The label values come from the config (usernames, route names), never from
the client, so the number of series is bounded by conf.d. The series of a
consumer a reload removed are dropped (`ConsumerMetrics.retain`); a request
still in flight for it at that moment is not counted, so it does not bring
them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric

from aigw.metrics import CounterSeries, FamiliesCollector, counter_family

__all__ = [
    "AUTH_FAILURE_REASONS",
    "CONSUMER_METRICS",
    "ConsumerMetrics",
    "RouteConsumerMetrics",
    "retain_consumers",
]

_REQUESTS: Final = (
    "aigw_consumer_requests",
    "Requests answered, by consumer (key-auth username), route and HTTP status.",
)
_TOKENS: Final = (
    "aigw_consumer_tokens",
    "Tokens reported by the upstream, by consumer, route and type (prompt/completion).",
)
_AUTH_FAILURES: Final = (
    "aigw_auth_failures",
    "Requests refused by key-auth or acl, by route and reason: missing (no key), "
    "unknown (a key no consumer has), forbidden (the acl refused the consumer).",
)

AUTH_FAILURE_REASONS: Final[Mapping[str, str]] = {
    "missing_api_key": "missing",
    "invalid_api_key": "unknown",
    "access_denied": "forbidden",
}
"""Access-log ``outcome`` -> ``aigw_auth_failures_total`` ``reason``."""


class _ConsumerSeries:
    """One consumer's series on one route: requests by status, tokens by type."""

    __slots__ = ("_owner", "_status", "completion", "prompt", "username")

    def __init__(self, owner: RouteConsumerMetrics, username: str) -> None:
        self._owner = owner
        self.username = username
        self._status: dict[int, CounterSeries] = {}
        store, route = owner.metrics.tokens, owner.route
        self.prompt = _series(store, (username, route, "prompt"))
        self.completion = _series(store, (username, route, "completion"))

    def count(self, status: int, usage: Mapping[str, Any] | None) -> None:
        counter = self._status.get(status)
        if counter is None:
            owner = self._owner
            key = (self.username, owner.route, str(status))
            counter = self._status[status] = _series(owner.metrics.requests, key)
        counter.value += 1
        if usage:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and prompt > 0:
                self.prompt.value += prompt
            if isinstance(completion, int) and completion > 0:
                self.completion.value += completion


class RouteConsumerMetrics:
    """One route's consumer and auth-failure series, bound at compile time."""

    __slots__ = ("_by_consumer", "_failures", "metrics", "route")

    def __init__(self, metrics: ConsumerMetrics, route: str) -> None:
        self.metrics = metrics
        self.route = route
        self._by_consumer: dict[str, _ConsumerSeries] = {}
        self._failures: dict[str, CounterSeries] = {}

    def count(self, username: str, status: int, usage: Mapping[str, Any] | None) -> None:
        """Counts one answered request of *username* and the tokens of its *usage*."""
        series = self._by_consumer.get(username)
        if series is None:
            known = self.metrics.known
            if known is not None and username not in known:
                return  # removed by a reload while this request was in flight
            series = self._by_consumer[username] = _ConsumerSeries(self, username)
        series.count(status, usage)

    def auth_failure(self, reason: str) -> None:
        """Counts one refusal of *reason* (a value of `AUTH_FAILURE_REASONS`)."""
        counter = self._failures.get(reason)
        if counter is None:
            counter = _series(self.metrics.auth_failures, (self.route, reason))
            self._failures[reason] = counter
        counter.value += 1

    def _forget(self, keep: frozenset[str]) -> None:
        for username in [name for name in self._by_consumer if name not in keep]:
            del self._by_consumer[username]


class ConsumerMetrics:
    """Every series with a consumer label, and the auth failures, in one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests: dict[tuple[str, ...], CounterSeries] = {}  # consumer, route, status
        self.tokens: dict[tuple[str, ...], CounterSeries] = {}  # consumer, route, type
        self.auth_failures: dict[tuple[str, ...], CounterSeries] = {}  # route, reason
        self.known: frozenset[str] | None = None
        """The usernames of the serving table, once `retain` was called (None: any)."""
        self._routes: dict[str, RouteConsumerMetrics] = {}
        registry.register(FamiliesCollector(partial(_families, self)))

    def for_route(self, route: str) -> RouteConsumerMetrics:
        """*route*'s series; the same object for the same name, so a recompiled
        route (a reload) counts on from its totals."""
        bound = self._routes.get(route)
        if bound is None:
            bound = self._routes[route] = RouteConsumerMetrics(self, route)
        return bound

    def retain(self, usernames: Iterable[str]) -> None:
        """Keeps the series of *usernames* (the consumers of the table now serving)
        and drops every other consumer's."""
        keep = frozenset(usernames)
        self.known = keep
        for store in (self.requests, self.tokens):
            for key in [key for key in store if key[0] not in keep]:
                del store[key]
        for bound in self._routes.values():
            bound._forget(keep)


def _series(store: dict[tuple[str, ...], CounterSeries], key: tuple[str, ...]) -> CounterSeries:
    series = store.get(key)
    if series is None:
        series = store[key] = CounterSeries()
    return series


def _families(metrics: ConsumerMetrics, describe: bool, created: bool) -> Iterator[Metric]:
    m = metrics
    yield counter_family(*_REQUESTS, ["consumer", "route", "status"], m.requests, created, describe)
    yield counter_family(*_TOKENS, ["consumer", "route", "type"], m.tokens, created, describe)
    yield counter_family(*_AUTH_FAILURES, ["route", "reason"], m.auth_failures, created, describe)


CONSUMER_METRICS = ConsumerMetrics()
"""The process's consumer series (in the default registry, as `aigw.metrics.METRICS`)."""


def retain_consumers(usernames: Iterable[str]) -> None:
    """Drops the series of every consumer not in *usernames*: call with the
    usernames of each table published (a reload that removed consumers)."""
    CONSUMER_METRICS.retain(usernames)
