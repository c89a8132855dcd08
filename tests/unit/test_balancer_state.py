"""TargetState: breaker cycle, cooldown, in-flight, EWMA, usage; TargetStates identity."""

from __future__ import annotations

import gc

import pytest

from aigw.balancer.state import LATENCY_DECAY_S, USAGE_DECAY_S, TargetKey, TargetState, TargetStates

KEY: TargetKey = ("https://sweden.example:443", "/openai/deployments/gpt-4o", "fp-1")


def _ok(state: TargetState, now: float, e2e_s: float = 1.0) -> None:
    state.begin(now)
    state.succeeded(now, e2e_s=e2e_s, tpot_s=None, tokens=None)
    state.end()


def _fail(state: TargetState, now: float) -> bool:
    state.begin(now)
    ejected = state.failed(now, max_fails=3, fail_timeout_s=10.0)
    state.end()
    return ejected


def _ejected_at(now: float) -> TargetState:
    state = TargetState(KEY)
    assert not _fail(state, now)
    assert not _fail(state, now)
    assert _fail(state, now)
    return state


# -- circuit breaker ------------------------------------------------------------


def test_max_fails_within_fail_timeout_open_the_circuit_for_fail_timeout() -> None:
    state = _ejected_at(100.0)
    assert state.status(100.0) == "open"
    assert not state.available(109.9)
    assert state.open_until() == pytest.approx(110.0)
    assert state.status(110.0) == "half-open"
    assert state.available(110.0)


def test_failures_spread_wider_than_fail_timeout_never_open_it() -> None:
    state = TargetState(KEY)
    # A sliding window: any 3 failures within 10 s eject, 3 spread over 10.5 s do not.
    for now in (0.0, 5.0, 10.5, 16.0, 21.5):
        assert not _fail(state, now)
    assert state.status(21.5) == "closed"
    assert _fail(state, 22.0)  # 16.0, 21.5, 22.0 lie within 10 s


def test_breaker_off_with_max_fails_zero_or_fail_timeout_zero() -> None:
    state = TargetState(KEY)
    for now in range(50):
        assert not state.failed(float(now), max_fails=0, fail_timeout_s=10.0)
        assert not state.failed(float(now), max_fails=1, fail_timeout_s=0.0)
    assert state.status(50.0) == "closed"


def test_half_open_lets_exactly_one_probe_through_and_its_success_closes() -> None:
    state = _ejected_at(0.0)
    assert state.available(10.0)
    state.begin(10.0)  # the probe
    assert state.status(10.5) == "half-open"
    assert not state.available(10.5)  # every concurrent pick sees it unavailable
    state.succeeded(11.0, e2e_s=1.0, tpot_s=None, tokens=None)
    state.end()
    assert state.status(11.0) == "closed"
    assert state.available(11.0)
    # Closed again means a fresh count: one failure does not re-eject.
    assert not _fail(state, 12.0)


def test_a_failed_probe_reopens_for_another_fail_timeout() -> None:
    state = _ejected_at(0.0)
    state.begin(10.0)
    assert state.failed(
        12.0, max_fails=3, fail_timeout_s=10.0
    )  # one failure is enough while half-open
    state.end()
    assert state.status(12.0) == "open"
    assert not state.available(21.9)
    assert state.status(22.0) == "half-open"
    assert state.available(22.0)


def test_a_probe_that_ends_without_an_outcome_frees_the_probe() -> None:
    state = _ejected_at(0.0)
    state.begin(10.0)
    assert not state.available(10.1)
    state.end()  # the client went away: neither succeeded nor failed
    assert state.available(10.2)
    assert state.status(10.2) == "half-open"


def test_an_older_attempt_ending_during_the_probe_does_not_free_it() -> None:
    state = TargetState(KEY)
    state.begin(0.0)  # a long stream, begun before the ejection
    for now in (1.0, 2.0, 3.0):
        _fail(state, now)
    assert state.status(3.0) == "open"
    state.begin(13.0)  # the probe
    state.end()  # the old stream ends without an outcome
    assert not state.available(13.5)
    # A lost probe is given up on after fail_timeout at the latest.
    assert state.available(23.0)


def test_failures_of_attempts_ending_while_open_do_not_extend_it() -> None:
    state = _ejected_at(0.0)
    assert not state.failed(5.0, max_fails=3, fail_timeout_s=10.0)
    assert state.open_until() == pytest.approx(10.0)


# -- cooldown --------------------------------------------------------------------


def test_cooldown_blocks_until_the_retry_after_and_is_never_shortened() -> None:
    state = TargetState(KEY)
    state.cool_down(30.0)
    assert state.status(29.9) == "cooling"
    assert not state.available(29.9)
    state.cool_down(20.0)  # a later, shorter retry-after does not shorten it
    assert state.cooling_until() == pytest.approx(30.0)
    assert not state.available(25.0)
    assert state.available(30.0)
    assert state.status(30.0) == "closed"
    assert state.available_at() == pytest.approx(30.0)


def test_open_wins_over_cooling_in_status() -> None:
    state = _ejected_at(0.0)
    state.cool_down(15.0)
    assert state.status(5.0) == "open"
    assert state.status(12.0) == "cooling"
    assert not state.available(12.0)
    assert state.status(15.0) == "half-open"


# -- in flight, latency, usage ---------------------------------------------------------


def test_in_flight_counts_begun_attempts_and_never_goes_negative() -> None:
    state = TargetState(KEY)
    state.begin(0.0)
    state.begin(0.0)
    assert state.in_flight == 2
    state.end()
    state.end()
    state.end()
    assert state.in_flight == 0


def test_peak_ewma_jumps_up_at_once_and_decays_down_with_time() -> None:
    state = TargetState(KEY)
    assert state.latency(0.0, tpot=False) is None
    _ok(state, 0.0, e2e_s=1.0)
    _ok(state, 1.0, e2e_s=5.0)
    assert state.ewma_e2e_s == pytest.approx(5.0)  # a peak replaces the average
    _ok(state, 1.0 + LATENCY_DECAY_S, e2e_s=1.0)  # one time constant: 1 - 1/e of the way
    assert state.ewma_e2e_s == pytest.approx(1.0 + 4.0 / 2.718281828, rel=1e-6)
    for step in range(2, 12):
        _ok(state, 1.0 + step * LATENCY_DECAY_S, e2e_s=1.0)
    assert state.ewma_e2e_s == pytest.approx(1.0, abs=1e-3)


def test_tpot_is_sampled_apart_and_read_decays_toward_zero_while_idle() -> None:
    state = TargetState(KEY)
    state.succeeded(0.0, e2e_s=2.0, tpot_s=0.02, tokens=None)
    assert state.latency(0.0, tpot=True) == pytest.approx(0.02)
    assert state.latency(0.0, tpot=False) == pytest.approx(2.0)
    # Idle for one time constant: read as 1/e of it, so it gets measured again.
    assert state.latency(LATENCY_DECAY_S, tpot=False) == pytest.approx(2.0 / 2.718281828)


def test_usage_is_a_decaying_sum_of_tokens() -> None:
    state = TargetState(KEY)
    state.succeeded(0.0, e2e_s=1.0, tpot_s=None, tokens=1000)
    state.succeeded(0.0, e2e_s=1.0, tpot_s=None, tokens=500)
    assert state.usage(0.0) == pytest.approx(1500.0)
    assert state.usage(USAGE_DECAY_S) == pytest.approx(1500.0 / 2.718281828)
    state.succeeded(USAGE_DECAY_S, e2e_s=1.0, tpot_s=None, tokens=100)
    assert state.usage(USAGE_DECAY_S) == pytest.approx(1500.0 / 2.718281828 + 100)
    assert state.usage(20 * USAGE_DECAY_S) < 1.0


# -- the registry ----------------------------------------------------------------------


def test_same_key_same_state_across_reloads_while_any_route_holds_it() -> None:
    states = TargetStates()
    old_table = [states.state(KEY)]
    old_table[0].cool_down(99.0)
    old_table[0].begin(0.0)
    # A reload builds the new table while the old one is still live.
    new_table = [states.state(KEY), states.state(("https://eastus:443", "/d/east", "fp-2"))]
    assert new_table[0] is old_table[0]
    assert new_table[0].status(50.0) == "cooling"
    assert new_table[1] is not new_table[0]
    del old_table
    gc.collect()
    assert states.state(KEY) is new_table[0]


def test_a_changed_credential_is_another_target_and_an_unheld_state_goes() -> None:
    states = TargetStates()
    first = states.state(KEY)
    assert states.state((KEY[0], KEY[1], "fp-rotated")) is not first
    first.cool_down(99.0)
    del first
    gc.collect()
    assert len(states) == 0
    assert states.state(KEY).status(50.0) == "closed"
