"""What an operator sees of a balanced route: the access log, /metrics, /status, ``aigw tail``.

Two Azure mocks play the regions ``sweden`` and ``eastus`` behind a real ``aigw serve``;
the real openai SDK calls it with ``max_retries=0`` (a failover is the gateway's, not a
hidden SDK retry). Each test has a route and deployment of its own, so tests share no
balancer state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from openai import AzureOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import (
    REPO,
    GatewayProcess,
    MockProcess,
    mock_regions,
    pool_route_file,
    wait_until,
)
from tests.integration.test_sdk import QUESTION, sync_client

REGIONS = ("sweden", "eastus")
# route -> balancer section; every target list is sweden (weight 100) then eastus (50).
ROUTES: dict[str, dict[str, Any]] = {
    # POSTs move on after an answer only with non_idempotent (nginx's rule).
    "obs-cooling": {"algorithm": "priority", "failover_criteria": ["http_429", "non_idempotent"]},
    # Without non_idempotent a POST moves on only when it was never sent: a dead region.
    "obs-dead": {"algorithm": "priority", "failover_criteria": ["error"]},
    "obs-breaker": {
        "algorithm": "priority",
        "failover_criteria": ["error", "http_500", "non_idempotent"],
        "max_fails": 1,
        "fail_timeout": 1500,
    },
}
SECRETS = {region: f"key-of-{region}-5b1f0e" for region in REGIONS}


def route_file(name: str, balancer: dict[str, Any], mocks: dict[str, MockProcess]) -> str:
    targets = [
        (region, weight, SECRETS[region], mocks[region].url)
        for region, weight in zip(REGIONS, (100, 50), strict=True)
    ]
    return pool_route_file(name, balancer, targets)


@pytest.fixture(scope="module")
def regions() -> Iterator[dict[str, MockProcess]]:
    deployments = [arg for name in ROUTES for arg in ("--deployment", f"{name}=gpt-4o")]
    args = {
        region: ["--api-key", SECRETS[region], "--region", region, *deployments]
        for region in REGIONS
    }
    with mock_regions(args) as mocks:
        yield mocks


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, regions: dict[str, MockProcess]
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("observed-conf.d")
    for name, balancer in ROUTES.items():
        (conf / f"{name}.yaml").write_text(route_file(name, balancer, regions))
    process = GatewayProcess(conf)
    yield process
    process.close()


def call(gateway: GatewayProcess, route: str) -> str:
    """One SDK chat call through *route*; its request id."""
    client: AzureOpenAI = sync_client(gateway, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=route, messages=QUESTION)
    assert raw.http_response.status_code == 200
    return str(raw.headers["x-request-id"])


def scrape(gateway: GatewayProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    assert gateway.admin_url is not None
    with urllib.request.urlopen(gateway.admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def targets(gateway: GatewayProcess, route: str) -> dict[str, dict[str, Any]]:
    return {target["target"]: target for target in gateway.status()["targets"][route]}


def tail(gateway: GatewayProcess, *options: str) -> list[str]:
    """``aigw tail`` on the gateway's log: the request lines it prints."""
    command = [sys.executable, "-m", "aigw", "tail", "--color", "never", "--requests-only"]
    result = subprocess.run(
        [*command, *options, str(gateway.log_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
    )
    return result.stdout.splitlines()


def test_a_429_failover_is_logged_counted_shown_and_tailed(
    gateway: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    regions["sweden"].fail_next(1, 429, retry_after=30, deployment="obs-cooling")
    request_id = call(gateway, "obs-cooling")

    line = gateway.access_log(request_id)
    assert line["target"] == "eastus"
    assert [(a["target"], a["status"], a["error"]) for a in line["attempts"]] == [
        ("sweden", 429, None),
        ("eastus", 200, None),
    ]
    assert all(isinstance(a["ms"], float) and a["ms"] >= 0 for a in line["attempts"])
    raw = json.dumps(line)
    assert not any(secret in raw for secret in SECRETS.values())

    shown = targets(gateway, "obs-cooling")
    assert shown["sweden"]["state"] == "cooling"
    assert 20 < shown["sweden"]["cooldown_remaining_s"] <= 30
    assert shown["eastus"]["state"] == "closed"
    assert shown["eastus"]["ewma_e2e_ms"] is not None and shown["sweden"]["in_flight"] == 0

    samples = scrape(gateway)
    upstream = "aigw_upstream_requests_total"
    assert sample(samples, upstream, route="obs-cooling", target="sweden", status="429") == 1
    assert sample(samples, upstream, route="obs-cooling", target="eastus", status="200") == 1
    failovers = "aigw_failovers_total"
    assert (
        sample(samples, failovers, route="obs-cooling", **{"from": "sweden"}, reason="http_429")
        == 1
    )
    state = "aigw_target_state"
    assert sample(samples, state, route="obs-cooling", target="sweden", state="cooling") == 1
    assert sample(samples, state, route="obs-cooling", target="sweden", state="closed") == 0
    assert sample(samples, state, route="obs-cooling", target="eastus", state="closed") == 1

    # The next request goes straight to eastus: one attempt, no failover.
    second = gateway.access_log(call(gateway, "obs-cooling"))
    assert [a["target"] for a in second["attempts"]] == ["eastus"]

    lines = tail(gateway, "--target", "sweden", "--route", "obs-cooling")
    assert len(lines) == 1 and lines[0].endswith("429→200 via eastus")
    assert any(line.endswith("  via eastus") for line in tail(gateway, "--route", "obs-cooling"))


def test_an_ejection_opens_then_half_opens_then_closes(
    gateway: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    regions["sweden"].fail_next(1, 500, deployment="obs-breaker")
    first = gateway.access_log(call(gateway, "obs-breaker"))
    assert [(a["target"], a["status"]) for a in first["attempts"]] == [
        ("sweden", 500),
        ("eastus", 200),
    ]

    shown = targets(gateway, "obs-breaker")["sweden"]
    assert shown["state"] == "open" and shown["open_until"] is not None
    assert shown["cooldown_remaining_s"] == 0
    samples = scrape(gateway)
    assert sample(samples, "aigw_target_ejections_total", route="obs-breaker", target="sweden") == 1
    assert (
        sample(samples, "aigw_target_state", route="obs-breaker", target="sweden", state="open")
        == 1
    )
    assert (
        sample(
            samples,
            "aigw_failovers_total",
            route="obs-breaker",
            **{"from": "sweden"},
            reason="http_500",
        )
        == 1
    )

    # Once fail_timeout (1.5 s) has passed the next request probes sweden.
    wait_until(
        lambda: targets(gateway, "obs-breaker")["sweden"]["state"] == "half-open", timeout=10
    )
    probe = gateway.access_log(call(gateway, "obs-breaker"))
    assert probe["target"] == "sweden" and len(probe["attempts"]) == 1
    assert targets(gateway, "obs-breaker")["sweden"]["state"] == "closed"
    samples = scrape(gateway)
    assert (
        sample(samples, "aigw_target_state", route="obs-breaker", target="sweden", state="closed")
        == 1
    )
    assert sample(samples, "aigw_target_ejections_total", route="obs-breaker", target="sweden") == 1


def test_a_dead_region_is_an_error_attempt(
    gateway: GatewayProcess, regions: dict[str, MockProcess]
) -> None:
    sweden = regions["sweden"]
    sweden.refuse_connections()
    try:
        line = gateway.access_log(call(gateway, "obs-dead"))
    finally:
        sweden.accept_connections()
    assert line["target"] == "eastus"
    assert [(a["target"], a["status"], a["error"]) for a in line["attempts"]] == [
        ("sweden", None, "upstream_unreachable"),
        ("eastus", 200, None),
    ]
    samples = scrape(gateway)
    assert (
        sample(
            samples,
            "aigw_upstream_requests_total",
            route="obs-dead",
            target="sweden",
            status="upstream_unreachable",
        )
        == 1
    )
    assert (
        sample(
            samples, "aigw_failovers_total", route="obs-dead", **{"from": "sweden"}, reason="error"
        )
        == 1
    )
    (shown,) = tail(gateway, "--route", "obs-dead")
    assert shown.endswith("  unreachable→200 via eastus")
    # Back: the region answers again.
    assert gateway.access_log(call(gateway, "obs-dead"))["target"] == "sweden"


def test_status_lists_balanced_routes_only_with_every_target(gateway: GatewayProcess) -> None:
    status = gateway.status()
    assert set(status["targets"]) == set(ROUTES)
    for route in ROUTES:
        assert [t["target"] for t in status["targets"][route]] == list(REGIONS)
        assert [t["weight"] for t in status["targets"][route]] == [100, 50]
    assert not any(secret in json.dumps(status) for secret in SECRETS.values())
