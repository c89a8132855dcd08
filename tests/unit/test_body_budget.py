"""The worker's request-body budget: who is evicted when it is full, and what is exported."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aigw.chain.body_budget import BodyBudget, BodyInFlight
from aigw.errors import ServiceUnavailable
from aigw.metrics import Metrics


class Stops:
    """Records which bodies the budget stopped (evicted), by name."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def arriving(self, budget: BodyBudget, name: str, held: int, age: float) -> BodyInFlight:
        """A body in flight that has read *held* bytes over the last *age* seconds."""
        body = budget.start(lambda: self.stopped.append(name))
        budget.take(body, held)
        body.started -= age
        return body


def assert_busy(error: ServiceUnavailable) -> None:
    assert (error.status, error.code, error.error_type) == (503, "server_busy", "server_error")
    assert error.headers == {"Retry-After": "1"}
    assert error.close_connection
    assert json.loads(error.body())["error"]["code"] == "server_busy"


def test_a_body_that_arrived_whole_costs_a_reserve_and_a_release() -> None:
    budget = BodyBudget(100)
    budget.reserve(60)
    budget.reserve(40)
    assert budget.held == 100
    budget.release(60)
    budget.release(40)
    assert budget.held == 0 and budget.evictions.value == 0


def test_the_slowest_arriving_body_is_evicted_for_a_whole_one() -> None:
    budget, stops = BodyBudget(100), Stops()
    # Same bytes, different ages: 40 B over 10 s is the slowest.
    fast = stops.arriving(budget, "fast", 40, age=0.1)
    slow = stops.arriving(budget, "slow", 40, age=10)
    budget.reserve(30)  # 110 > 100: someone must go
    assert stops.stopped == ["slow"]
    assert slow.evicted and slow.held == 0 and not fast.evicted
    assert budget.held == 70 and budget.evictions.value == 1
    # The evicted body's own cleanup frees nothing twice.
    budget.abandon(slow)
    assert budget.held == 70


def test_a_stalled_body_loses_to_a_steady_slower_one_over_time() -> None:
    budget, stops = BodyBudget(100), Stops()
    # 60 B in 2 s (30 B/s, stalled since) against 30 B in 0.5 s (60 B/s).
    stops.arriving(budget, "stalled", 60, age=2)
    stops.arriving(budget, "steady", 30, age=0.5)
    budget.reserve(20)
    assert stops.stopped == ["stalled"]


def test_evicts_only_as_many_as_needed_slowest_first() -> None:
    budget, stops = BodyBudget(100), Stops()
    for name, age in (("a", 4), ("b", 3), ("c", 2), ("d", 1)):
        stops.arriving(budget, name, 25, age=age)
    budget.reserve(45)  # needs 45 of the 100 back: two bodies of 25
    assert stops.stopped == ["a", "b"]
    assert budget.held == 95 and budget.evictions.value == 2


def test_the_reader_that_is_slowest_is_the_one_refused() -> None:
    budget, stops = BodyBudget(100), Stops()
    stops.arriving(budget, "quick", 50, age=0.1)
    reader = stops.arriving(budget, "reader", 40, age=10)
    with pytest.raises(ServiceUnavailable) as info:
        budget.take(reader, 20)
    assert_busy(info.value)
    assert "arriving the slowest" in info.value.message
    assert stops.stopped == [] and budget.evictions.value == 1
    budget.abandon(reader)
    assert budget.held == 50


def test_a_faster_reader_evicts_a_slower_one() -> None:
    budget, stops = BodyBudget(100), Stops()
    stops.arriving(budget, "slow", 60, age=10)
    reader = stops.arriving(budget, "reader", 30, age=0.1)
    budget.take(reader, 20)
    assert stops.stopped == ["slow"]
    assert reader.held == 50 and budget.held == 50


def test_nothing_is_evicted_in_vain() -> None:
    budget, stops = BodyBudget(100), Stops()
    stops.arriving(budget, "slow", 10, age=10)
    budget.reserve(85)  # a whole body: not evictable
    with pytest.raises(ServiceUnavailable) as info:
        budget.reserve(20)  # evicting "slow" frees 10 of the 15 missing
    assert_busy(info.value)
    assert stops.stopped == []
    assert budget.held == 95 and budget.evictions.value == 1


def test_finished_bodies_are_never_evicted() -> None:
    budget, stops = BodyBudget(100), Stops()
    done = stops.arriving(budget, "done", 80, age=100)
    budget.finish(done)
    with pytest.raises(ServiceUnavailable, match="buffer for request bodies is full"):
        budget.reserve(30)
    assert stops.stopped == [] and budget.held == 80
    budget.release(80)
    budget.reserve(30)


def test_a_budget_needs_a_byte() -> None:
    with pytest.raises(ValueError, match=">= 1 byte"):
        BodyBudget(0)


def test_exported_as_bytes_held_limit_and_evictions() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    budget, stops = BodyBudget(100), Stops()
    metrics.watch_body_budget(budget)
    stops.arriving(budget, "slow", 70, age=10)
    budget.reserve(50)

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name)

    assert sample("aigw_request_body_buffered_bytes") == 50
    assert sample("aigw_request_body_buffer_limit_bytes") == 100
    assert sample("aigw_request_body_evictions_total") == 1
    budget.release(50)
    assert sample("aigw_request_body_buffered_bytes") == 0


def test_families_are_described_even_before_a_budget_is_watched() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    text = generate_latest(registry).decode()
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert families["aigw_request_body_buffered_bytes"] == "gauge"
    assert families["aigw_request_body_buffer_limit_bytes"] == "gauge"
    assert families["aigw_request_body_evictions"] == "counter"
