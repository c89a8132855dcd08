"""The worker's request-body budget: who is evicted when it is full, and what is exported."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aigw.chain.body_budget import BodyBudget, BodyInFlight, evicted_error
from aigw.errors import ServiceUnavailable
from aigw.metrics import Metrics


class Stops:
    """Records which bodies the budget stopped (evicted), by name."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def arriving(self, budget: BodyBudget, name: str, held: int, idle: float) -> BodyInFlight:
        """A body in flight that has read *held* bytes and nothing for *idle* seconds since."""
        body = budget.start(lambda: self.stopped.append(name))
        budget.take(body, held)
        body.last_read -= idle
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


def test_the_body_idle_longest_is_evicted_for_a_whole_one() -> None:
    budget, stops = BodyBudget(100), Stops()
    recent = stops.arriving(budget, "recent", 40, idle=0.1)
    stalled = stops.arriving(budget, "stalled", 40, idle=10)
    budget.reserve(30)  # 110 > 100: someone must go
    assert stops.stopped == ["stalled"]
    assert stalled.evicted and stalled.held == 0 and not recent.evicted
    assert budget.held == 70 and budget.evictions.value == 1
    # The evicted body's own cleanup frees nothing twice.
    budget.abandon(stalled)
    assert budget.held == 70


def test_a_burst_then_a_stall_loses_to_an_upload_still_arriving() -> None:
    # What rate-over-life got wrong under load: 4 KiB sent in a burst then a
    # short stall "averages" faster than an upload being read right now.
    budget, stops = BodyBudget(100), Stops()
    stops.arriving(budget, "burst", 60, idle=0.2)
    upload = stops.arriving(budget, "upload", 30, idle=0)
    budget.take(upload, 20)
    assert stops.stopped == ["burst"]
    assert upload.held == 50 and budget.held == 50


def test_evicts_only_as_many_as_needed_longest_idle_first() -> None:
    budget, stops = BodyBudget(100), Stops()
    for name, idle in (("c", 2), ("a", 4), ("d", 1), ("b", 3)):
        stops.arriving(budget, name, 25, idle=idle)
    budget.reserve(45)  # needs 45 of the 100 back: two bodies of 25
    assert stops.stopped == ["a", "b"]
    assert budget.held == 95 and budget.evictions.value == 2


def test_a_body_still_arriving_is_never_evicted() -> None:
    budget, stops = BodyBudget(100), Stops()
    stops.arriving(budget, "arriving", 50, idle=0.001)  # read a moment ago
    reader = stops.arriving(budget, "reader", 40, idle=0)
    with pytest.raises(ServiceUnavailable) as info:
        budget.take(reader, 20)
    assert_busy(info.value)
    assert "buffer for request bodies is full" in info.value.message
    assert stops.stopped == [] and budget.evictions.value == 1
    budget.abandon(reader)
    assert budget.held == 50


def test_an_evicted_body_is_told_it_stalled_the_longest() -> None:
    assert "stalled the longest" in evicted_error().message
    assert_busy(evicted_error())


def test_nothing_is_evicted_in_vain() -> None:
    budget, stops = BodyBudget(100), Stops()
    stops.arriving(budget, "slow", 10, idle=10)
    budget.reserve(85)  # a whole body: not evictable
    with pytest.raises(ServiceUnavailable) as info:
        budget.reserve(20)  # evicting "slow" frees 10 of the 15 missing
    assert_busy(info.value)
    assert stops.stopped == []
    assert budget.held == 95 and budget.evictions.value == 1


def test_finished_bodies_are_never_evicted() -> None:
    budget, stops = BodyBudget(100), Stops()
    done = stops.arriving(budget, "done", 80, idle=100)
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
    stops.arriving(budget, "slow", 70, idle=10)
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
