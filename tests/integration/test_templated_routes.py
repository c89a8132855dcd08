"""Kong's templated routes through the real aigw process, to the Azure mock.

One gateway for this module, serving only templated routes: Kong's "one chat
route for every deployment" example verbatim, and routes that take the
deployment from a header, a query parameter, an ``upstream_path`` and an
``upstream_url``.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.integration.conftest import GATEWAY_ENV
from tests.integration.harness import GatewayProcess, MockProcess, run_check
from tests.integration.rawnet import RawResponse, error_of, post, raw_request
from tests.integration.test_sdk import QUESTION, sync_client

# The example, verbatim but for the key (a secret belongs in the environment).
KONG_EXAMPLE = """\
route: {name: azure-chat, paths: ["~/openai/deployments/(?<azure_deployment>[^#?/]+)/chat/completions$"], methods: [POST]}
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: llm/v1/chat
          auth: {header_name: api-key, header_value: "${AZURE_OPENAI_KEY}"}
          model:
            provider: azure
            name: "$(uri_captures.azure_deployment)"
            options: {azure_instance: my-resource, azure_deployment_id: "$(uri_captures.azure_deployment)"}
"""  # noqa: E501


def _route(name: str, path: str, model: str, options: str) -> str:
    return f"""route:
  name: {name}
  paths: ["{path}"]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: llm/v1/chat
          auth: {{header_name: api-key, header_value: "${{AZURE_OPENAI_KEY}}"}}
          model:
            provider: azure{model}
            options:
              azure_instance: my-resource{options}
"""


@pytest.fixture(scope="module")
def templated(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("templated")
    (conf / "kong.yaml").write_text(KONG_EXAMPLE)
    (conf / "header.yaml").write_text(
        _route(
            "by-header",
            "/by-header/chat/completions",
            '\n            name: "$(headers.x-deployment)"',
            '\n              azure_deployment_id: "$(headers.x-deployment)"',
        )
    )
    (conf / "query.yaml").write_text(
        _route(
            "by-query",
            "/by-query/chat/completions",
            "",
            '\n              azure_deployment_id: "$(query_params.deployment)"'
            '\n              azure_api_version: "$(query_params.pinned)"',
        )
    )
    (conf / "path.yaml").write_text(
        _route(
            "by-path",
            "/by-path/{dep}/{op}",
            "",
            '\n              azure_deployment_id: "$(uri_captures.dep)"'
            '\n              upstream_path: "/chat/$(uri_captures.op)"',
        )
    )
    (conf / "url.yaml").write_text(
        _route(
            "by-url",
            "/by-url/chat/completions",
            "",
            '\n              upstream_url: "'
            + mock.url
            + '/openai/deployments/$(headers.x-deployment)/chat/completions"',
        )
    )
    process = GatewayProcess(conf, "--azure-base-url", mock.url, env=GATEWAY_ENV)
    yield process
    process.close()


def _post(
    gateway: GatewayProcess,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    model: str = "gpt-4o",
) -> RawResponse:
    body = json.dumps({"model": model, "messages": QUESTION}).encode()
    lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return raw_request(gateway.port, post(body, target=target, headers=lines))


def test_kong_example_serves_both_models_through_one_route(
    templated: GatewayProcess, mock: MockProcess
) -> None:
    client = sync_client(templated)
    got = {
        model: client.chat.completions.create(model=model, messages=QUESTION).model
        for model in ("gpt-4o", "gpt-4.1-mini")
    }
    assert got == {"gpt-4o": "gpt-4o-2024-11-20", "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14"}
    assert [r["path"] for r in mock.requests()] == [
        "/openai/deployments/gpt-4o/chat/completions",
        "/openai/deployments/gpt-4.1-mini/chat/completions",
    ]


def test_kong_example_streams(templated: GatewayProcess, mock: MockProcess) -> None:
    client = sync_client(templated)
    for model, snapshot in (
        ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
        ("gpt-4o", "gpt-4o-2024-11-20"),
    ):
        chunks = list(client.chat.completions.create(model=model, messages=QUESTION, stream=True))
        assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)
        assert {chunk.model for chunk in chunks if chunk.model} == {snapshot}
    assert [r["deployment"] for r in mock.requests()] == ["gpt-4.1-mini", "gpt-4o"]


def test_body_model_is_checked_against_the_resolved_name(
    templated: GatewayProcess, mock: MockProcess
) -> None:
    response = _post(templated, "/openai/deployments/gpt-4o/chat/completions", model="gpt-4.1-mini")
    assert response.status == 400
    error = error_of(response)
    assert error["code"] == "model_mismatch" and "'gpt-4o'" in error["message"]
    assert mock.requests() == []


def test_access_log_and_model_header_carry_the_resolved_names(
    templated: GatewayProcess, request_id: str
) -> None:
    response = sync_client(templated).chat.completions.with_raw_response.create(
        model="gpt-4.1-mini", messages=QUESTION, extra_headers={"x-request-id": request_id}
    )
    assert response.headers["x-aigw-llm-model"] == "azure/gpt-4.1-mini"
    line = templated.access_log(request_id)
    assert line["route"] == "azure-chat"
    assert line["model"] == "gpt-4.1-mini"
    assert line["deployment"] == "gpt-4.1-mini"
    assert line["response_model"] == "gpt-4.1-mini-2025-04-14"


def test_metrics_are_labelled_by_the_resolved_model(templated: GatewayProcess) -> None:
    sync_client(templated).chat.completions.create(model="gpt-4.1-mini", messages=QUESTION)
    assert templated.admin_url is not None
    with urllib.request.urlopen(templated.admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = 'aigw_requests_total{model="gpt-4.1-mini",route="azure-chat",status="200"}'
    assert any(line.startswith(wanted) for line in text.splitlines())
    assert "$(uri_captures" not in text


def test_header_template(templated: GatewayProcess, mock: MockProcess, request_id: str) -> None:
    response = _post(
        templated,
        "/by-header/chat/completions",
        headers={"x-deployment": "gpt-4.1-mini", "x-request-id": request_id},
        model="gpt-4.1-mini",
    )
    assert response.status == 200, response.body
    assert json.loads(response.body)["model"] == "gpt-4.1-mini-2025-04-14"
    assert mock.requests()[0]["path"] == "/openai/deployments/gpt-4.1-mini/chat/completions"
    line = templated.access_log(request_id)
    assert (line["model"], line["deployment"]) == ("gpt-4.1-mini", "gpt-4.1-mini")


def test_query_template_and_templated_api_version(
    templated: GatewayProcess, mock: MockProcess
) -> None:
    response = _post(templated, "/by-query/chat/completions?deployment=gpt-4o&pinned=2024-10-21")
    assert response.status == 200, response.body
    (seen,) = mock.requests()
    assert seen["path"] == "/openai/deployments/gpt-4o/chat/completions"
    assert seen["query"]["api-version"] == "2024-10-21"


def test_upstream_path_and_url_templates(templated: GatewayProcess, mock: MockProcess) -> None:
    assert _post(templated, "/by-path/gpt-4.1-mini/completions").status == 200
    by_url = _post(templated, "/by-url/chat/completions", headers={"x-deployment": "gpt-4o"})
    assert by_url.status == 200, by_url.body
    assert [r["path"] for r in mock.requests()] == [
        "/openai/deployments/gpt-4.1-mini/chat/completions",
        "/openai/deployments/gpt-4o/chat/completions",
    ]


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/by-header/chat/completions", "headers.x-deployment"),
        ("/by-query/chat/completions?pinned=2024-10-21", "query_params.deployment"),
        ("/by-query/chat/completions?deployment=gpt-4o", "query_params.pinned"),
    ],
)
def test_a_missing_header_or_query_parameter_is_a_400_naming_it(
    templated: GatewayProcess, mock: MockProcess, path: str, param: str
) -> None:
    response = _post(templated, path)
    assert response.status == 400
    error = error_of(response)
    assert error["param"] == param
    assert error["code"] in ("missing_header", "missing_query_param")
    assert param.split(".", 1)[1] in error["message"]
    assert mock.requests() == []


INJECTIONS = ["..", ".", "a/b", "%2F", "x%2Fy", "a@evil.example", "a#b", "a?b", "a\r\nb", "x" * 65]


@pytest.mark.parametrize("value", INJECTIONS)
def test_query_values_cannot_steer_the_upstream(
    templated: GatewayProcess, mock: MockProcess, value: str
) -> None:
    query = urlencode({"deployment": value, "pinned": "2024-10-21"})
    response = _post(templated, f"/by-query/chat/completions?{query}")
    _assert_refused(response, "query_params.deployment", mock)


@pytest.mark.parametrize("value", [v for v in INJECTIONS if "\r" not in v])
def test_header_values_cannot_steer_the_upstream(
    templated: GatewayProcess, mock: MockProcess, value: str
) -> None:
    response = _post(templated, "/by-url/chat/completions", headers={"x-deployment": value})
    _assert_refused(response, "headers.x-deployment", mock)


@pytest.mark.parametrize(
    "segment", ["a@evil.example", "a%40b", "a%23b", "a%3Fb", "a%20b", "%C3%A9", "x" * 65]
)
def test_path_captures_cannot_steer_the_upstream(
    templated: GatewayProcess, mock: MockProcess, segment: str
) -> None:
    response = _post(templated, f"/openai/deployments/{segment}/chat/completions", model=segment)
    _assert_refused(response, "uri_captures.azure_deployment", mock)


@pytest.mark.parametrize("segment", ["%2F", "..", "%2E%2E", "."])
def test_path_tricks_never_reach_the_upstream(
    templated: GatewayProcess, mock: MockProcess, segment: str
) -> None:
    # The router refuses %2F and resolves dot segments before matching: these
    # requests match no templated route at all.
    response = _post(templated, f"/openai/deployments/{segment}/chat/completions")
    assert response.status in (400, 404)
    assert error_of(response)["code"] in ("invalid_path", "route_not_found")
    assert mock.requests() == []


def _assert_refused(response: RawResponse, param: str, mock: MockProcess) -> None:
    assert response.status == 400, response.body
    error: dict[str, Any] = error_of(response)
    assert error["code"] == "invalid_template_value"
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert mock.requests() == []


def test_check_reports_template_errors_with_file_line_and_key(tmp_path: Path) -> None:
    broken = KONG_EXAMPLE.replace(
        'name: "$(uri_captures.azure_deployment)"', 'name: "$(uri_capture.azure_deployment)"'
    ).replace(
        'azure_deployment_id: "$(uri_captures.azure_deployment)"',
        'azure_deployment_id: "$(uri_captures.deployment)"',
    )
    (tmp_path / "kong.yaml").write_text(broken)
    result = run_check(tmp_path, {**os.environ, **GATEWAY_ENV})
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    file = tmp_path / "kong.yaml"
    assert errors == [
        f"error: {file}:10:19: plugins[0].config.targets[0].model.name: unknown template variable "
        "kind `uri_capture` in `$(uri_capture.azure_deployment)`; did you mean `uri_captures`?",
        f"error: {file}:11:73: plugins[0].config.targets[0].model.options.azure_deployment_id: "
        "`$(uri_captures.deployment)` names a capture that not every path of `route.paths` has; "
        "did you mean `$(uri_captures.azure_deployment)`?",
    ]


@pytest.mark.parametrize(("pinned", "asks_usage"), [("2024-10-21", True), ("2024-02-01", False)])
def test_a_templated_api_version_decides_whether_a_stream_asks_for_usage(
    templated: GatewayProcess, mock: MockProcess, pinned: str, asks_usage: bool
) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": QUESTION, "stream": True}).encode()
    target = f"/by-query/chat/completions?deployment=gpt-4o&pinned={pinned}"
    response = raw_request(templated.port, post(body, target=target))
    assert response.status == 200, response.body
    (seen,) = mock.requests()
    assert seen["query"]["api-version"] == pinned
    assert ("stream_options" in json.loads(seen["body"])) is asks_usage


def test_a_templated_api_version_must_be_one(templated: GatewayProcess, mock: MockProcess) -> None:
    response = _post(templated, "/by-query/chat/completions?deployment=gpt-4o&pinned=latest-ish")
    _assert_refused(response, "query_params.pinned", mock)
