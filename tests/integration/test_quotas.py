"""Token quotas (``ai-rate-limiting-advanced``) with a real ``aigw serve``, the Azure mock and
the real openai SDK; ``strategy: redis`` with two gateways on one real redis-server.

Every limit here is 10 tokens in a window of a few seconds, and every request costs more (the
mock's prompt count plus 8 completion tokens): one request spends a whole quota, whatever the
timing, and the sliding estimate stays over the limit for at least half a window after it.
Tests that share a gateway tell their callers apart with their own ``x-team`` value.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AzureOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import GATEWAY_ENV, _chat
from tests.integration.harness import GatewayProcess, MockProcess, wait_until
from tests.integration.test_sdk import API_VERSION, OPEN_CLIENTS, QUESTION
from tests.redis_server import RedisServer

WINDOW_S = 4
LIMIT = 10
_DURATION = re.compile(r"(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)\Z")  # OpenAI's reset format


def limit_plugin(*fields: str, limit: int = LIMIT, window_type: str = "sliding") -> str:
    lines = "".join(f"\n      {field}" for field in fields)
    return (
        "  - name: ai-rate-limiting-advanced\n"
        "    config:"
        f"{lines}\n"
        f"      window_type: {window_type}\n"
        f"      llm_providers: [{{name: azure, limit: [{limit}], window_size: [{WINDOW_S}]}}]\n"
    )


def limited(name: str, plugin: str, *, before: str = "") -> str:
    """A chat route for model *name* (deployment gpt-4o of the mock) with *plugin*."""
    return _chat(name).replace("plugins:\n", "plugins:\n" + before + plugin, 1)


BY_TEAM = limit_plugin("identifier: header", "header_name: x-team")


def client(gateway: GatewayProcess, *, key: str = "unused", max_retries: int = 0) -> AzureOpenAI:
    sdk = AzureOpenAI(
        api_key=key, azure_endpoint=gateway.url, api_version=API_VERSION, max_retries=max_retries
    )
    OPEN_CLIENTS.append(sdk)
    return sdk


def chat(
    gateway: GatewayProcess,
    model: str,
    team: str | None = None,
    *,
    words: int = 0,
    **kw: Any,
) -> tuple[int, dict[str, str], float]:
    """One chat call (a prompt of *words* more tokens); its status, the answer's headers and
    how long it took."""
    headers = {} if team is None else {"x-team": team}
    messages: list[ChatCompletionMessageParam] = list(QUESTION)
    if words:
        messages.append({"role": "user", "content": "word " * words})
    sdk = client(gateway, **kw)
    started = time.monotonic()
    try:
        raw = sdk.chat.completions.with_raw_response.create(
            model=model, messages=messages, extra_headers=headers
        )
    except openai.APIStatusError as exc:
        return exc.status_code, dict(exc.response.headers), time.monotonic() - started
    raw.parse()
    return raw.status_code, dict(raw.headers), time.monotonic() - started


def metrics_text(gateway: GatewayProcess) -> str:
    assert gateway.admin_url is not None
    with urllib.request.urlopen(gateway.admin_url + "/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


def metric(gateway: GatewayProcess, name: str, label: str) -> float:
    found = re.search(
        rf"^{name}\{{[^}}]*{re.escape(label)}[^}}]*\}} (\S+)$", metrics_text(gateway), re.M
    )
    return float(found.group(1)) if found else 0.0


# -- local ----------------------------------------------------------------------------------

CONSUMERS = (
    "consumers:\n"
    "  - username: team-a\n    keyauth_credentials:\n      - key: quota-key-a-2f9c\n"
    "  - username: team-b\n    keyauth_credentials:\n      - key: quota-key-b-7d1e\n"
)


@pytest.fixture(scope="module")
def local_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    conf = tmp_path_factory.mktemp("quota-conf.d")
    (conf / "teams.yaml").write_text(limited("teams", BY_TEAM))
    (conf / "byip.yaml").write_text(limited("byip", limit_plugin("identifier: ip")))
    (conf / "fixed.yaml").write_text(
        limited("fixed", limit_plugin("identifier: ip", window_type="fixed"))
    )
    (conf / "reloaded.yaml").write_text(limited("reloaded", BY_TEAM))
    (conf / "hidden.yaml").write_text(
        limited(
            "hidden", BY_TEAM.replace("    config:", "    config:\n      hide_client_headers: true")
        )
    )
    (conf / "estimated.yaml").write_text(
        limited(
            "estimated", BY_TEAM.replace("    config:", "    config:\n      estimate_prompt: true")
        )
    )
    (conf / "consumers.yaml").write_text(CONSUMERS)
    (conf / "keyed.yaml").write_text(
        limited(
            "keyed",
            limit_plugin("identifier: consumer"),
            before="  - name: key-auth\n    config: {key_names: [api-key]}\n",
        )
    )
    return conf


@pytest.fixture(scope="module")
def local_gw(local_conf: Path, mock: MockProcess) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(local_conf, "--azure-base-url", mock.url, env=GATEWAY_ENV)
    yield gateway
    gateway.close()


def team(name: str) -> str:
    """A caller no other test (or earlier run within the window) has spent for."""
    return f"{name}-{time.time_ns()}"


def assert_rate_headers(headers: dict[str, str], remaining: int | None = None) -> None:
    assert headers["x-ratelimit-limit-tokens"] == str(LIMIT)
    if remaining is not None:
        assert headers["x-ratelimit-remaining-tokens"] == str(remaining)
    assert _DURATION.match(headers["x-ratelimit-reset-tokens"]), headers["x-ratelimit-reset-tokens"]


def test_quota_spent_refused_with_retry_after_then_recovered(local_gw: GatewayProcess) -> None:
    caller = team("spend")
    rejected = metric(local_gw, "aigw_ratelimit_rejections_total", 'route="teams"')
    status, headers, _ = chat(local_gw, "teams", caller)
    # aigw's headers, not the mock's own x-ratelimit-* (450000 tokens per minute).
    assert status == 200
    assert_rate_headers(headers, remaining=LIMIT)
    status, headers, _ = chat(local_gw, "teams", caller)
    assert status == 429
    assert_rate_headers(headers, remaining=0)
    retry_ms = int(headers["retry-after-ms"])
    assert 0 < retry_ms <= 2 * WINDOW_S * 1000
    assert headers["retry-after"] == str(-(-retry_ms // 1000))
    assert metric(local_gw, "aigw_ratelimit_rejections_total", 'route="teams"') == rejected + 1
    time.sleep(retry_ms / 1000 + 0.02)
    status, headers, _ = chat(local_gw, "teams", caller)
    assert status == 200
    assert_rate_headers(headers)


def test_429_is_openai_style_and_the_sdk_raises_rate_limit_error(local_gw: GatewayProcess) -> None:
    caller = team("sdk-error")
    assert chat(local_gw, "teams", caller)[0] == 200
    with pytest.raises(openai.RateLimitError) as caught:
        client(local_gw).chat.completions.create(
            model="teams", messages=QUESTION, extra_headers={"x-team": caller}
        )
    assert caught.value.code == "tokens_rate_limit_exceeded"
    assert "token rate limit exceeded" in caught.value.message
    assert f"{LIMIT} tokens per {WINDOW_S} s" in caught.value.message


def test_the_sdk_retry_waits_the_retry_after_and_succeeds(
    local_gw: GatewayProcess, mock: MockProcess
) -> None:
    caller = team("sdk-retry")
    assert chat(local_gw, "teams", caller)[0] == 200
    status, headers, _ = chat(local_gw, "teams", caller)
    assert status == 429
    retry_s = int(headers["retry-after-ms"]) / 1000
    # About half a window or more (less only if this machine took a second between the
    # two requests): longer than the SDK's own backoff for two retries (1.1 to 1.5 s),
    # so only a retry that honours retry-after-ms succeeds.
    assert retry_s >= 1.0
    forwarded = len(mock.requests())
    status, _, took = chat(local_gw, "teams", caller, max_retries=2)
    assert status == 200
    assert took >= retry_s - 0.3
    assert took < retry_s + 5
    assert len(mock.requests()) == forwarded + 1  # the refused tries never reached Azure


def test_two_identifiers_are_counted_apart(local_gw: GatewayProcess) -> None:
    one, other = team("one"), team("other")
    assert chat(local_gw, "teams", one)[0] == 200
    assert chat(local_gw, "teams", one)[0] == 429
    status, headers, _ = chat(local_gw, "teams", other)
    assert status == 200
    assert headers["x-ratelimit-remaining-tokens"] == str(LIMIT)


def test_identifier_ip_and_a_fixed_window(local_gw: GatewayProcess) -> None:
    for route in ("byip", "fixed"):
        assert chat(local_gw, route)[0] == 200
        status, headers, _ = chat(local_gw, route)
        if status == 200 and route == "fixed":
            # The fixed window ended between the two requests (they are not 4 s apart:
            # the next one cannot end before a third).
            status, headers, _ = chat(local_gw, route)
        assert status == 429, route
        if route == "fixed":
            # A fixed window frees all at once, at its end: at most one window away.
            assert int(headers["retry-after-ms"]) <= WINDOW_S * 1000


def test_a_stream_past_the_limit_is_not_cut_and_is_charged_at_its_end(
    local_gw: GatewayProcess,
) -> None:
    caller = team("stream")
    charged = metric(local_gw, "aigw_ratelimit_tokens_charged_total", 'route="teams"')
    stream = client(local_gw).chat.completions.create(
        model="teams", messages=QUESTION, stream=True, extra_headers={"x-team": caller}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    # The whole answer, though it spent more than the 10 tokens allowed.
    assert text and finishes[-1] in ("stop", "length")
    spent = metric(local_gw, "aigw_ratelimit_tokens_charged_total", 'route="teams"') - charged
    assert spent > LIMIT
    status, headers, _ = chat(local_gw, "teams", caller)
    assert status == 429
    assert headers["x-ratelimit-remaining-tokens"] == "0"


def test_hide_client_headers_leaves_out_aigws_but_not_retry_after(
    local_gw: GatewayProcess,
) -> None:
    caller = team("hidden")
    status, headers, _ = chat(local_gw, "hidden", caller)
    assert status == 200
    # What comes through is the upstream's own (the mock's 450000 per minute), not aigw's.
    assert headers.get("x-ratelimit-limit-tokens") != str(LIMIT)
    status, headers, _ = chat(local_gw, "hidden", caller)
    assert status == 429
    assert not any(name.startswith("x-ratelimit-") for name in headers)
    assert int(headers["retry-after-ms"]) > 0


def test_estimate_prompt_reserves_tokens_while_a_request_is_in_flight(
    local_gw: GatewayProcess, mock: MockProcess
) -> None:
    caller = team("estimate")
    mock.fault("delay", latency_ms=2000, count=1)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(chat, local_gw, "estimated", caller)
        # Admitted and waiting on the mock, nothing charged yet; its reservation holds.
        wait_until(lambda: len(mock.requests()) == 1)
        assert chat(local_gw, "estimated", caller)[0] == 429
        assert slow.result()[0] == 200


def test_a_stream_the_client_leaves_is_charged_its_estimate(
    local_gw: GatewayProcess, mock: MockProcess, request_id: str
) -> None:
    caller = team("gone")
    mock.fault("delay", token_delay_ms=300, count=1)
    stream = client(local_gw).chat.completions.create(
        model="estimated",
        messages=QUESTION,
        stream=True,
        extra_headers={"x-team": caller, "x-request-id": request_id},
    )
    next(iter(stream))
    stream.close()  # gone before the usage chunk: the estimate is what is known
    assert local_gw.access_log(request_id)["outcome"] == "client_disconnect"
    assert chat(local_gw, "estimated", caller)[0] == 429


def test_consumers_are_counted_apart(local_gw: GatewayProcess) -> None:
    def as_consumer(key: str) -> int:
        try:
            client(local_gw, key=key).chat.completions.create(model="keyed", messages=QUESTION)
        except openai.RateLimitError:
            return 429
        return 200

    # Both from the same address: only the consumer tells them apart.
    assert as_consumer("quota-key-a-2f9c") == 200
    assert as_consumer("quota-key-a-2f9c") == 429
    assert as_consumer("quota-key-b-7d1e") == 200


def test_counters_survive_a_reload_of_an_unchanged_plugin_config(
    local_gw: GatewayProcess, local_conf: Path
) -> None:
    caller = team("reload")
    # 200 tokens more than the limit: refused for seconds, however slow the reload.
    assert chat(local_gw, "reloaded", caller, words=200)[0] == 200
    assert chat(local_gw, "reloaded", caller)[0] == 429
    reloads = len([e for e in local_gw.events() if e.get("event") == "config_reload"])
    # Same counting setup, a new limit: the route is recompiled, its counts stay.
    path = local_conf / "reloaded.yaml"
    path.write_text(limited("reloaded", BY_TEAM.replace(f"limit: [{LIMIT}]", "limit: [12]")))
    wait_until(
        lambda: len([e for e in local_gw.events() if e.get("event") == "config_reload"]) > reloads
    )
    status, headers, _ = chat(local_gw, "reloaded", caller)
    assert headers["x-ratelimit-limit-tokens"] == "12"
    assert status == 429


# -- strategy: redis ------------------------------------------------------------------------

REDIS_TIMEOUT_MS = 200


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def redis_gws(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess, redis_server: RedisServer
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    conf = tmp_path_factory.mktemp("quota-redis-conf.d")
    redis = f"redis: {{host: 127.0.0.1, port: {redis_server.port}, timeout: {REDIS_TIMEOUT_MS}}}"
    shared = ("identifier: header", "header_name: x-team", "strategy: redis", redis)
    (conf / "shared.yaml").write_text(limited("shared", limit_plugin(*shared)))
    (conf / "closed.yaml").write_text(limited("closed", limit_plugin(*shared, "fail_closed: true")))
    first = GatewayProcess(conf, "--azure-base-url", mock.url, env=GATEWAY_ENV)
    try:
        second = GatewayProcess(conf, "--azure-base-url", mock.url, env=GATEWAY_ENV)
    except BaseException:
        first.close()
        raise
    yield first, second
    first.close()
    second.close()


def assert_shared(first: GatewayProcess, second: GatewayProcess, route: str = "shared") -> None:
    """What one gateway spends, the other refuses: the counters are in Redis."""
    caller = team("shared")
    assert chat(first, route, caller)[0] == 200
    time.sleep(0.3)  # the charge goes to Redis in the background, after the answer
    status, headers, _ = chat(second, route, caller)
    assert status == 429
    assert int(headers["retry-after-ms"]) > 0


def test_two_gateways_on_one_redis_enforce_one_limit(
    redis_gws: tuple[GatewayProcess, GatewayProcess],
) -> None:
    first, second = redis_gws
    assert_shared(first, second)
    assert_shared(second, first, route="closed")


def events_named(gateway: GatewayProcess, name: str) -> list[dict[str, Any]]:
    return [event for event in gateway.events() if event.get("event") == name]


def test_redis_down_fails_open_or_closed_promptly_and_is_picked_up_again(
    redis_gws: tuple[GatewayProcess, GatewayProcess], redis_server: RedisServer
) -> None:
    first, second = redis_gws
    assert chat(first, "shared", team("warm"))[0] == 200  # a pooled connection to Redis
    errors = metric(first, "aigw_ratelimit_backend_errors_total", f":{redis_server.port}/0")
    logged = len(events_named(first, "ratelimit_backend_error"))
    redis_server.kill()
    try:
        for _ in range(3):
            status, _, took = chat(first, "shared", team("open"))
            assert status == 200 and took < 3
            status, headers, took = chat(first, "closed", team("closed"))
            assert status == 503 and took < 3
            assert int(headers["retry-after"]) >= 1
        with pytest.raises(openai.InternalServerError) as caught:
            client(first).chat.completions.create(
                model="closed", messages=QUESTION, extra_headers={"x-team": "x"}
            )
        assert caught.value.code == "rate_limit_backend_unavailable"
        # Counted locally meanwhile: a spent quota is still refused.
        caller = team("local")
        assert chat(first, "shared", caller)[0] == 200
        assert chat(first, "shared", caller)[0] == 429
        assert metric(first, "aigw_ratelimit_backend_errors_total", f":{redis_server.port}/0") > (
            errors
        )
        # One line when Redis went away, not one per request.
        assert len(events_named(first, "ratelimit_backend_error")) == logged + 1
    finally:
        redis_server.restart()
    time.sleep(1.2)  # the back-off after the last failure
    assert chat(first, "closed", team("back"))[0] == 200
    assert_shared(first, second)
    assert events_named(first, "ratelimit_backend_recovered")


def test_redis_frozen_is_a_timeout_not_a_hang(
    redis_gws: tuple[GatewayProcess, GatewayProcess], redis_server: RedisServer
) -> None:
    first, _ = redis_gws
    time.sleep(1.2)  # any earlier test's back-off is over: Redis is tried
    assert chat(first, "shared", team("warm"))[0] == 200
    redis_server.pause()
    try:
        status, _, took = chat(first, "shared", team("frozen-open"))
        assert status == 200 and took < 2
        status, _, took = chat(first, "closed", team("frozen-closed"))
        assert status == 503 and took < 2
    finally:
        redis_server.resume()
