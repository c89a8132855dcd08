"""What a balanced route shows of its targets: access-log fields, metrics, /status."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from aigw.balancer.metrics import BALANCER_METRICS, BalancerMetrics, failover_reason
from aigw.balancer.state import TargetState
from aigw.balancer.status import member_status, pool_views, targets_status
from aigw.chain.access_log import access_log
from aigw.chain.body_budget import BodyBudget
from aigw.chain.exchange import Attempt, Exchange
from aigw.chain.info import RouteInfo
from aigw.metrics import Metrics
from aigw.upstream.pool import UpstreamPool

Labels = frozenset[tuple[str, str]]
SECRET = "sk-target-secret-do-not-log"


def scrape(registry: CollectorRegistry) -> dict[tuple[str, Labels], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def labels(**values: str) -> Labels:
    return frozenset(values.items())


# ---------------------------------------------------------------- access log

INFO = RouteInfo(
    name="pool-route",
    source="pool-route.yaml",
    provider="azure",
    model="gpt-4o",
    deployment="gpt-4o",
    route_type="llm/v1/chat",
)
ROUTE_METRICS = Metrics(CollectorRegistry()).for_route(INFO.name, INFO.model)
FAILED_OVER = [
    Attempt("sweden", 429, None, 3.25),
    Attempt("eastus", None, "upstream_unreachable", 1.5),
    Attempt("westus", 200, None, 40.0),
]


def exchange() -> Exchange:
    request = make_mocked_request("POST", "/p", headers={"api-key": SECRET})
    no_pool = cast(UpstreamPool, None)
    return Exchange(request=request, path="/p", pool=no_pool, body_budget=BodyBudget(1 << 20))


def answering(attempts: list[Attempt] | None, target: str | None) -> Any:
    async def balance(ex: Exchange) -> web.StreamResponse:
        ex.attempts = attempts
        ex.target_name = target
        return web.Response(status=200)

    return balance


async def test_access_log_names_the_answering_target_and_every_attempt() -> None:
    with capture_logs() as logs:
        await access_log(INFO, ROUTE_METRICS, answering(FAILED_OVER, "westus"))(exchange())
    (line,) = logs
    assert line["target"] == "westus"
    assert line["attempts"] == [
        {"target": "sweden", "status": 429, "error": None, "ms": 3.25},
        {"target": "eastus", "status": None, "error": "upstream_unreachable", "ms": 1.5},
        {"target": "westus", "status": 200, "error": None, "ms": 40.0},
    ]
    assert SECRET not in repr(line)


async def test_access_log_of_a_route_without_balancer_has_no_target_fields() -> None:
    with capture_logs() as logs:
        await access_log(INFO, ROUTE_METRICS, answering(None, None))(exchange())
    (line,) = logs
    assert "target" not in line and "attempts" not in line


async def test_access_log_when_no_target_answered() -> None:
    async def refused(ex: Exchange) -> web.StreamResponse:
        ex.attempts = [Attempt("sweden", 429, None, 2.0)]
        return web.Response(status=429)

    with capture_logs() as logs:
        await access_log(INFO, ROUTE_METRICS, refused)(exchange())
    (line,) = logs
    assert line["target"] is None and len(line["attempts"]) == 1


async def test_access_log_feeds_the_process_balancer_metrics() -> None:
    info = RouteInfo(
        name="fed-route",
        source="fed-route.yaml",
        provider="azure",
        model="gpt-4o",
        deployment="gpt-4o",
        route_type="llm/v1/chat",
    )
    stage = access_log(info, ROUTE_METRICS, answering(FAILED_OVER, "westus"))
    with capture_logs():
        await stage(exchange())
        await stage(exchange())
    requests = BALANCER_METRICS.upstream_requests
    assert requests[("fed-route", "sweden", "429")].value == 2
    assert requests[("fed-route", "eastus", "upstream_unreachable")].value == 2
    assert requests[("fed-route", "westus", "200")].value == 2
    failovers = BALANCER_METRICS.failovers
    assert failovers[("fed-route", "sweden", "http_429")].value == 2
    assert failovers[("fed-route", "eastus", "error")].value == 2
    assert ("fed-route", "westus", "http_200") not in failovers
    # Gone with the last compiled stage of the route.
    del stage
    gc.collect()
    assert not any(key[0] == "fed-route" for key in BALANCER_METRICS.upstream_requests)


# ---------------------------------------------------------------- metrics


def test_attempts_failovers_and_ejections_are_counted_with_their_labels() -> None:
    registry = CollectorRegistry()
    metrics = BalancerMetrics(registry)
    route = metrics.bind("r", metrics)
    route.count(FAILED_OVER)
    route.count([Attempt("sweden", 200, None, 9.0)])
    route.count([Attempt("sweden", None, "upstream_connect_timeout", 1.0), FAILED_OVER[2]])
    route.ejected("eastus")
    samples = scrape(registry)
    attempts = "aigw_upstream_requests_total"
    assert samples[(attempts, labels(route="r", target="sweden", status="429"))] == 1
    assert samples[(attempts, labels(route="r", target="sweden", status="200"))] == 1
    assert samples[(attempts, labels(route="r", target="westus", status="200"))] == 2
    assert (
        samples[(attempts, labels(route="r", target="eastus", status="upstream_unreachable"))] == 1
    )
    failovers = "aigw_failovers_total"
    assert samples[(failovers, labels(route="r", **{"from": "sweden"}, reason="http_429"))] == 1
    assert samples[(failovers, labels(route="r", **{"from": "sweden"}, reason="timeout"))] == 1
    assert samples[(failovers, labels(route="r", **{"from": "eastus"}, reason="error"))] == 1
    assert sum(v for (name, _), v in samples.items() if name == failovers) == 3
    assert samples[("aigw_target_ejections_total", labels(route="r", target="eastus"))] == 1


def test_failover_reason_uses_the_criteria_words() -> None:
    assert failover_reason(Attempt("a", 503, None, 1)) == "http_503"
    assert failover_reason(Attempt("a", None, "upstream_timeout", 1)) == "timeout"
    assert failover_reason(Attempt("a", None, "upstream_connect_timeout", 1)) == "timeout"
    assert failover_reason(Attempt("a", None, "upstream_unreachable", 1)) == "error"
    assert failover_reason(Attempt("a", None, None, 1)) == "error"


def test_target_state_gauge_is_one_for_the_current_state_only() -> None:
    registry = CollectorRegistry()
    metrics = BalancerMetrics(registry)
    now = 1000.0
    cooling, ejected, fine = (TargetState(("o", str(i), "c")) for i in range(3))
    cooling.cool_down(now + 5)
    assert ejected.failed(now, max_fails=1, fail_timeout_s=10)
    metrics.watch(
        lambda: [("r", [("sweden", cooling), ("eastus", ejected), ("westus", fine)])],
        clock=lambda: now,
    )
    samples = scrape(registry)

    def state_of(target: str) -> dict[str, float]:
        return {
            dict(key)["state"]: value
            for (name, key), value in samples.items()
            if name == "aigw_target_state" and dict(key)["target"] == target
        }

    assert state_of("sweden") == {"closed": 0, "open": 0, "half-open": 0, "cooling": 1}
    assert state_of("eastus") == {"closed": 0, "open": 1, "half-open": 0, "cooling": 0}
    assert state_of("westus") == {"closed": 1, "open": 0, "half-open": 0, "cooling": 0}
    now += 11  # the ejection is over: the next request probes it
    assert scrape(registry)[
        ("aigw_target_state", labels(route="r", target="eastus", state="half-open"))
    ]


def test_no_series_before_a_balanced_request() -> None:
    registry = CollectorRegistry()
    metrics = BalancerMetrics(registry)
    metrics.bind("r", metrics)
    assert not [name for name, _ in scrape(registry) if name.startswith("aigw_")]


# ---------------------------------------------------------------- /status


def member(name: str, state: TargetState, weight: int = 100) -> Any:
    return SimpleNamespace(name=name, weight=weight, state=state)


def test_member_status_shows_state_deadlines_in_flight_and_latency() -> None:
    now, wall = 500.0, 1_700_000_000.0
    state = TargetState(("o", "p", "c"))
    state.begin(now)
    state.succeeded(now, e2e_s=0.25, tpot_s=0.01, tokens=120)
    state.cool_down(now + 2.5)
    assert member_status(member("sweden", state), now, wall) == {
        "target": "sweden",
        "weight": 100,
        "state": "cooling",
        "cooldown_remaining_s": 2.5,
        "open_until": None,
        "in_flight": 1,
        "ewma_e2e_ms": 250.0,
        "ewma_tpot_ms": 10.0,
        "usage_tokens": 120,
    }
    state.end()
    assert state.failed(now, max_fails=1, fail_timeout_s=30)
    shown = member_status(member("sweden", state), now + 10, wall)
    assert shown["state"] == "open" and shown["in_flight"] == 0
    assert shown["open_until"] == "2023-11-14T22:13:40Z"  # wall + 20 s left
    assert (
        member_status(member("b", TargetState(("o", "q", "c"))), now, wall)["ewma_e2e_ms"] is None
    )


def test_targets_status_lists_only_balanced_routes_in_config_order() -> None:
    a, b = TargetState(("o", "a", "c")), TargetState(("o", "b", "c"))
    pool = SimpleNamespace(members=(member("sweden", a), member("eastus", b, 50)))
    routes = cast(
        Any,
        [SimpleNamespace(name="pooled", pool=pool), SimpleNamespace(name="single", pool=None)],
    )
    shown = targets_status(routes, clock=lambda: 0.0, wall=lambda: 0.0)
    assert list(shown) == ["pooled"]
    assert [(t["target"], t["weight"], t["state"]) for t in shown["pooled"]] == [
        ("sweden", 100, "closed"),
        ("eastus", 50, "closed"),
    ]
    assert list(pool_views(routes)) == [("pooled", [("sweden", a), ("eastus", b)])]


async def test_the_balance_stage_counts_an_ejection_once() -> None:
    from aigw.balancer.stage import balance
    from tests.unit.test_balance_stage import OK, Clock, Relay, fails, make_pool, send, target

    pool = make_pool([target("a"), target("b")], max_fails=2, fail_timeout=10_000)
    stage = balance(pool, Relay(a=fails("upstream_unreachable"), b=OK), clock=Clock())
    ejections = BALANCER_METRICS.ejections
    before = ejections[("r", "a")].value if ("r", "a") in ejections else 0
    for _ in range(6):  # a fails twice (ejected), then only b is picked
        await send(stage)
    assert ejections[("r", "a")].value == before + 1
    assert ("r", "b") not in ejections
