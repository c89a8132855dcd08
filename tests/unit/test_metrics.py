"""The per-request metrics: lock-free accumulators exported by a custom collector."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aigw.metrics import Metrics

Labels = frozenset[tuple[str, str]]

LATENCY_BOUNDS: tuple[str, ...] = (
    *("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0"),
    *("10.0", "30.0", "60.0", "120.0", "300.0", "+Inf"),
)
TTFT_BOUNDS: tuple[str, ...] = (
    *("0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.0", "5.0", "10.0"),
    *("30.0", "+Inf"),
)


def scrape(registry: CollectorRegistry) -> dict[tuple[str, Labels], float]:
    """Every sample of the text exposition, parsed back as Prometheus would."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> Labels:
    return frozenset(values.items())


def buckets(samples: dict[tuple[str, Labels], float], name: str, route: str) -> dict[str, float]:
    """``le`` → cumulative count, in exposition order."""
    return {
        dict(key)["le"]: value
        for (sample, key), value in samples.items()
        if sample == name + "_bucket" and dict(key)["route"] == route
    }


def test_families_names_help_and_types() -> None:
    registry = CollectorRegistry()
    Metrics(registry).for_route("r", "gpt-4o")
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {
        "aigw_requests": (
            "counter",
            "Requests answered, by route, HTTP status and configured model.",
        ),
        "aigw_request_duration_seconds": (
            "histogram",
            "Time from request received to response finished (whole stream for SSE).",
        ),
        "aigw_upstream_duration_seconds": (
            "histogram",
            "Time from request sent upstream to upstream response headers.",
        ),
        "aigw_time_to_first_token_seconds": (
            "histogram",
            "Streams: time from request received to the first token relayed.",
        ),
        "aigw_tokens": (
            "counter",
            "Tokens reported by the upstream, by route, model and kind (prompt/completion).",
        ),
        "aigw_upstream_errors": (
            "counter",
            "Upstream failures by route and kind (unreachable, timeout, reset, truncated, ...).",
        ),
        "aigw_streams_in_flight": ("gauge", "SSE streams being relayed right now."),
        "aigw_config_generation": ("gauge", "Generation of the route table serving."),
        "aigw_routes": ("gauge", "Routes in the serving table."),
    }
    for name, (kind, documentation) in expected.items():
        assert (families[name].type, families[name].documentation) == (kind, documentation)


def test_counters_carry_route_status_model_and_kind() -> None:
    registry = CollectorRegistry()
    route = Metrics(registry).for_route("r", "gpt-4o")
    route.count(200)
    route.count(200)
    route.count(429)
    route.prompt_tokens.inc(7)
    route.completion_tokens.inc(5)
    route.completion_tokens.inc(6)
    route.upstream_error("upstream_timeout")
    route.upstream_error("upstream_timeout")
    route.upstream_error("upstream_reset")
    samples = scrape(registry)
    requests = "aigw_requests_total"
    assert samples[(requests, labels(route="r", status="200", model="gpt-4o"))] == 2
    assert samples[(requests, labels(route="r", status="429", model="gpt-4o"))] == 1
    tokens = "aigw_tokens_total"
    assert samples[(tokens, labels(route="r", model="gpt-4o", kind="prompt"))] == 7
    assert samples[(tokens, labels(route="r", model="gpt-4o", kind="completion"))] == 11
    errors = "aigw_upstream_errors_total"
    assert samples[(errors, labels(route="r", kind="upstream_timeout"))] == 2
    assert samples[(errors, labels(route="r", kind="upstream_reset"))] == 1
    # get_sample_value reads the same registry the /metrics endpoint serves.
    assert registry.get_sample_value(errors, {"route": "r", "kind": "upstream_reset"}) == 1


def test_bound_series_are_exported_at_zero_and_unseen_ones_not_at_all() -> None:
    registry = CollectorRegistry()
    Metrics(registry).for_route("r", "gpt-4o")
    samples = scrape(registry)
    assert samples[("aigw_tokens_total", labels(route="r", model="gpt-4o", kind="prompt"))] == 0
    assert samples[("aigw_request_duration_seconds_count", labels(route="r"))] == 0
    assert samples[("aigw_time_to_first_token_seconds_count", labels(route="r"))] == 0
    assert samples[("aigw_streams_in_flight", labels(route="r"))] == 0
    assert not [name for name, _ in samples if name == "aigw_requests_total"]
    assert not [name for name, _ in samples if name == "aigw_upstream_errors_total"]


def test_histogram_buckets_are_cumulative_and_a_bound_is_in_its_own_bucket() -> None:
    registry = CollectorRegistry()
    route = Metrics(registry).for_route("r", "gpt-4o")
    for seconds in (0.005, 0.0051, 0.3, 1, 1.0000001, 301):
        route.latency.observe(seconds)
    samples = scrape(registry)
    latency = buckets(samples, "aigw_request_duration_seconds", "r")
    assert tuple(latency) == LATENCY_BOUNDS
    assert latency["0.005"] == 1  # exactly on the bound: le="0.005"
    assert latency["0.01"] == 2
    assert latency["0.25"] == 2
    assert latency["0.5"] == 3
    assert latency["1.0"] == 4  # 1 is in le="1.0", 1.0000001 is not
    assert latency["2.5"] == 5
    assert latency["300.0"] == 5
    assert latency["+Inf"] == 6
    values = list(latency.values())
    assert values == sorted(values)
    route_only = labels(route="r")
    assert samples[("aigw_request_duration_seconds_count", route_only)] == latency["+Inf"]
    assert samples[("aigw_request_duration_seconds_sum", route_only)] == pytest.approx(
        0.005 + 0.0051 + 0.3 + 1 + 1.0000001 + 301
    )


def test_ttft_has_its_own_buckets() -> None:
    registry = CollectorRegistry()
    route = Metrics(registry).for_route("r", "gpt-4o")
    route.ttft.observe(2)
    ttft = buckets(scrape(registry), "aigw_time_to_first_token_seconds", "r")
    assert tuple(ttft) == TTFT_BOUNDS
    assert (ttft["1.0"], ttft["2.0"], ttft["+Inf"]) == (0, 1, 1)


@pytest.mark.parametrize(
    "name", ["aigw_request_duration_seconds", "aigw_upstream_duration_seconds"]
)
def test_histograms_match_prometheus_client(name: str) -> None:
    """Same observations, same samples as a prometheus_client Histogram."""
    ours = CollectorRegistry()
    route = Metrics(ours).for_route("r", "gpt-4o")
    series = route.latency if name == "aigw_request_duration_seconds" else route.upstream_latency
    reference = CollectorRegistry()
    bounds = [float(b) for b in LATENCY_BOUNDS[:-1]]
    histogram = Histogram(name, "reference", ["route"], buckets=bounds, registry=reference)
    for value in [0.0, 0.001, *bounds, *(b * 1.5 for b in bounds), 1e6]:
        series.observe(value)
        histogram.labels("r").observe(value)
    want = {k: v for k, v in scrape(reference).items() if k[0].startswith(name + "_")}
    got = {k: v for k, v in scrape(ours).items() if k[0].startswith(name + "_")}
    created = {k for k in want if k[0].endswith("_created")}
    assert created == {k for k in got if k[0].endswith("_created")}
    assert {k: v for k, v in got.items() if k not in created} == pytest.approx(
        {k: v for k, v in want.items() if k not in created}
    )


def test_series_survive_a_reload_of_the_route() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    before = metrics.for_route("r", "gpt-4o")
    before.count(200)
    before.latency.observe(0.2)
    before.prompt_tokens.inc(3)
    before.upstream_error("upstream_reset")
    after = metrics.for_route("r", "gpt-4o")  # the route recompiled by a reload
    after.count(200)
    after.latency.observe(0.2)
    after.prompt_tokens.inc(4)
    after.upstream_error("upstream_reset")
    assert after.latency is before.latency
    assert after.streams_in_flight is before.streams_in_flight
    samples = scrape(registry)
    assert samples[("aigw_requests_total", labels(route="r", status="200", model="gpt-4o"))] == 2
    assert samples[("aigw_request_duration_seconds_count", labels(route="r"))] == 2
    assert samples[("aigw_request_duration_seconds_sum", labels(route="r"))] == pytest.approx(0.4)
    assert samples[("aigw_tokens_total", labels(route="r", model="gpt-4o", kind="prompt"))] == 7
    errors = labels(route="r", kind="upstream_reset")
    assert samples[("aigw_upstream_errors_total", errors)] == 2
    assert len([k for k in samples if k[0] == "aigw_request_duration_seconds_count"]) == 1


def test_a_reload_that_changes_the_model_starts_new_model_series() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.for_route("r", "gpt-4o").count(200)
    reloaded = metrics.for_route("r", "gpt-4o-mini")
    reloaded.count(200)
    reloaded.latency.observe(1)
    samples = scrape(registry)
    old = labels(route="r", status="200", model="gpt-4o")
    new = labels(route="r", status="200", model="gpt-4o-mini")
    assert (samples[("aigw_requests_total", old)], samples[("aigw_requests_total", new)]) == (1, 1)
    # Route-only series are shared by both.
    assert samples[("aigw_request_duration_seconds_count", labels(route="r"))] == 1


def test_route_without_a_model_is_exported_with_model_dash() -> None:
    registry = CollectorRegistry()
    route = Metrics(registry).for_route("-", None)
    route.count(404)
    samples = scrape(registry)
    assert samples[("aigw_requests_total", labels(route="-", status="404", model="-"))] == 1
    assert ("aigw_tokens_total", labels(route="-", model="-", kind="prompt")) in samples


def test_streams_in_flight_go_up_and_back_down() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    route = metrics.for_route("r", "gpt-4o")

    def in_flight() -> float | None:
        return registry.get_sample_value("aigw_streams_in_flight", {"route": "r"})

    assert in_flight() == 0
    with route.streams_in_flight:
        with metrics.for_route("r", "gpt-4o").streams_in_flight:
            assert in_flight() == 2
        assert in_flight() == 1
    assert in_flight() == 0
    with pytest.raises(RuntimeError), route.streams_in_flight:
        assert in_flight() == 1
        raise RuntimeError("the client went away")
    assert in_flight() == 0


def test_names_are_reserved_in_the_registry() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("aigw_request_duration_seconds", "clash", registry=registry)


def test_created_series_follow_prometheus_client_switch() -> None:
    registry = CollectorRegistry()
    Metrics(registry).for_route("r", "gpt-4o").count(200)
    reference = CollectorRegistry()
    Histogram("h", "reference", registry=reference)
    reference_has_created = ("h_created", frozenset()) in scrape(reference)
    samples = scrape(registry)
    for name, key in (
        ("aigw_requests_created", labels(route="r", status="200", model="gpt-4o")),
        ("aigw_request_duration_seconds_created", labels(route="r")),
        ("aigw_tokens_created", labels(route="r", model="gpt-4o", kind="prompt")),
    ):
        assert ((name, key) in samples) is reference_has_created
        if reference_has_created:
            assert samples[(name, key)] > 1e9  # a Unix time


def test_listener_connection_series() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    proxy = metrics.for_listener("proxy", 20)
    metrics.for_listener("admin", 16)
    proxy.open = 20
    proxy.limit_reached.inc()
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["aigw_client_connections"].type == "gauge"
    assert families["aigw_max_client_connections"].type == "gauge"
    assert families["aigw_connection_limit_reached"].type == "counter"
    samples = scrape(registry)
    assert samples[("aigw_client_connections", labels(listener="proxy"))] == 20
    assert samples[("aigw_client_connections", labels(listener="admin"))] == 0
    assert samples[("aigw_max_client_connections", labels(listener="proxy"))] == 20
    assert samples[("aigw_max_client_connections", labels(listener="admin"))] == 16
    assert samples[("aigw_connection_limit_reached_total", labels(listener="proxy"))] == 1
    assert samples[("aigw_connection_limit_reached_total", labels(listener="admin"))] == 0


def test_listener_started_again_keeps_its_limit_reached_total() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    first = metrics.for_listener("proxy", 20)
    first.open = 5
    first.limit_reached.inc(3)
    second = metrics.for_listener("proxy", 30)
    samples = scrape(registry)
    assert samples[("aigw_client_connections", labels(listener="proxy"))] == 0
    assert samples[("aigw_max_client_connections", labels(listener="proxy"))] == 30
    assert samples[("aigw_connection_limit_reached_total", labels(listener="proxy"))] == 3
    assert second.limit_reached is first.limit_reached


def routes_exported(registry: CollectorRegistry) -> set[str]:
    return {dict(key)["route"] for _, key in scrape(registry) if "route" in dict(key)}


def test_a_route_gone_from_the_table_loses_its_series_when_idle() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    kept, gone = metrics.for_route("kept", "gpt-4o"), metrics.for_route("gone", "gpt-4o")
    metrics.for_route("-", None)  # the unmatched-request series
    for route in (kept, gone):
        route.count(200)
        route.upstream_error("upstream_reset")
        route.prompt_tokens.inc(3)
    assert routes_exported(registry) == {"kept", "gone", "-"}
    metrics.retain(["kept"])
    assert routes_exported(registry) == {"kept", "-"}
    # Back in a later table: exported again, from zero.
    back = metrics.for_route("gone", "gpt-4o")
    metrics.retain(["kept", "gone"])
    assert value_of(scrape(registry), "aigw_requests_total", route="gone") == 0
    back.count(200)
    assert value_of(scrape(registry), "aigw_requests_total", route="gone") == 1


def value_of(samples: dict[tuple[str, Labels], float], name: str, route: str) -> float:
    return sum(v for (n, key), v in samples.items() if n == name and dict(key)["route"] == route)


def test_a_route_with_requests_in_progress_keeps_its_series_until_the_last_ends() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    old_version = metrics.for_route("r", "gpt-4o")
    old_version.enter()
    old_version.enter()
    metrics.retain([])  # the route's file was deleted mid-stream
    assert "r" in routes_exported(registry)
    old_version.count(200)
    old_version.leave()
    assert "r" in routes_exported(registry)
    old_version.count(200)
    old_version.leave()
    assert "r" not in routes_exported(registry)


def test_a_retired_route_that_comes_back_before_going_idle_is_kept() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    old_version = metrics.for_route("r", "gpt-4o")
    old_version.enter()
    metrics.retain([])
    new_version = metrics.for_route("r", "gpt-4o")  # the file is back
    metrics.retain(["r"])
    old_version.count(200)
    old_version.leave()
    new_version.count(200)
    assert value_of(scrape(registry), "aigw_requests_total", route="r") == 2
