"""In-process token counters: rolling windows, settling reservations, bounded memory."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aigw.chain.body_budget import BodyBudget
from aigw.chain.exchange import Exchange, Handler
from aigw.chain.info import RouteInfo
from aigw.config.model import ProviderLimit, TokenLimitConfig
from aigw.consumers.index import Consumer
from aigw.errors import TooManyRequests
from aigw.quotas import QuotaRegistry
from aigw.quotas.limiter import Limiter
from aigw.quotas.local import LocalCounters
from aigw.quotas.metrics import QUOTA_METRICS
from aigw.quotas.stage import prompt_estimate
from aigw.upstream.pool import UpstreamPool

MINUTE = 60_000


def test_counts_roll_into_the_previous_window_then_out() -> None:
    store = LocalCounters((MINUTE,))
    store.add("a", 10_000, 300)
    assert store.counts("a", 59_999) == [(300, 0, 59_999)]
    assert store.counts("a", 60_000) == [(0, 300, 0)]
    # Two windows later the count is history, whether or not it was read between.
    assert store.counts("a", 180_000) == [(0, 0, 0)]
    store.add("b", 10_000, 300)
    assert store.counts("b", 130_000) == [(0, 0, 10_000)]


def test_each_window_size_counts_on_its_own() -> None:
    store = LocalCounters((10_000, MINUTE))
    store.add("a", 5_000, 100)
    store.add("a", 15_000, 50)
    assert store.counts("a", 15_000) == [(50, 100, 5_000), (150, 0, 15_000)]


def test_settle_in_the_same_window_counts_the_difference() -> None:
    store = LocalCounters((MINUTE,))
    store.add("a", 1_000, 500)  # the reservation
    store.settle("a", 2_000, reserved=500, reserved_at_ms=1_000, actual=120)
    assert store.counts("a", 2_000) == [(120, 0, 2_000)]


def test_settle_after_the_window_rolled_takes_the_reservation_from_the_previous_one() -> None:
    store = LocalCounters((MINUTE,))
    store.add("a", 59_000, 500)
    store.settle("a", 61_000, reserved=500, reserved_at_ms=59_000, actual=120)
    assert store.counts("a", 61_000) == [(120, 0, 1_000)]


def test_the_store_keeps_at_most_max_keys_dropping_the_least_recently_used() -> None:
    store = LocalCounters((MINUTE,), max_keys=3)
    for key in ("a", "b", "c"):
        store.add(key, 1_000, 1)
    store.counts("a", 1_000)  # a used again: b is now the least recently used
    store.add("d", 1_000, 1)
    assert len(store) == 3
    assert "b" not in store
    assert all(key in store for key in "acd")


def test_entries_expire_after_two_of_their_longest_windows() -> None:
    store = LocalCounters((1_000, MINUTE), max_keys=1000)
    for i in range(100):
        store.add(f"ip:{i}", 0, 1)
    store.add("late", 100_000, 1)  # still within 2 minutes of the others
    assert len(store) == 101
    store.add("later", 2 * MINUTE + 1, 1)  # the first hundred are past 2 * 60 s
    assert len(store) == 2
    assert "late" in store and "later" in store


def test_an_attacker_choosing_identifiers_cannot_grow_the_store() -> None:
    store = LocalCounters((MINUTE,), max_keys=1000)
    for i in range(20_000):
        store.counts(f"header:{i}", 1_000)
    assert len(store) == 1000


def test_limiter_admits_until_the_limit_then_refuses() -> None:
    limiter = Limiter("fixed", (MINUTE,))
    assert limiter.admit_local("a", 1_000, (100,), 0).admitted
    limiter.charge("a", 0, 1_000, 100, 1_500, remote=False)
    verdict = limiter.admit_local("a", 2_000, (100,), 0)
    assert not verdict.admitted and verdict.retry_after_ms == 58_000
    # Another identifier is not affected.
    assert limiter.admit_local("b", 2_000, (100,), 0).admitted
    # A reload may raise the limit: the same counts, a new verdict.
    assert limiter.admit_local("a", 2_000, (200,), 0).remaining == 100


def test_limiter_reservation_is_counted_at_admission_and_settled() -> None:
    limiter = Limiter("fixed", (MINUTE,))
    first = limiter.admit_local("a", 1_000, (1000,), 600)
    assert first.admitted and first.remaining == 400
    # The reservation holds: a second request of the same size does not fit.
    assert not limiter.admit_local("a", 1_100, (1000,), 600).admitted
    limiter.charge("a", 600, 1_000, 50, 1_200, remote=False)
    assert limiter.local.counts("a", 1_300) == [(50, 0, 1_300)]


def test_prompt_estimate_is_text_bytes_over_four_plus_the_output_cap() -> None:
    payload = {
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "content": [{"type": "text", "text": "y" * 41}]},
        ],
        "max_tokens": 100,
    }
    assert prompt_estimate(payload) == 21 + 100  # ceil(81 / 4)
    assert prompt_estimate({"input": ["a" * 8, "b" * 8], "max_completion_tokens": 5}) == 9
    assert prompt_estimate({"prompt": "é" * 2}) == 1  # 4 UTF-8 bytes
    assert prompt_estimate(None) == 0
    assert prompt_estimate({"messages": [], "max_tokens": True}) == 0


# -- the stage, with local counters -----------------------------------------------------------

_NO_POOL: UpstreamPool = None  # type: ignore[assignment]
INFO = RouteInfo("quota-unit", "-", "azure", "gpt-4o", "gpt-4o", "llm/v1/chat")
USAGE = {"prompt_tokens": 30, "completion_tokens": 70, "total_tokens": 100}


def plugin(**fields: Any) -> TokenLimitConfig:
    return TokenLimitConfig(
        llm_providers=(ProviderLimit("azure", (100,), (60,)),), window_type="fixed", **fields
    )


def make_exchange(headers: dict[str, str] | None = None, remote: str = "192.0.2.1") -> Exchange:
    request = make_mocked_request("POST", "/p", headers=headers or {})
    request = request.clone(remote=remote)
    return Exchange(request=request, path="/p", pool=_NO_POOL, body_budget=BodyBudget(2**20))


class Upstream:
    """The rest of the chain: answers with *status* and *usage* as the relay would record them."""

    def __init__(self, status: int = 200, usage: dict[str, int] | None = USAGE) -> None:
        self.status, self.usage = status, usage

    async def __call__(self, ex: Exchange) -> web.StreamResponse:
        ex.upstream_sent_ns = 1
        ex.upstream_status = self.status
        ex.usage = self.usage
        return web.Response(status=self.status)


async def spend(stage: Handler, ex: Exchange) -> int:
    try:
        return (await stage(ex)).status
    except TooManyRequests as refused:
        return refused.status


async def test_each_identifier_kind_counts_its_own_callers() -> None:
    registry = QuotaRegistry()
    consumer = Consumer("team-a", frozenset(), "-")
    cases: list[tuple[TokenLimitConfig, Callable[[], Exchange], Callable[[], Exchange]]] = [
        (plugin(identifier="ip"), make_exchange, lambda: make_exchange(remote="192.0.2.2")),
        (
            plugin(identifier="header", header_name="X-Team"),
            lambda: make_exchange({"x-team": "a"}),
            lambda: make_exchange({"x-team": "b"}),
        ),
    ]
    for config, first, other in cases:
        stage = registry.stage(INFO, config, f"ns-{config.identifier}", Upstream())
        assert await spend(stage, first()) == 200
        assert await spend(stage, first()) == 429
        assert await spend(stage, other()) == 200

    def as_consumer() -> Exchange:
        ex = make_exchange()
        ex.consumer, ex.credential_id = consumer, "cred-1"
        return ex

    for kind in ("consumer", "credential"):
        stage = registry.stage(INFO, plugin(identifier=kind), f"ns-{kind}", Upstream())
        assert await spend(stage, as_consumer()) == 200
        assert await spend(stage, as_consumer()) == 429
        # The same address without the consumer: counted by its IP, apart.
        assert await spend(stage, make_exchange()) == 200


async def test_a_missing_header_falls_back_to_the_client_ip() -> None:
    stage = QuotaRegistry().stage(
        INFO, plugin(identifier="header", header_name="x-team"), "ns", Upstream()
    )
    assert await spend(stage, make_exchange()) == 200
    assert await spend(stage, make_exchange(remote="192.0.2.1")) == 429
    assert await spend(stage, make_exchange(remote="192.0.2.9")) == 200
    assert await spend(stage, make_exchange({"x-team": "a"})) == 200


async def test_the_count_strategy_picks_the_usage_field() -> None:
    registry = QuotaRegistry()
    for strategy, spent in (("prompt_tokens", 30), ("completion_tokens", 70)):
        config = plugin(identifier="ip", tokens_count_strategy=strategy)
        stage = registry.stage(INFO, config, "ns", Upstream())
        assert await spend(stage, make_exchange()) == 200
        ex = make_exchange()
        await spend(stage, ex)
        assert dict(ex.response_headers)["x-ratelimit-remaining-tokens"] == str(100 - spent)


async def test_upstream_errors_and_unknown_usage_are_charged_by_the_rules() -> None:
    registry = QuotaRegistry()
    config = plugin(identifier="ip", estimate_prompt=True)

    def estimated() -> Exchange:  # a request estimated at 80 / 4 + 10 = 30 tokens
        ex = make_exchange()
        ex.payload = {"messages": [{"role": "user", "content": "x" * 80}], "max_tokens": 10}
        return ex

    # An upstream error answer: nothing generated, the reservations released.
    stage = registry.stage(INFO, config, "errors", Upstream(status=500, usage=None))
    for _ in range(4):
        assert await spend(stage, estimated()) == 500
    # Reached the upstream, no usage known (a client gone mid-stream): the estimate.
    stage = registry.stage(INFO, config, "unknown", Upstream(usage=None))
    await spend(stage, estimated())
    after = make_exchange()
    await spend(stage, after)
    assert dict(after.response_headers)["x-ratelimit-remaining-tokens"] == "70"


async def test_refusal_carries_retry_after_and_the_rate_headers() -> None:
    stage = QuotaRegistry().stage(INFO, plugin(identifier="ip"), "ns", Upstream())
    await spend(stage, make_exchange())
    ex = make_exchange()
    with pytest.raises(TooManyRequests) as refused:
        await stage(ex)
    retry_ms = int(refused.value.headers["retry-after-ms"])
    assert 0 < retry_ms <= 60_000
    assert refused.value.headers["retry-after"] == str(-(-retry_ms // 1000))
    headers = dict(ex.response_headers)
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert headers["x-ratelimit-remaining-tokens"] == "0"


def test_counters_of_a_config_no_route_uses_any_more_are_freed() -> None:
    registry = QuotaRegistry()
    stage = registry.stage(INFO, plugin(identifier="ip"), "gone", Upstream())
    same = registry.stage(INFO, plugin(identifier="ip"), "gone", Upstream())
    assert len(registry._limiters) == 1
    del stage, same  # the routes left every table
    gc.collect()
    assert len(registry._limiters) == 0


async def test_a_routes_series_stay_while_a_stage_of_it_lives() -> None:
    registry = QuotaRegistry()
    route = RouteInfo("quota-metrics", "-", "azure", "gpt-4o", "gpt-4o", "llm/v1/chat")
    old = registry.stage(route, plugin(identifier="ip"), "m", Upstream())
    await spend(old, make_exchange())
    await spend(old, make_exchange())
    assert QUOTA_METRICS.rejections["quota-metrics"].value == 1
    assert QUOTA_METRICS.charged["quota-metrics"].value == 100
    # A reload recompiles the route: the totals carry on.
    new = registry.stage(route, plugin(identifier="ip"), "m", Upstream())
    del old
    gc.collect()
    assert QUOTA_METRICS.rejections["quota-metrics"].value == 1
    await spend(new, make_exchange())
    assert QUOTA_METRICS.rejections["quota-metrics"].value == 2
    del new  # the route was deleted
    gc.collect()
    assert "quota-metrics" not in QUOTA_METRICS.rejections
    assert "quota-metrics" not in QUOTA_METRICS.charged


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
def test_the_admitted_shortcut_agrees_with_the_window_math(kind: str) -> None:
    """`LocalCounters.headroom` (the per-request shortcut) decides and reports exactly as
    `windows.admission` does, over random counters, windows, limits and reservations."""
    import random

    from aigw.quotas.windows import WindowCounts, admission

    rng = random.Random(11)
    sizes = (10_000, 60_000)
    for _ in range(3000):
        store = LocalCounters(sizes)
        now = rng.randrange(200_000, 400_000)
        # Counts in the previous and the current windows, some past the limits.
        store.add("k", now - rng.randrange(10_000, 20_000), rng.randrange(0, 1200))
        store.add("k", now, rng.randrange(-50, 900))
        limits = (rng.randrange(1, 1500), rng.randrange(1, 3000))
        reservation = rng.choice((0, 0, rng.randrange(1, 1600)))
        counts = store.counts("k", now)
        windows = tuple(
            WindowCounts(size, limit, *count)
            for size, limit, count in zip(sizes, limits, counts, strict=True)
        )
        reference = admission(kind, windows, reservation)  # type: ignore[arg-type]
        fast = store.headroom("k", now, limits, reservation, kind == "sliding")
        if not reference.admitted:
            assert fast is None
            continue
        assert fast == (
            reference.limit,
            reference.remaining,
            reference.reset_ms,
            reference.window_ms,
        )
