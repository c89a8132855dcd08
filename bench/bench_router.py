"""Micro-benchmark: `Router.match` cost at 10, 1,000 and 10,000 routes.

Run from the repository root::

    .venv/bin/python bench/bench_router.py

Each table is N static routes ``POST /openai/deployments/dep-{i}/chat/completions`` plus a
few parameter and wildcard routes. For each case the script times ``ROUNDS`` rounds of
``LOOPS`` calls with `time.perf_counter_ns` and prints the median over rounds of the ns per
call. The "normalise" column is `normalize_request_path` on the static path (its fast path).

Lookup cost should stay flat as N grows: a static hit is one dict lookup on the whole path,
and the trie walk does one dict lookup per segment whatever the number of siblings.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

from aigw.routing import Match, Router, RouterBuilder, normalize_request_path

SIZES = (10, 1_000, 10_000)
ROUNDS = 31
LOOPS = 10_000
CASES = ("static hit", "param hit", "miss", "normalise")

PARAM_ROUTES = (
    ("/openai/deployments/{deployment}/embeddings", "POST"),
    ("/openai/deployments/{deployment}/completions", "POST"),
    ("/openai/deployments/{deployment}/audio/transcriptions", "POST"),
    ("/openai/files/{file_id}/content", "GET"),
    ("/openai/v1/*", "POST"),
)


def build(size: int) -> Router[int]:
    builder: RouterBuilder[int] = RouterBuilder()
    for i in range(size):
        builder.add(
            f"/openai/deployments/dep-{i}/chat/completions", frozenset({"POST"}), i, "bench"
        )
    for offset, (template, method) in enumerate(PARAM_ROUTES):
        builder.add(template, frozenset({method}), size + offset, "bench")
    return builder.build()


def cases(size: int) -> dict[str, Callable[[], object]]:
    """The timed calls for one table size, each checked to do what its name says."""
    router = build(size)
    static_path = f"/openai/deployments/dep-{size // 2}/chat/completions"
    param_path = "/openai/deployments/not-listed/embeddings"
    miss_path = "/openai/deployments/not-listed/chat/completions"
    static = router.match("POST", static_path)
    assert isinstance(static, Match) and static.value == size // 2
    param = router.match("POST", param_path)
    assert isinstance(param, Match) and param.params == {"deployment": "not-listed"}
    assert router.match("POST", miss_path) is None  # walks the param branch, then gives up
    return {
        "static hit": partial(router.match, "POST", static_path),
        "param hit": partial(router.match, "POST", param_path),
        "miss": partial(router.match, "POST", miss_path),
        "normalise": partial(normalize_request_path, static_path),
    }


def time_round(call: Callable[[], object]) -> float:
    """Mean ns per call over LOOPS calls."""
    start = time.perf_counter_ns()
    for _ in range(LOOPS):
        call()
    return (time.perf_counter_ns() - start) / LOOPS


def main() -> None:
    calls = {size: cases(size) for size in SIZES}
    # The loop plus a partial() call of a trivial builtin, subtracted so the figures are the
    # router's own cost.
    baseline = partial(len, "")
    samples: dict[tuple[int, str], list[float]] = {(s, c): [] for s in SIZES for c in CASES}
    overhead: list[float] = []
    # NOTE: rounds interleave every size and case, so a burst of load from other processes
    # lands on all of them alike instead of skewing one column.
    for _ in range(ROUNDS):
        overhead.append(time_round(baseline))
        for size in SIZES:
            for case in CASES:
                samples[size, case].append(time_round(calls[size][case]))
    base = statistics.median(overhead)
    print(f"median ns per call over {ROUNDS} rounds of {LOOPS} calls;", end=" ")
    print(f"{base:.0f} ns loop overhead subtracted")
    print(f"{'routes':>8}" + "".join(f"{case:>12}" for case in CASES))
    for size in SIZES:
        row = [statistics.median(samples[size, case]) - base for case in CASES]
        routes = size + len(PARAM_ROUTES)
        print(f"{routes:>8}" + "".join(f"{value:>12.0f}" for value in row))


if __name__ == "__main__":
    main()
