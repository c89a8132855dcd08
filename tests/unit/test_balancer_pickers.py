"""Pickers: weighted shares, priority spill, lowest-latency warm-up and convergence,
lowest-usage, least-connections, consistent-hashing stability."""

from __future__ import annotations

from collections import Counter

import pytest

from aigw.balancer.pickers import Picker, make_picker
from aigw.balancer.state import TargetState
from aigw.config.model import BalancerAlgorithm, BalancerConfig


def _states(count: int) -> list[TargetState]:
    return [
        TargetState((f"https://region{i}.example:443", f"/openai/deployments/d{i}", "fp"))
        for i in range(count)
    ]


def _picker(
    algorithm: BalancerAlgorithm, weights: list[int], states: list[TargetState], **config: str
) -> Picker:
    return make_picker(BalancerConfig(algorithm=algorithm, **config), weights, states)  # type: ignore[arg-type]


def _shares(
    picker: Picker, picks: int, exclude: tuple[int, ...] = (), now: float = 0.0
) -> Counter[int | None]:
    return Counter(picker.pick(None, exclude, now) for _ in range(picks))


# -- round-robin --------------------------------------------------------------------------


def test_round_robin_gives_exact_weight_shares_every_cycle() -> None:
    picker = _picker("round-robin", [100, 50, 25], _states(3))
    # Smooth WRR is exact per cycle of sum(weights)/gcd = 7 picks: tolerance 0.
    assert _shares(picker, 7000) == {0: 4000, 1: 2000, 2: 1000}


def test_round_robin_is_smooth_like_nginx() -> None:
    picker = _picker("round-robin", [5, 1, 1], _states(3))
    assert [picker.pick(None, (), 0.0) for _ in range(7)] == [0, 0, 1, 0, 2, 0, 0]


def test_round_robin_skips_unavailable_without_disturbing_the_others() -> None:
    states = _states(3)
    picker = _picker("round-robin", [300, 200, 100], states)
    states[0].cool_down(10.0)
    assert _shares(picker, 3000, now=5.0) == {1: 2000, 2: 1000}
    # Back from its cooldown, member 0 takes its 1/2 again (within one cycle's credit).
    shares = _shares(picker, 6000, now=10.0)
    assert abs(shares[0] - 3000) <= 6
    assert abs(shares[1] - 2000) <= 6
    assert abs(shares[2] - 1000) <= 6


def test_round_robin_honours_exclude_and_answers_none_when_nothing_is_left() -> None:
    states = _states(2)
    picker = _picker("round-robin", [100, 100], states)
    assert {picker.pick(None, (0,), 0.0) for _ in range(10)} == {1}
    assert picker.pick(None, (0, 1), 0.0) is None
    states[1].cool_down(5.0)
    assert picker.pick(None, (0,), 0.0) is None
    assert picker.pick(None, (0,), 5.0) == 1


# -- priority ---------------------------------------------------------------------------------


def test_priority_uses_the_top_group_round_robin_and_spills_only_when_it_is_all_out() -> None:
    states = _states(4)
    picker = _picker("priority", [100, 10, 100, 50], states)
    assert _shares(picker, 100) == {0: 50, 2: 50}
    assert _shares(picker, 10, exclude=(0,)) == {2: 10}
    states[2].cool_down(30.0)
    assert _shares(picker, 10, exclude=(0,)) == {3: 10}
    states[3].cool_down(30.0)
    assert _shares(picker, 10, exclude=(0,)) == {1: 10}
    assert picker.pick(None, (0, 1), 0.0) is None
    # The top group is back: all its traffic returns to it at once.
    assert _shares(picker, 100, now=30.0) == {0: 50, 2: 50}


# -- lowest-latency ---------------------------------------------------------------------------


def _run(
    picker: Picker, states: list[TargetState], latency: list[float], start: float, picks: int
) -> Counter[int]:
    """Sequential requests 0.1 s apart, each answering in its target's latency."""
    counts: Counter[int] = Counter()
    for n in range(picks):
        now = start + n * 0.1
        chosen = picker.pick(None, (), now)
        assert chosen is not None
        counts[chosen] += 1
        states[chosen].begin(now)
        states[chosen].succeeded(
            now, e2e_s=latency[chosen] * 10, tpot_s=latency[chosen], tokens=None
        )
        states[chosen].end()
    return counts


def test_lowest_latency_measures_every_member_first() -> None:
    states = _states(3)
    picker = _picker("lowest-latency", [100, 100, 100], states)
    states[0].succeeded(0.0, e2e_s=1.0, tpot_s=0.001, tokens=None)  # very fast, but measured
    first = picker.pick(None, (), 0.0)
    assert first in (1, 2)
    states[first].begin(0.0)
    # The other unmeasured member goes next; the busy unmeasured one is not picked
    # again before measured members.
    second = picker.pick(None, (), 0.0)
    assert second == 3 - first
    states[second].begin(0.0)
    assert picker.pick(None, (), 0.0) == 0


def test_lowest_latency_converges_on_the_fast_region_and_follows_a_change() -> None:
    states = _states(2)
    picker = _picker("lowest-latency", [100, 100], states, latency_strategy="tpot")
    counts = _run(picker, states, [0.05, 0.02], start=1.0, picks=600)  # one simulated minute
    # The slow region is re-measured now and then (its read value decays), rarely.
    assert counts[1] >= 0.9 * 600
    assert counts[0] >= 2
    # Region 1 turns slow: its first slow answer moves traffic away at once (peak EWMA).
    counts = _run(picker, states, [0.05, 0.2], start=61.0, picks=600)
    assert counts[0] >= 0.9 * 600


def test_lowest_latency_e2e_strategy_reads_end_to_end_samples() -> None:
    states = _states(2)
    picker = _picker("lowest-latency", [100, 100], states, latency_strategy="e2e")
    states[0].succeeded(1.0, e2e_s=1.0, tpot_s=0.5, tokens=None)
    states[1].succeeded(1.0, e2e_s=3.0, tpot_s=0.01, tokens=None)
    assert picker.pick(None, (), 1.0) == 0


def test_lowest_latency_ties_go_round_robin_by_weight() -> None:
    states = _states(2)
    picker = _picker("lowest-latency", [200, 100], states)
    for state in states:
        state.succeeded(1.0, e2e_s=1.0, tpot_s=0.02, tokens=None)
    assert _shares(picker, 300, now=1.0) == {0: 200, 1: 100}


# -- lowest-usage, least-connections ------------------------------------------------------------


def test_lowest_usage_picks_the_fewest_decayed_tokens_per_weight() -> None:
    states = _states(3)
    picker = _picker("lowest-usage", [200, 100, 100], states)
    states[0].succeeded(0.0, e2e_s=1.0, tpot_s=None, tokens=3000)  # 15 per unit of weight
    states[1].succeeded(0.0, e2e_s=1.0, tpot_s=None, tokens=1000)  # 10
    states[2].succeeded(0.0, e2e_s=1.0, tpot_s=None, tokens=2000)  # 20
    assert picker.pick(None, (), 0.0) == 1
    assert picker.pick(None, (1,), 0.0) == 0
    # Usage fades: a minute later, a fresh 1200 on member 1 outweighs the old rest.
    states[1].succeeded(60.0, e2e_s=1.0, tpot_s=None, tokens=1200)
    assert picker.pick(None, (), 60.0) == 0


def test_lowest_usage_shares_by_weight_while_nothing_is_used() -> None:
    picker = _picker("lowest-usage", [200, 100], _states(2))
    assert _shares(picker, 300) == {0: 200, 1: 100}


def test_least_connections_balances_in_flight_by_weight() -> None:
    states = _states(3)
    picker = _picker("least-connections", [200, 100, 100], states)
    for _ in range(40):
        chosen = picker.pick(None, (), 0.0)
        assert chosen is not None
        states[chosen].begin(0.0)  # long streams: nothing ends
    assert [state.in_flight for state in states] == [20, 10, 10]
    states[1].end()
    states[1].end()
    assert picker.pick(None, (), 0.0) == 1
    assert picker.pick(None, (1,), 0.0) in (0, 2)


# -- consistent-hashing ----------------------------------------------------------------------------

KEYS = [f"session-{n}" for n in range(4000)]


def _owners(picker: Picker, exclude: tuple[int, ...] = ()) -> list[int | None]:
    return [picker.pick(key, exclude, 0.0) for key in KEYS]


def test_consistent_hashing_keeps_a_key_on_its_target_and_spreads_keys_by_weight() -> None:
    states = _states(3)
    picker = _picker("consistent-hashing", [100, 100, 200], states)
    owners = _owners(picker)
    assert _owners(picker) == owners
    # Another picker (another worker, another reload) over the same targets agrees.
    assert _owners(_picker("consistent-hashing", [100, 100, 200], states)) == owners
    shares = Counter(owners)
    # 256 virtual nodes for the heaviest: shares within 15 % of the weights.
    assert shares[2] == pytest.approx(2000, rel=0.15)
    assert shares[0] == pytest.approx(1000, rel=0.15)
    assert shares[1] == pytest.approx(1000, rel=0.15)


def test_consistent_hashing_moves_only_an_excluded_or_removed_targets_keys() -> None:
    states = _states(4)
    weights = [100, 100, 100, 100]
    owners = _owners(_picker("consistent-hashing", weights, states))
    picker = _picker("consistent-hashing", weights, states)
    states[1].cool_down(1.0)
    for before, after in zip(owners, _owners(picker), strict=True):
        assert after == before if before != 1 else after in (0, 2, 3)
    # Member 1 removed from the file: the others' keys stay where they were.
    remaining = [states[0], states[2], states[3]]
    shrunk = _owners(_picker("consistent-hashing", weights[:3], remaining))
    moved = 0
    for before, after in zip(owners, shrunk, strict=True):
        assert before is not None
        assert after is not None
        if before == 1:
            moved += 1
        else:
            assert remaining[after] is states[before]
    # Its keys spread over the others instead of all landing on one neighbour.
    assert moved > 500
    assert len({after for before, after in zip(owners, shrunk, strict=True) if before == 1}) == 3


def test_consistent_hashing_without_a_key_is_round_robin_and_respects_exclude() -> None:
    states = _states(2)
    picker = _picker("consistent-hashing", [100, 100], states)
    assert _shares(picker, 10) == {0: 5, 1: 5}
    assert picker.pick("session-1", (0, 1), 0.0) is None
    assert {picker.pick(key, (0,), 0.0) for key in KEYS[:50]} == {1}


# -- construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [[100], [100, 0], []])
def test_make_picker_rejects_bad_pools(weights: list[int]) -> None:
    with pytest.raises(ValueError):
        make_picker(BalancerConfig(), weights, _states(2))
