"""Window math of token quotas: estimates, admission, retry-after and reset, exactly."""

from __future__ import annotations

import pytest

from aigw.quotas.windows import (
    WindowCounts,
    admission,
    estimate,
    format_duration,
    full_reset_ms,
    threshold,
    wait_ms,
    window_start,
)


def counts(
    current: int, previous: int = 0, elapsed: int = 0, size: int = 60_000, limit: int = 1000
) -> WindowCounts:
    return WindowCounts(size, limit, current, previous, elapsed)


def test_window_start_is_a_multiple_of_the_size() -> None:
    assert window_start(125_000, 60_000) == 120_000
    assert window_start(120_000, 60_000) == 120_000
    assert window_start(119_999, 60_000) == 60_000


def test_fixed_estimate_is_the_current_count() -> None:
    assert estimate("fixed", counts(300, previous=900, elapsed=10_000)) == 300


def test_sliding_estimate_weighs_the_previous_window_by_its_overlap() -> None:
    # A quarter of the current window elapsed: three quarters of the previous one still count.
    assert estimate("sliding", counts(100, previous=400, elapsed=15_000)) == 100 + 300
    assert estimate("sliding", counts(100, previous=400, elapsed=0)) == 500


def test_negative_counters_count_as_none() -> None:
    # A reservation settled after its window rolled can leave a counter below zero.
    assert estimate("sliding", counts(-50, previous=-10, elapsed=0)) == 0


def test_fixed_refused_until_the_window_ends() -> None:
    verdict = admission("fixed", (counts(1000, elapsed=45_500),))
    assert not verdict.admitted
    assert verdict.retry_after_ms == 14_500  # the next window starts empty at its first ms
    assert verdict.remaining == 0
    assert verdict.reset_ms == 14_500


def test_fixed_admits_below_the_limit() -> None:
    verdict = admission("fixed", (counts(999, elapsed=1000),))
    assert verdict.admitted and verdict.retry_after_ms == 0
    assert (verdict.limit, verdict.remaining, verdict.reset_ms) == (1000, 1, 59_000)


def test_sliding_waits_for_the_previous_window_to_slide_out() -> None:
    # estimate(d) = 600 + 800 * (45_000 - d) / 60_000 < 1000  <=>  d > 15_000 exactly.
    window = counts(600, previous=800, elapsed=15_000)
    assert estimate("sliding", window) == 1200
    assert wait_ms("sliding", window, 1000) == 15_001
    verdict = admission("sliding", (window,))
    assert not verdict.admitted and verdict.retry_after_ms == 15_001
    after = counts(600, previous=800, elapsed=15_000 + 15_001)
    assert estimate("sliding", after) < 1000


def test_sliding_current_over_the_limit_waits_into_the_next_window() -> None:
    # Current alone is 1500: in the next window 1500 * (60_000 - e) / 60_000 < 1000
    # <=> e > 20_000; the window ends in 50_000 ms.
    window = counts(1500, previous=0, elapsed=10_000)
    assert wait_ms("sliding", window, 1000) == 50_000 + 20_000 + 1
    next_window = counts(0, previous=1500, elapsed=20_001)
    assert estimate("sliding", next_window) < 1000
    assert estimate("sliding", counts(0, previous=1500, elapsed=20_000)) == 1000


def test_sliding_estimate_equal_to_the_limit_is_refused_for_a_millisecond() -> None:
    window = counts(500, previous=1000, elapsed=30_000)
    assert estimate("sliding", window) == 1000
    assert admission("sliding", (window,)).retry_after_ms == 1


def test_sliding_reset_is_when_both_windows_have_slid_out() -> None:
    assert full_reset_ms("sliding", counts(1, previous=5, elapsed=10_000)) == 110_000
    assert full_reset_ms("sliding", counts(0, previous=5, elapsed=10_000)) == 50_000
    assert full_reset_ms("sliding", counts(0, previous=0, elapsed=10_000)) == 0
    assert full_reset_ms("fixed", counts(0, previous=5, elapsed=10_000)) == 0


def test_the_longest_wait_of_all_refusing_windows_decides() -> None:
    minute = counts(1000, elapsed=59_000, size=60_000, limit=1000)
    day = counts(50_000, elapsed=3_600_000, size=86_400_000, limit=50_000)
    verdict = admission("fixed", (minute, day))
    assert not verdict.admitted
    assert verdict.retry_after_ms == 86_400_000 - 3_600_000
    assert verdict.window_ms == 86_400_000


def test_headers_describe_the_most_constrained_window() -> None:
    minute = counts(100, elapsed=0, size=60_000, limit=1000)  # 900 left
    day = counts(9_800, elapsed=0, size=86_400_000, limit=10_000)  # 200 left
    verdict = admission("fixed", (minute, day))
    assert verdict.admitted
    assert (verdict.limit, verdict.remaining) == (10_000, 200)


def test_a_reservation_must_fit_and_is_taken_from_remaining() -> None:
    window = counts(700, elapsed=0)
    assert admission("fixed", (window,), reservation=299).admitted
    assert admission("fixed", (window,), reservation=299).remaining == 1
    refused = admission("fixed", (window,), reservation=300)
    assert not refused.admitted and refused.retry_after_ms == 60_000


def test_a_reservation_larger_than_the_limit_fits_an_empty_window() -> None:
    assert threshold(1000, 5000) == 1
    assert admission("fixed", (counts(0),), reservation=5000).admitted
    assert not admission("fixed", (counts(1),), reservation=5000).admitted


def test_sliding_wait_with_a_reservation() -> None:
    # Threshold 1000 - 200 = 800; the window ends in 50_000 ms:
    # 400 + 800 * (50_000 - d) / 60_000 < 800  <=>  d > 20_000.
    window = counts(400, previous=800, elapsed=10_000)
    assert admission("sliding", (window,), reservation=200).retry_after_ms == 20_001


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (250, "250ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (59_999, "59.999s"),
        (60_000, "1m0s"),
        (360_000, "6m0s"),
        (3_723_400, "1h2m3.4s"),
        (86_400_000, "24h0m0s"),
    ],
)
def test_reset_duration_format_is_openais(ms: int, text: str) -> None:
    assert format_duration(ms) == text
