"""Consumer keys and ACLs, end to end: a real ``aigw serve``, the Azure mock and the openai SDK.

One gateway serves a conf.d with two consumers (one key from the environment, one stored
only as its sha256), a global plugins file putting key-auth on every route, and routes that
override it or add an acl. What a user notices is asserted: the SDK's exception and the
error body, the answer of the mock, the access-log line, ``/metrics`` and ``aigw tail``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AzureOpenAI, OpenAI

from tests.integration.conftest import GATEWAY_ENV, route_yaml
from tests.integration.harness import REPO, GatewayProcess, MockProcess, wait_until
from tests.integration.test_sdk import QUESTION
from tests.integration.test_seed import seed_script

API_VERSION = "2024-10-21"

SEARCH_KEY = "sk-team-search-5f1c0e9a7b3d4e21a8c6"
"""team-search's key, given to aigw through the environment (``key: ${TEAM_SEARCH_KEY}``)."""
BATCH_KEY = "sk-team-batch-0d9e8f7a6b5c4d3e2f1a"
"""team-batch's key; conf.d holds only its sha256 (``key_hash``)."""
WRONG_KEY = "sk-nobody-9a8b7c6d5e4f3a2b1c0d"

AZURE_PATH = "/openai/deployments/gpt-4o/chat/completions"
MINI_PATH = "/openai/deployments/gpt-4.1-mini/chat/completions"

CONSUMERS = f"""consumers:
  - username: team-search
    keyauth_credentials:
      - key: ${{TEAM_SEARCH_KEY}}
    acls:
      - group: chat
  - username: team-batch
    keyauth_credentials:
      - key_hash: sha256:{hashlib.sha256(BATCH_KEY.encode()).hexdigest()}
    acls:
      - group: batch
"""

GLOBAL_PLUGINS = """plugins:
  - name: key-auth
    config: {key_names: [api-key, authorization]}
"""


def _with_plugins(route: str, plugins: str) -> str:
    """*route* (a `route_yaml` text) with *plugins* listed before ai-proxy-advanced."""
    return route.replace("plugins:\n", "plugins:\n" + plugins, 1)


ROUTES = {
    # The global key-auth: api-key (AzureOpenAI) or Authorization: Bearer.
    "azure.yaml": route_yaml("azure-gpt-4o", AZURE_PATH, model="gpt-4o", deployment="gpt-4o"),
    # OpenAI(base_url=<aigw>/bearer/v1) posts to /bearer/v1/chat/completions; only Bearer here.
    "bearer.yaml": _with_plugins(
        route_yaml("bearer", "/bearer/v1/chat/completions", model="gpt-4o", deployment="gpt-4o"),
        "  - name: key-auth\n    config: {key_names: [authorization]}\n",
    ),
    # A route's own key-auth replaces the global one: only x-team-key counts.
    "own-header.yaml": _with_plugins(
        route_yaml("own-header", "/own/v1/chat/completions", model="gpt-4o", deployment="gpt-4o"),
        "  - name: key-auth\n    config: {key_names: [x-team-key]}\n",
    ),
    # Kong's key-auth may read the query string, when asked to.
    "query-key.yaml": _with_plugins(
        route_yaml("query-key", "/query/v1/chat/completions", model="gpt-4o", deployment="gpt-4o"),
        "  - name: key-auth\n    config: {key_names: [apikey], key_in_query: true}\n",
    ),
    "chat-only.yaml": _with_plugins(
        route_yaml("chat-only", MINI_PATH, model="gpt-4.1-mini", deployment="gpt-4.1-mini"),
        "  - name: acl\n    config: {allow: [chat]}\n",
    ),
    "no-batch.yaml": _with_plugins(
        route_yaml(
            "no-batch", "/no-batch/v1/chat/completions", model="gpt-4o", deployment="gpt-4o"
        ),
        "  - name: acl\n    config: {deny: [batch]}\n",
    ),
}

ENV = {**GATEWAY_ENV, "TEAM_SEARCH_KEY": SEARCH_KEY}


def write_conf(conf: Path) -> None:
    (conf / "consumers.yaml").write_text(CONSUMERS)
    (conf / "plugins.yaml").write_text(GLOBAL_PLUGINS)
    for name, text in ROUTES.items():
        (conf / name).write_text(text)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("consumers-conf.d")
    write_conf(conf)
    process = GatewayProcess(conf, "--azure-base-url", mock.url, env=ENV)
    yield process
    process.close()


@pytest.fixture
def clients() -> Iterator[list[AzureOpenAI | OpenAI]]:
    opened: list[AzureOpenAI | OpenAI] = []
    yield opened
    for client in opened:
        client.close()


def azure(
    gateway: GatewayProcess, clients: list[AzureOpenAI | OpenAI], key: str, **kw: Any
) -> AzureOpenAI:
    client = AzureOpenAI(
        api_key=key, azure_endpoint=gateway.url, api_version=API_VERSION, max_retries=0, **kw
    )
    clients.append(client)
    return client


def bearer(
    gateway: GatewayProcess, clients: list[AzureOpenAI | OpenAI], prefix: str, key: str, **kw: Any
) -> OpenAI:
    client = OpenAI(base_url=f"{gateway.url}{prefix}/v1", api_key=key, max_retries=0, **kw)
    clients.append(client)
    return client


def ask(client: AzureOpenAI | OpenAI, model: str, request_id: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=QUESTION, extra_headers={"x-request-id": request_id}
    )
    return response.model


def refused(
    client: AzureOpenAI | OpenAI, model: str, request_id: str, status: int
) -> dict[str, Any]:
    """The error of a request the SDK raises for with *status*."""
    errors = {401: openai.AuthenticationError, 403: openai.PermissionDeniedError}
    with pytest.raises(errors[status]) as caught:
        ask(client, model, request_id)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict)
    return body


def raw(
    gateway: GatewayProcess, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST a small chat body; the status, headers (lower-cased names) and body."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        body = json.dumps({"model": "gpt-4o", "messages": QUESTION}).encode()
        connection.request(
            "POST",
            f"{path}{'&' if '?' in path else '?'}api-version={API_VERSION}",
            body=body,
            headers={"Content-Type": "application/json", **headers},
        )
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float | None:
    assert gateway.admin_url is not None
    with urllib.request.urlopen(gateway.admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    assert wanted  # labels were given
    return None


# --------------------------------------------------------------------------------------


def test_no_key_and_a_wrong_key_get_the_same_401(
    gateway: GatewayProcess, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    wrong = refused(azure(gateway, clients, WRONG_KEY), "gpt-4o", "consumers-wrong", 401)
    # AzureOpenAI refuses to start without a key: send none by hand, and the wrong one too.
    none = raw(gateway, AZURE_PATH, {"x-request-id": "same"})
    bad = raw(gateway, AZURE_PATH, {"x-request-id": "same", "api-key": WRONG_KEY})
    bad_bearer = raw(gateway, AZURE_PATH, {"x-request-id": "same", "Authorization": "Bearer x"})
    assert none[0] == bad[0] == bad_bearer[0] == 401
    assert none[2] == bad[2] == bad_bearer[2]
    # `Connection: close` says whether the body had arrived when the head was
    # refused (http.client sends the two in separate writes): the client's own
    # timing, the same for any key, so not compared.
    unrelated = ("date", "connection")
    for answer in (bad, bad_bearer):
        assert {k: v for k, v in answer[1].items() if k not in unrelated} == {
            k: v for k, v in none[1].items() if k not in unrelated
        }
    assert none[1]["www-authenticate"] == 'Key realm="aigw"'
    error = json.loads(none[2])["error"]
    assert error == wrong  # the SDK's error body is the envelope's "error"
    assert error["code"] == "invalid_api_key"
    assert "`api-key` header" in error["message"] and "Bearer" in error["message"]
    assert mock.requests() == []  # nothing reached Azure
    missing_line = gateway.access_log("same")
    assert missing_line["status"] == 401 and "consumer" not in missing_line
    outcomes = {
        e["outcome"]
        for e in gateway.events()
        if e.get("event") == "request" and e.get("request_id") in ("same", "consumers-wrong")
    }
    assert outcomes == {"missing_api_key", "invalid_api_key"}


def test_a_consumer_key_in_api_key_is_served_and_never_goes_upstream(
    gateway: GatewayProcess, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    served = ask(azure(gateway, clients, SEARCH_KEY), "gpt-4o", "consumers-good")
    assert served == "gpt-4o-2024-11-20"
    line = gateway.access_log("consumers-good")
    assert (line["status"], line["consumer"]) == (200, "team-search")
    assert re.fullmatch(r"[0-9a-f]{12}", line["credential"])
    (seen,) = mock.requests()
    assert seen["headers"]["api-key"] == MockProcess.api_key  # the route's Azure key
    assert "authorization" not in seen["headers"]
    assert SEARCH_KEY not in json.dumps(seen)


def test_bearer_with_the_openai_client(
    gateway: GatewayProcess, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    client = bearer(gateway, clients, "/bearer", SEARCH_KEY)
    assert ask(client, "gpt-4o", "consumers-bearer") == "gpt-4o-2024-11-20"
    assert gateway.access_log("consumers-bearer")["consumer"] == "team-search"
    (seen,) = mock.requests()
    assert seen["path"] == AZURE_PATH
    assert SEARCH_KEY not in json.dumps(seen)
    # This route takes only Authorization: an api-key holding a good key is no key.
    status, _, _ = raw(gateway, "/bearer/v1/chat/completions", {"api-key": SEARCH_KEY})
    assert status == 401


def test_the_key_in_the_other_header(
    gateway: GatewayProcess, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    # The Azure route (global key-auth: api-key, authorization) with Bearer from the SDK:
    # AzureOpenAI sends Authorization: Bearer when given a token instead of a key.
    client = AzureOpenAI(
        azure_ad_token=SEARCH_KEY,
        azure_endpoint=gateway.url,
        api_version=API_VERSION,
        max_retries=0,
    )
    clients.append(client)
    assert ask(client, "gpt-4o", "consumers-other-header") == "gpt-4o-2024-11-20"
    assert gateway.access_log("consumers-other-header")["consumer"] == "team-search"
    (seen,) = mock.requests()
    assert SEARCH_KEY not in json.dumps(seen)


def test_a_key_in_the_query_when_the_route_asks_for_it(
    gateway: GatewayProcess, mock: MockProcess
) -> None:
    path = f"/query/v1/chat/completions?apikey={SEARCH_KEY}"
    status, _, _ = raw(gateway, path, {"x-request-id": "consumers-query"})
    assert status == 200
    line = gateway.access_log("consumers-query")
    assert line["consumer"] == "team-search"
    assert SEARCH_KEY not in json.dumps(line)  # the logged path has no query
    (seen,) = mock.requests()
    assert seen["query"] == {"api-version": API_VERSION}  # only the api-version goes on
    assert SEARCH_KEY not in json.dumps(seen)
    # The global key-auth (api-key, authorization) does not read the query.
    assert raw(gateway, f"{AZURE_PATH}?apikey={SEARCH_KEY}", {})[0] == 401


def test_a_hashed_key(
    gateway: GatewayProcess, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    assert ask(azure(gateway, clients, BATCH_KEY), "gpt-4o", "consumers-hashed")
    line = gateway.access_log("consumers-hashed")
    assert (line["status"], line["consumer"]) == (200, "team-batch")
    (seen,) = mock.requests()
    assert BATCH_KEY not in json.dumps(seen)


def test_acl_allow_serves_the_group_and_refuses_the_others(
    gateway: GatewayProcess, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    assert ask(azure(gateway, clients, SEARCH_KEY), "gpt-4.1-mini", "consumers-allowed")
    body = refused(azure(gateway, clients, BATCH_KEY), "gpt-4.1-mini", "consumers-denied", 403)
    error = body
    assert error["code"] == "access_denied"
    assert "chat-only" in error["message"] and "chat" not in error["message"].replace(
        "chat-only", ""
    )
    assert len(mock.requests()) == 1  # only the allowed one reached Azure
    line = gateway.access_log("consumers-denied")
    assert (line["status"], line["outcome"], line["consumer"]) == (
        403,
        "access_denied",
        "team-batch",
    )
    # Without a key, acl routes refuse as key-auth does.
    assert raw(gateway, MINI_PATH, {})[0] == 401


def test_acl_deny(
    gateway: GatewayProcess, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    assert ask(bearer(gateway, clients, "/no-batch", SEARCH_KEY), "gpt-4o", "consumers-deny-ok")
    refused(bearer(gateway, clients, "/no-batch", BATCH_KEY), "gpt-4o", "consumers-deny-no", 403)
    assert len(mock.requests()) == 1


def test_a_routes_own_key_auth_replaces_the_global_one(
    gateway: GatewayProcess, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    # The global plugin's api-key and Bearer are not looked at on this route.
    refused(bearer(gateway, clients, "/own", SEARCH_KEY), "gpt-4o", "consumers-own-bearer", 401)
    client = bearer(
        gateway, clients, "/own", "not-a-key", default_headers={"x-team-key": BATCH_KEY}
    )
    assert ask(client, "gpt-4o", "consumers-own") == "gpt-4o-2024-11-20"
    assert gateway.access_log("consumers-own")["consumer"] == "team-batch"
    (seen,) = mock.requests()
    assert "x-team-key" not in seen["headers"]
    assert BATCH_KEY not in json.dumps(seen)


def test_a_stream_with_a_consumer_key_is_logged_and_counted(
    gateway: GatewayProcess, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    labels = {"consumer": "team-search", "route": "azure-gpt-4o"}
    before = metric(gateway, "aigw_consumer_tokens_total", **labels, type="completion") or 0.0
    client = azure(gateway, clients, SEARCH_KEY)
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,
        stream=True,
        extra_headers={"x-request-id": "consumers-stream"},
    )
    chunks = list(stream)
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)
    line = gateway.access_log("consumers-stream")
    assert (line["stream"], line["consumer"], line["outcome"]) == (True, "team-search", "ok")
    completion = line["completion_tokens"]
    assert isinstance(completion, int) and completion > 0
    after = metric(gateway, "aigw_consumer_tokens_total", **labels, type="completion")
    assert after == before + completion
    assert (metric(gateway, "aigw_consumer_requests_total", **labels, status="200") or 0) >= 1


def test_refusals_are_counted_by_reason(gateway: GatewayProcess) -> None:
    def failures(reason: str) -> float:
        return metric(gateway, "aigw_auth_failures_total", route="chat-only", reason=reason) or 0.0

    before = {reason: failures(reason) for reason in ("missing", "unknown", "forbidden")}
    raw(gateway, MINI_PATH, {})
    raw(gateway, MINI_PATH, {"api-key": WRONG_KEY})
    raw(gateway, MINI_PATH, {"api-key": BATCH_KEY})
    raw(gateway, MINI_PATH, {"api-key": SEARCH_KEY})  # served: not a failure
    after = {reason: failures(reason) for reason in before}
    assert {reason: after[reason] - before[reason] for reason in before} == {
        "missing": 1,
        "unknown": 1,
        "forbidden": 1,
    }


def test_no_log_line_ever_holds_a_key(
    gateway: GatewayProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    refused(azure(gateway, clients, WRONG_KEY), "gpt-4o", "consumers-leak-wrong", 401)
    ask(azure(gateway, clients, SEARCH_KEY), "gpt-4o", "consumers-leak-good")
    ask(bearer(gateway, clients, "/bearer", BATCH_KEY), "gpt-4o", "consumers-leak-bearer")
    gateway.access_log("consumers-leak-bearer")
    output = gateway.raw_log()
    for key in (SEARCH_KEY, BATCH_KEY, WRONG_KEY):
        assert key not in output


def test_tail_shows_and_filters_by_consumer(
    gateway: GatewayProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    ask(azure(gateway, clients, SEARCH_KEY), "gpt-4o", "consumers-tail-other")
    raw(gateway, AZURE_PATH, {"x-request-id": "consumers-tail-none"})
    ask(azure(gateway, clients, BATCH_KEY), "gpt-4o", "consumers-tail")
    gateway.access_log("consumers-tail")
    result = subprocess.run(
        [sys.executable, "-m", "aigw.tail", "--consumer", "team-batch", "--requests-only"],
        input=gateway.raw_log(),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(
        line.endswith("by team-batch") or "by team-batch  " in line for line in lines
    )
    assert not any("team-search" in line for line in lines)


def _median_latency(gateway: GatewayProcess, headers: dict[str, str], n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        status, _, _ = raw(gateway, AZURE_PATH, headers)
        times.append(time.perf_counter() - started)
        assert status == 401
    return statistics.median(times)


def test_a_missing_key_and_a_wrong_key_take_about_the_same_time(gateway: GatewayProcess) -> None:
    # Interleaved rounds, so a burst of load on the machine hits both alike.
    missing, wrong = [], []
    for _ in range(5):
        missing.append(_median_latency(gateway, {}, 10))
        wrong.append(_median_latency(gateway, {"api-key": WRONG_KEY}, 10))
    slower = max(statistics.median(missing), statistics.median(wrong))
    faster = min(statistics.median(missing), statistics.median(wrong))
    assert slower < faster * 3 + 0.002, (missing, wrong)


# The seed's flow -----------------------------------------------------------------------


def _port_8000_free() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", 8000)) != 0


@pytest.fixture
def seed_gateway_with_key_auth(tmp_path: Path, mock: MockProcess) -> Iterator[GatewayProcess]:
    """The shipped conf.d routes, plus key-auth for all of them and one consumer, on :8000."""
    conf = tmp_path / "conf.d"
    conf.mkdir()
    for shipped in (REPO / "conf.d").glob("*.yaml"):
        (conf / shipped.name).write_text(shipped.read_text())
    (conf / "consumers.yaml").write_text(CONSUMERS)
    (conf / "plugins.yaml").write_text(GLOBAL_PLUGINS)
    # test_seed.py (maybe in another pytest process) uses the port too: wait for it.
    wait_until(_port_8000_free, timeout=60, interval=0.2)
    process = GatewayProcess(conf, "--azure-base-url", mock.url, env=ENV, listen="127.0.0.1:8000")
    yield process
    process.close()


def test_the_seed_script_needs_a_consumer_key(
    seed_gateway_with_key_auth: GatewayProcess, mock: MockProcess, tmp_path: Path
) -> None:
    script = seed_script()
    assert 'api_key="test"' in script

    def run(text: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "test_azure_multi_route.py"
        path.write_text(text)
        return subprocess.run(
            [sys.executable, str(path)], capture_output=True, text=True, timeout=60
        )

    placeholder = run(script)
    assert placeholder.returncode != 0
    assert "AuthenticationError" in placeholder.stderr, placeholder.stderr[-600:]
    assert "Error code: 401" in placeholder.stderr
    assert "Send a consumer key in the `api-key` header" in placeholder.stderr
    assert mock.requests() == []
    served = run(script.replace('api_key="test"', f'api_key="{SEARCH_KEY}"'))
    assert served.returncode == 0, served.stderr
    assert served.stdout.splitlines() == [
        "Requested: gpt-4o, Got: gpt-4o-2024-11-20",
        "Requested: gpt-4.1-mini, Got: gpt-4.1-mini-2025-04-14",
    ]
    assert len(mock.requests()) == 2


def test_a_consumer_removed_by_a_reload_leaves_metrics_and_is_refused(
    tmp_path: Path, mock: MockProcess, clients: list[AzureOpenAI | OpenAI]
) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write_conf(conf)
    process = GatewayProcess(conf, "--azure-base-url", mock.url, env=ENV)
    try:
        ask(azure(process, clients, BATCH_KEY), "gpt-4o", "consumers-before-reload")
        ask(azure(process, clients, SEARCH_KEY), "gpt-4o", "consumers-kept")
        batch = {"consumer": "team-batch", "route": "azure-gpt-4o", "status": "200"}
        search = {**batch, "consumer": "team-search"}
        assert metric(process, "aigw_consumer_requests_total", **batch) == 1
        # team-batch goes: its file now holds team-search alone.
        (conf / "consumers.yaml").write_text(CONSUMERS.split("  - username: team-batch")[0])
        wait_until(lambda: process.status()["consumers"] == 1, timeout=10)
        assert metric(process, "aigw_consumer_requests_total", **batch) is None
        assert metric(process, "aigw_consumer_requests_total", **search) == 1
        refused(azure(process, clients, BATCH_KEY), "gpt-4o", "consumers-after-reload", 401)
        assert metric(process, "aigw_consumer_requests_total", **batch) is None
    finally:
        process.close()
