"""Balanced routes end to end: the real openai SDK, a real ``aigw serve``, three mock regions.

Three Azure mocks play the regions ``sweden``, ``eastus`` and ``westus``; each has its own
API key and reports its region in the model snapshot it answers with (``gpt-4o-sweden``),
so the SDK's own ``response.model`` says which region answered. Every test has a route of
its own over deployments of its own (balancer state belongs to the target: upstream,
deployment and credential), and schedules its faults on its own deployment, so tests do
not share cooldowns or breakers. The SDK runs with ``max_retries=0`` unless a test is
about its retry: a failure the gateway lets through is a failed call, not a hidden retry.

Timings are small (retry-after 0.3-8 s, fail_timeout 1-2 s) so the file runs in well under
a minute; bounds are generous upward and never tight downward.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncAzureOpenAI, AzureOpenAI

from tests.integration.harness import (
    GatewayProcess,
    MockProcess,
    mock_regions,
    pool_route_file,
    wait_until,
)
from tests.integration.rawnet import COMPLETION_ANSWER
from tests.integration.test_sdk import API_VERSION, QUESTION, sync_client

REGIONS = ("sweden", "eastus", "westus")
SNAPSHOT = "gpt-4o-{region}"
"""The model each region answers with: the SDK's ``response.model`` names the region."""

FAILOVER_ALL = [
    "error",
    "timeout",
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "non_idempotent",
]

# route name -> (algorithm and other balancer fields, [(region, weight), ...])
ROUTES: dict[str, tuple[dict[str, Any], list[tuple[str, int]]]] = {
    "rr": ({"algorithm": "round-robin"}, [("sweden", 100), ("eastus", 300)]),
    "prio": (
        {"algorithm": "priority", "failover_criteria": FAILOVER_ALL, "retries": 1},
        [("sweden", 100), ("eastus", 50)],
    ),
    "latency": (
        {"algorithm": "lowest-latency", "latency_strategy": "e2e"},
        [("sweden", 100), ("eastus", 100)],
    ),
    "hashing": (
        {"algorithm": "consistent-hashing", "hash_on_header": "x-session-id"},
        [("sweden", 100), ("eastus", 100), ("westus", 100)],
    ),
    "leastconn": ({"algorithm": "least-connections"}, [("sweden", 100), ("eastus", 100)]),
    "on429": (
        {"algorithm": "round-robin", "failover_criteria": FAILOVER_ALL},
        [("sweden", 100), ("eastus", 100)],
    ),
    "on5xx": (
        {"algorithm": "priority", "failover_criteria": FAILOVER_ALL},
        [("sweden", 100), ("eastus", 50)],
    ),
    "postonly": (
        # Without non_idempotent a POST moves on only when it was never sent.
        {
            "algorithm": "priority",
            "failover_criteria": ["error", "timeout", "http_429", "http_500", "http_503"],
        },
        [("sweden", 100), ("eastus", 50)],
    ),
    "refused": ({"algorithm": "priority"}, [("sweden", 100), ("eastus", 50)]),
    "clienterr": (
        {"algorithm": "priority", "failover_criteria": FAILOVER_ALL},
        [("sweden", 100), ("eastus", 50)],
    ),
    "streaming": (
        {"algorithm": "priority", "failover_criteria": FAILOVER_ALL},
        [("sweden", 100), ("eastus", 50)],
    ),
    "exhaust": (
        {"algorithm": "priority", "failover_criteria": FAILOVER_ALL, "retries": 1},
        [("sweden", 100), ("eastus", 50), ("westus", 10)],
    ),
    "breaker": (
        {
            "algorithm": "priority",
            "failover_criteria": FAILOVER_ALL,
            "max_fails": 2,
            "fail_timeout": 1500,
        },
        [("sweden", 100), ("eastus", 50)],
    ),
    "reload": (
        {"algorithm": "priority", "failover_criteria": FAILOVER_ALL, "retries": 1},
        [("sweden", 100), ("eastus", 50)],
    ),
    "alldown": (
        {"algorithm": "round-robin", "failover_criteria": FAILOVER_ALL},
        [("sweden", 100), ("eastus", 100)],
    ),
    "allbroken": (
        {"algorithm": "round-robin", "max_fails": 1, "fail_timeout": 2000},
        [("sweden", 100), ("eastus", 100)],
    ),
    "survive": (
        {"algorithm": "round-robin", "failover_criteria": FAILOVER_ALL},
        [("sweden", 100), ("eastus", 100)],
    ),
    "secrets": ({"algorithm": "round-robin"}, [("sweden", 100), ("eastus", 100)]),
    "usage": ({"algorithm": "lowest-usage"}, [("sweden", 100), ("westus", 100)]),
    "timeouts": (
        {"algorithm": "priority", "failover_criteria": ["error", "timeout", "non_idempotent"]},
        [("sweden", 100), ("eastus", 50)],
    ),
    "notimeout": ({"algorithm": "priority"}, [("sweden", 100), ("eastus", 50)]),
}

TARGET_FIELDS = {"timeouts": ["read_timeout: 300"], "notimeout": ["read_timeout: 300"]}
"""Fields every target of a route gets besides the usual ones."""

TOKENS = {"sweden": 8, "eastus": 8, "westus": 32}
"""Completion tokens per answer: westus spends four times sweden's (lowest-usage)."""


def key_of(region: str) -> str:
    return f"key-{region}-0123456789"


def pool_route(
    name: str,
    balancer: dict[str, Any],
    targets: list[tuple[str, int]],
    mocks: dict[str, MockProcess],
) -> str:
    """A route file: path ``/openai/deployments/NAME/...``, one target per (region, weight)."""
    pool = [(region, weight, key_of(region), mocks[region].url) for region, weight in targets]
    return pool_route_file(name, balancer, pool, TARGET_FIELDS.get(name, ()))


@pytest.fixture(scope="module")
def regions() -> Iterator[dict[str, MockProcess]]:
    args = {
        region: [
            *("--api-key", key_of(region), "--region", region, "--tokens", str(TOKENS[region])),
            *(
                arg
                for name in ROUTES
                for arg in ("--deployment", f"{name}={SNAPSHOT.format(region=region)}")
            ),
        ]
        for region in REGIONS
    }
    with mock_regions(args) as mocks:
        yield mocks


@pytest.fixture(scope="module")
def balanced_conf(
    tmp_path_factory: pytest.TempPathFactory, regions: dict[str, MockProcess]
) -> Path:
    """The conf dir of :func:`balanced`: one file per route of `ROUTES`."""
    conf = tmp_path_factory.mktemp("balanced-conf.d")
    for name, (balancer, targets) in ROUTES.items():
        (conf / f"{name}.yaml").write_text(pool_route(name, balancer, targets, regions))
    return conf


@pytest.fixture(scope="module")
def balanced(balanced_conf: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(balanced_conf)
    yield process
    process.close()


@pytest.fixture(autouse=True)
def _fresh_regions(request: pytest.FixtureRequest) -> None:
    if "regions" in request.fixturenames:
        for mock in request.getfixturevalue("regions").values():
            mock.reset()


def client(gateway: GatewayProcess, *, max_retries: int = 0) -> AzureOpenAI:
    return sync_client(gateway, max_retries=max_retries)


def region_of(model: str) -> str:
    """The region that answered, from the model snapshot it reported."""
    assert model.startswith("gpt-4o-"), model
    return model.removeprefix("gpt-4o-")


def chat(c: AzureOpenAI, route: str, **kw: Any) -> str:
    """One chat call through *route*; the region that answered."""
    return region_of(c.chat.completions.create(model=route, messages=QUESTION, **kw).model)


def received(mock: MockProcess, route: str) -> list[dict[str, Any]]:
    """The requests *mock* received for *route*'s deployment since the test began."""
    return [r for r in mock.requests() if r["deployment"] == route]


def counts(regions: dict[str, MockProcess], route: str) -> dict[str, int]:
    return {region: len(received(mock, route)) for region, mock in regions.items()}


def log_line(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    return gateway.access_log(request_id)


def attempts_of(line: dict[str, Any]) -> list[tuple[str, int | None, str | None]]:
    """(target, status, error) of each attempt the access-log line lists."""
    return [(a["target"], a["status"], a["error"]) for a in line["attempts"]]


def new_id() -> str:
    return f"bal-{os.urandom(8).hex()}"


# -- each algorithm's choice ---------------------------------------------------------------


def test_round_robin_follows_the_weights(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    # Weights 100:300 over 200 concurrent async calls: 50:150, within 10 calls (5 %).
    async def run() -> list[str]:
        async with AsyncAzureOpenAI(
            api_key="client-key",
            azure_endpoint=balanced.url,
            api_version=API_VERSION,
            max_retries=0,
        ) as aclient:
            gate = asyncio.Semaphore(16)

            async def one() -> str:
                async with gate:
                    answer = await aclient.chat.completions.create(model="rr", messages=QUESTION)
                    return region_of(answer.model)

            return await asyncio.gather(*(one() for _ in range(200)))

    answered = Counter(asyncio.run(run()))
    assert abs(answered["sweden"] - 50) <= 10, answered
    assert abs(answered["eastus"] - 150) <= 10, answered
    assert answered["sweden"] + answered["eastus"] == 200
    assert counts(regions, "rr") == {
        "sweden": answered["sweden"],
        "eastus": answered["eastus"],
        "westus": 0,
    }


def test_priority_spills_to_the_lower_group_only_while_the_top_one_cools(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    c = client(balanced)
    assert [chat(c, "prio") for _ in range(5)] == ["sweden"] * 5
    regions["sweden"].fail_next(1, 429, retry_after=2, retry_after_ms=1500, deployment="prio")
    limited_at = time.monotonic()
    during = [chat(c, "prio") for _ in range(5)]
    assert time.monotonic() - limited_at < 1.3, "the calls took too long to prove the cooldown"
    assert during == ["eastus"] * 5
    assert len(received(regions["sweden"], "prio")) == 6  # nothing while it cools
    time.sleep(max(0.0, limited_at + 1.6 - time.monotonic()))
    assert [chat(c, "prio") for _ in range(3)] == ["sweden"] * 3


def test_lowest_latency_moves_traffic_to_the_faster_region_after_warm_up(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    regions["sweden"].fault("delay", latency_ms=300, count=None, deployment="latency")
    c = client(balanced)
    answered = [chat(c, "latency") for _ in range(20)]
    # Warm-up measures each region once; from then on the fast one takes everything.
    assert set(answered[:2]) == {"sweden", "eastus"}
    # (A hiccup of the fast one on a loaded machine may send it one more.)
    assert answered[2:].count("eastus") >= 16, answered
    assert len(received(regions["sweden"], "latency")) <= 3


def test_consistent_hashing_keeps_a_header_value_on_one_target(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    c = client(balanced)
    by_session: dict[str, set[str]] = {}
    for _ in range(3):
        for session in range(12):
            region = chat(c, "hashing", extra_headers={"x-session-id": f"user-{session}"})
            by_session.setdefault(f"user-{session}", set()).add(region)
    assert all(len(seen) == 1 for seen in by_session.values()), by_session
    assert len({next(iter(seen)) for seen in by_session.values()}) >= 2, by_session


def test_least_connections_avoids_the_region_busy_with_a_slow_stream(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    for mock in regions.values():
        mock.fault("delay", token_delay_ms=250, count=1, deployment="leastconn", stream=True)
    c = client(balanced)
    stream = c.chat.completions.create(model="leastconn", messages=QUESTION, stream=True)
    chunks = iter(stream)
    busy = next(region_of(chunk.model) for chunk in chunks if chunk.model)
    quick = [chat(c, "leastconn") for _ in range(6)]
    rest = list(chunks)
    assert rest, "the stream ended before the quick calls were made"
    idle = "eastus" if busy == "sweden" else "sweden"
    assert quick == [idle] * 6
    # Both idle again: the next calls are shared.
    assert set(chat(c, "leastconn") for _ in range(4)) == {"sweden", "eastus"}


def test_lowest_usage_spreads_tokens_not_requests(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    # Each westus answer spends 32 completion tokens, each sweden one 8 (and
    # both the same prompt): sweden takes about 2.5 requests for each of westus'.
    c = client(balanced)
    answered = Counter(chat(c, "usage") for _ in range(35))
    assert answered["sweden"] + answered["westus"] == 35
    assert answered["sweden"] >= 2 * answered["westus"] >= 2, answered


# -- failover ---------------------------------------------------------------------------------


def test_a_429_fails_over_and_the_cooling_region_receives_nothing_until_retry_after(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    sweden = regions["sweden"]
    sweden.fail_next(None, 429, retry_after=1, retry_after_ms=500, deployment="on429")
    c = client(balanced)
    ids = [new_id() for _ in range(14)]
    started = time.monotonic()
    answered = []
    for request_id in ids:
        answered.append(chat(c, "on429", extra_headers={"x-request-id": request_id}))
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    assert answered == ["eastus"] * len(ids)  # zero failed calls
    limited = [r["started_at"] for r in received(sweden, "on429")]
    assert all(r["status"] == 429 for r in received(sweden, "on429"))
    assert 1 <= len(limited) <= elapsed / 0.5 + 1
    gaps = [b - a for a, b in itertools.pairwise(limited)]
    assert all(gap >= 0.45 for gap in gaps), gaps
    failovers = [
        attempts_of(line)
        for line in (log_line(balanced, request_id) for request_id in ids)
        if len(line["attempts"]) > 1
    ]
    assert failovers and all(
        attempts == [("sweden", 429, None), ("eastus", 200, None)] for attempts in failovers
    ), failovers
    sweden.clear_faults()
    time.sleep(0.6)
    assert "sweden" in {chat(c, "on429") for _ in range(4)}


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_fails_over_with_non_idempotent(
    balanced: GatewayProcess, regions: dict[str, MockProcess], status: int
) -> None:
    regions["sweden"].fail_next(1, status, deployment="on5xx")
    request_id = new_id()
    c = client(balanced)
    assert chat(c, "on5xx", extra_headers={"x-request-id": request_id}) == "eastus"
    line = log_line(balanced, request_id)
    assert attempts_of(line) == [("sweden", status, None), ("eastus", 200, None)]
    assert line["target"] == "eastus"
    assert chat(c, "on5xx") == "sweden"  # one failure, no breaker: still first


def test_without_non_idempotent_a_post_that_was_sent_never_fails_over(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    sweden = regions["sweden"]
    c = client(balanced)
    sweden.fail_next(1, 500, deployment="postonly")
    with pytest.raises(openai.InternalServerError):
        chat(c, "postonly")
    sweden.fail_next(1, 429, retry_after=1, retry_after_ms=300, deployment="postonly")
    with pytest.raises(openai.RateLimitError):
        chat(c, "postonly")
    assert received(regions["eastus"], "postonly") == []


def test_a_read_timeout_fails_over_only_with_non_idempotent(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    # Targets' read_timeout is 300 ms; sweden's first byte comes after 1.5 s.
    sweden = regions["sweden"]
    c = client(balanced)
    sweden.slow_first_byte(1500, count=1)
    started = time.monotonic()
    assert chat(c, "timeouts") == "eastus"
    assert time.monotonic() - started < 1.2  # after the timeout, not the slow answer
    sweden.clear_faults()
    sweden.slow_first_byte(1500, count=1)
    with pytest.raises(openai.APIStatusError) as info:
        chat(c, "notimeout")  # a POST that was sent: the timeout is the answer
    assert info.value.status_code == 504
    assert received(regions["eastus"], "notimeout") == []


def test_a_refused_connection_moves_on_even_without_non_idempotent(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    sweden = regions["sweden"]
    c = client(balanced)
    assert chat(c, "refused") == "sweden"  # a pooled connection to it now exists
    request_id = new_id()
    sweden.refuse_connections()
    try:
        assert chat(c, "refused", extra_headers={"x-request-id": request_id}) == "eastus"
        assert [chat(c, "refused") for _ in range(3)] == ["eastus"] * 3
        (first, second) = attempts_of(log_line(balanced, request_id))
        assert first[0] == "sweden" and first[1] is None and first[2] is not None
        assert second == ("eastus", 200, None)
    finally:
        sweden.accept_connections()
    assert chat(c, "refused") == "sweden"


def test_client_errors_never_fail_over(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    c = client(balanced)
    regions["sweden"].fail_next(1, 400, deployment="clienterr")
    with pytest.raises(openai.BadRequestError):
        chat(c, "clienterr")
    # A request aigw itself refuses (the body's model is none of the route's) reaches no one.
    with pytest.raises(openai.BadRequestError):
        chat(c, "clienterr", extra_body={"model": "some-other-model"})
    assert counts(regions, "clienterr") == {"sweden": 1, "eastus": 0, "westus": 0}


def test_a_stream_fails_over_before_its_first_byte_never_after(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    sweden, eastus = regions["sweden"], regions["eastus"]
    c = client(balanced)
    sweden.fail_next(1, 503, deployment="streaming", stream=True)
    chunks = list(c.chat.completions.create(model="streaming", messages=QUESTION, stream=True))
    assert {region_of(chunk.model) for chunk in chunks if chunk.model} == {"eastus"}
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len(received(eastus, "streaming")) == 1
    sweden.fault("cut_stream", after_events=2, deployment="streaming", stream=True)
    stream = c.chat.completions.create(model="streaming", messages=QUESTION, stream=True)
    got = []
    with pytest.raises((openai.APIError, openai.APIConnectionError)):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 2
    assert {region_of(chunk.model) for chunk in got if chunk.model} == {"sweden"}
    assert len(received(eastus, "streaming")) == 1  # nothing more after the first byte


def test_retries_exhausted_relays_the_last_answer(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    for mock in regions.values():
        mock.fail_next(1, 429, retry_after=1, retry_after_ms=1000, deployment="exhaust")
    request_id = new_id()
    with pytest.raises(openai.RateLimitError):
        chat(client(balanced), "exhaust", extra_headers={"x-request-id": request_id})
    # retries: 1 -> two attempts; the third region is never tried.
    assert counts(regions, "exhaust") == {"sweden": 1, "eastus": 1, "westus": 0}
    assert [a[:2] for a in attempts_of(log_line(balanced, request_id))] == [
        ("sweden", 429),
        ("eastus", 429),
    ]


def test_circuit_opens_then_a_half_open_probe_closes_it(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    sweden = regions["sweden"]
    c = client(balanced)
    sweden.fail_next(2, 500, deployment="breaker")
    assert [chat(c, "breaker") for _ in range(2)] == ["eastus", "eastus"]
    ejected_at = time.monotonic()  # max_fails 2 reached: open for fail_timeout (1.5 s)
    assert [chat(c, "breaker") for _ in range(4)] == ["eastus"] * 4
    assert time.monotonic() - ejected_at < 1.3
    assert len(received(sweden, "breaker")) == 2
    # Half-open: one real request probes it; failing, it opens again.
    time.sleep(max(0.0, ejected_at + 1.6 - time.monotonic()))
    sweden.fail_next(1, 500, deployment="breaker")
    assert chat(c, "breaker") == "eastus"
    reopened_at = time.monotonic()
    assert len(received(sweden, "breaker")) == 3
    assert [chat(c, "breaker") for _ in range(3)] == ["eastus"] * 3
    assert len(received(sweden, "breaker")) == 3
    # The next probe succeeds: closed, and first in priority again.
    time.sleep(max(0.0, reopened_at + 1.6 - time.monotonic()))
    assert [chat(c, "breaker") for _ in range(3)] == ["sweden"] * 3


def _wait_reload(gateway: GatewayProcess, after: int) -> None:
    wait_until(lambda: gateway.status()["generation"] > after, timeout=5)


def test_state_survives_reloads_where_the_target_is_unchanged(
    balanced: GatewayProcess, balanced_conf: Path, regions: dict[str, MockProcess]
) -> None:
    sweden = regions["sweden"]
    conf = balanced_conf
    c = client(balanced)
    assert chat(c, "reload") == "sweden"
    sweden.fail_next(1, 429, retry_after=8, retry_after_ms=8000, deployment="reload")
    assert chat(c, "reload") == "eastus"  # sweden cools for 8 s
    # A reload of another file.
    generation = balanced.status()["generation"]
    other = conf / "secrets.yaml"
    other.write_text(other.read_text() + "# touched by a reload test\n")
    _wait_reload(balanced, generation)
    assert chat(c, "reload") == "eastus"
    # A reload of this very file, its targets unchanged (one more retry).
    generation = balanced.status()["generation"]
    balancer, targets = ROUTES["reload"]
    changed = pool_route("reload", {**balancer, "retries": 2}, targets, regions)
    (conf / "reload.yaml").write_text(changed)
    _wait_reload(balanced, generation)
    assert chat(c, "reload") == "eastus"
    assert len(received(sweden, "reload")) == 2  # the first answer and the 429, nothing since


def test_all_targets_cooling_answers_429_with_the_smallest_retry_after(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    regions["sweden"].fail_next(1, 429, retry_after=2, retry_after_ms=1500, deployment="alldown")
    regions["eastus"].fail_next(1, 429, retry_after=3, retry_after_ms=3000, deployment="alldown")
    c = client(balanced)
    with pytest.raises(openai.RateLimitError):
        chat(c, "alldown")  # both tried, both 429
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        chat(c, "alldown")
    assert time.monotonic() - started < 0.5  # at once: no queueing
    headers = info.value.response.headers
    assert 0 < int(headers["retry-after-ms"]) <= 1500
    assert headers["retry-after"] in ("1", "2")
    assert info.value.code == "all_targets_rate_limited"
    assert counts(regions, "alldown") == {"sweden": 1, "eastus": 1, "westus": 0}
    # The SDK's own retry waits that long, and sweden answers (eastus still cools).
    assert chat(client(balanced, max_retries=2), "alldown") == "sweden"
    assert time.monotonic() - started >= 1.0
    assert len(received(regions["eastus"], "alldown")) == 1


def test_all_targets_broken_answers_503(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    sweden, eastus = regions["sweden"], regions["eastus"]
    c = client(balanced)
    sweden.refuse_connections()
    eastus.refuse_connections()
    try:
        with pytest.raises(openai.APIStatusError) as first:
            chat(c, "allbroken")  # both refused: each ejected (max_fails 1)
        assert first.value.status_code == 502
        with pytest.raises(openai.APIStatusError) as info:
            chat(c, "allbroken")
        assert info.value.status_code == 503
        assert info.value.code == "no_healthy_target"
        assert info.value.response.headers["retry-after"] in ("1", "2")
    finally:
        sweden.accept_connections()
        eastus.accept_connections()
    time.sleep(2.1)
    assert chat(c, "allbroken") in ("sweden", "eastus")


def test_a_region_answering_429_or_dying_fails_no_sdk_call(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    sweden = regions["sweden"]
    c = client(balanced)
    failures: list[BaseException] = []
    answered: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                answered.append(chat(c, "survive"))
            except Exception as exc:  # every failure is the finding
                failures.append(exc)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        wait_until(lambda: len(answered) >= 10)
        sweden.fail_next(None, 429, retry_after=1, retry_after_ms=300, deployment="survive")
        mark = len(answered)
        wait_until(lambda: len(answered) >= mark + 20)
        sweden.clear_faults()
        time.sleep(0.4)
        sweden.refuse_connections()  # the region dies mid-traffic
        mark = len(answered)
        wait_until(lambda: len(answered) >= mark + 20)
        sweden.accept_connections()
        mark = len(answered)
        wait_until(lambda: len(answered) >= mark + 10)
    finally:
        stop.set()
        worker.join(30)
    assert failures == []
    assert Counter(answered)["sweden"] > 0 and Counter(answered)["eastus"] > 0


def test_each_targets_key_goes_to_its_own_region_only(
    balanced: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    c = client(balanced)
    ids = [new_id() for _ in range(10)]
    assert {chat(c, "secrets", extra_headers={"x-request-id": i}) for i in ids} == {
        "sweden",
        "eastus",
    }
    for region in ("sweden", "eastus"):
        other = key_of("eastus" if region == "sweden" else "sweden")
        requests = received(regions[region], "secrets")
        assert requests
        for request in requests:
            assert request["headers"]["api-key"] == key_of(region)
            assert other not in json.dumps(request)
            assert "client-key" not in json.dumps(request)
    logged = json.dumps([log_line(balanced, i) for i in ids])
    assert key_of("sweden") not in logged and key_of("eastus") not in logged


# -- the keep-alive race ----------------------------------------------------------------------


class ClosingUpstream:
    """A raw upstream that answers one request per connection, then closes it on cue.

    Keep-alive is implied (no ``Connection: close``), so aigw pools the
    connection; ``close_idle`` then ends it as an upstream's idle timeout
    does: a FIN, or a reset (SO_LINGER 0) as Azure's load balancer sends.
    """

    def __init__(self, reset: bool) -> None:
        self.reset = reset
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    sock.close()
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += sock.recv(65536)
            self.requests += 1
            sock.sendall(COMPLETION_ANSWER)
        with self._lock:
            self._idle.append(sock)

    def close_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            if self.reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            sock.close()

    def close(self) -> None:
        self.close_idle()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.mark.parametrize("reset", [False, True], ids=["FIN", "RST"])
def test_an_upstream_closing_idle_connections_fails_no_call(tmp_path: Path, reset: bool) -> None:
    # The race: the client's request and the upstream's close of the pooled
    # connection reach aigw together (aigw is stopped meanwhile, so both wait
    # in its kernel, the request first). Before the fix this answered 502.
    upstream = ClosingUpstream(reset)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    url = f"http://127.0.0.1:{upstream.port}/openai/deployments/raw/chat/completions"
    (conf / "raw.yaml").write_text(
        "route:\n  name: raw\n  paths: [/openai/deployments/raw/chat/completions]\n"
        "plugins:\n  - name: ai-proxy-advanced\n    config:\n      targets:\n"
        "        - route_type: llm/v1/chat\n"
        "          auth: {header_name: api-key, header_value: raw-key}\n"
        "          model:\n            provider: azure\n            name: raw\n"
        f"            options:\n              upstream_url: {url}\n"
    )
    gateway = GatewayProcess(conf)
    try:
        c = client(gateway)
        c.chat.completions.create(model="raw", messages=QUESTION)
        rounds = 10
        for _ in range(rounds):
            result: list[BaseException | str] = []

            def call(result: list[BaseException | str] = result) -> None:
                try:
                    result.append(c.chat.completions.create(model="raw", messages=QUESTION).id)
                except Exception as exc:  # the finding
                    result.append(exc)

            os.kill(gateway.proc.pid, signal.SIGSTOP)
            try:
                caller = threading.Thread(target=call)
                caller.start()
                time.sleep(0.1)  # the request is in aigw's socket buffer
                upstream.close_idle()
                time.sleep(0.1)  # and now the FIN or RST behind it
            finally:
                os.kill(gateway.proc.pid, signal.SIGCONT)
            caller.join(10)
            assert result == ["chatcmpl-1"]
        assert upstream.requests == rounds + 1  # each request reached it exactly once
    finally:
        gateway.close()
        upstream.close()
