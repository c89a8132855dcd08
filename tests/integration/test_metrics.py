"""Prometheus metrics on the admin listener move with real traffic."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import _chat
from tests.integration.harness import GatewayProcess, MockProcess, wait_until
from tests.integration.test_reload import ReloadGateway
from tests.integration.test_sdk import QUESTION, sync_client

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gateway: GatewayProcess) -> Samples:
    assert gateway.admin_url is not None
    with urllib.request.urlopen(gateway.admin_url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_with_traffic(gateway: GatewayProcess, mock: MockProcess) -> None:
    before = scrape(gateway)
    client = sync_client(gateway, max_retries=0)
    response = client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    stream = client.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True)
    chunks = list(stream)
    assert chunks and response.usage is not None
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="unreachable", messages=QUESTION)
    after = scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": "azure-gpt-4o"}
    assert delta("aigw_requests_total", status="200", model="gpt-4o", **route) == 2
    assert delta("aigw_request_duration_seconds_count", **route) == 2
    assert delta("aigw_upstream_duration_seconds_count", **route) == 2
    assert delta("aigw_time_to_first_token_seconds_count", **route) == 1
    prompt = delta("aigw_tokens_total", model="gpt-4o", kind="prompt", **route)
    assert prompt == 2 * response.usage.prompt_tokens
    assert delta("aigw_tokens_total", model="gpt-4o", kind="completion", **route) > 0
    assert (
        delta("aigw_upstream_errors_total", route="unreachable", kind="upstream_unreachable") == 1
    )
    assert value(after, "aigw_streams_in_flight", **route) == 0
    assert value(after, "aigw_config_generation") >= 1
    assert value(after, "aigw_config_rejected_files") == 2  # typo.yaml and noenv.yaml
    assert value(after, "aigw_routes") > 0


def routes_exported(gateway: GatewayProcess) -> set[str]:
    return {
        dict(labels)["route"]
        for _, labels in scrape(gateway)
        if ("route", "-") not in labels and "route" in dict(labels)
    }


def test_a_deleted_route_leaves_metrics_once_its_last_stream_ends(
    tmp_path: Path, mock: MockProcess
) -> None:
    gw = ReloadGateway(tmp_path, mock)
    try:
        gw.write("idle.yaml", _chat("idle"))
        gw.write("busy.yaml", _chat("busy", deployment="gpt-4.1-mini"))
        gw.start()
        gw.chat("idle")
        # The busy route's stream takes a while: 200 ms between tokens.
        mock.fault("delay", deployment="gpt-4.1-mini", token_delay_ms=200, count=1)
        stream = gw.client.chat.completions.create(model="busy", messages=QUESTION, stream=True)
        chunks = iter(stream)
        next(chunks)  # the stream is being relayed
        assert routes_exported(gw.proc) == {"idle", "busy"}
        generation = gw.generation()
        (gw.conf / "idle.yaml").unlink()
        (gw.conf / "busy.yaml").unlink()
        gw.wait_status(lambda status: status["generation"] > generation and status["routes"] == 0)
        # The idle route's series are gone; the busy one is still streaming.
        assert routes_exported(gw.proc) == {"busy"}
        samples = scrape(gw.proc)
        assert value(samples, "aigw_streams_in_flight", route="busy") == 1
        assert len(list(chunks)) > 1
        stream.close()
        wait_until(lambda: routes_exported(gw.proc) == set())
    finally:
        gw.stop()
