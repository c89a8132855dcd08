"""In-process token counters: rolling windows, settling reservations, bounded memory."""

from __future__ import annotations

from aigw.quotas.limiter import Limiter
from aigw.quotas.local import LocalCounters
from aigw.quotas.stage import prompt_estimate

MINUTE = 60_000


def test_counts_roll_into_the_previous_window_then_out() -> None:
    store = LocalCounters((MINUTE,))
    store.add("a", 10_000, 300)
    assert store.counts("a", 59_999) == [(300, 0, 59_999)]
    assert store.counts("a", 60_000) == [(0, 300, 0)]
    # Two windows later the count is history.
    assert store.counts("a", 180_000) == [(0, 0, 0)]


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
