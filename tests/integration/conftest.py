"""Fixtures: one Azure mock and one aigw process per test session, on 127.0.0.1.

The gateway serves the shipped ``conf.d`` routes (pointed at the mock with
``--azure-base-url``) plus test routes that exercise each config feature.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import REPO, GatewayProcess, MockProcess

GATEWAY_ENV = {"AZURE_OPENAI_KEY": MockProcess.api_key, "AZURE_INSTANCE": "testresource"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def route_yaml(
    name: str,
    path: str,
    *,
    model: str,
    deployment: str,
    route_type: str = "llm/v1/chat",
    key: str = "${AZURE_OPENAI_KEY}",
    auth: str | None = None,
    options: str = "",
    config: str = "",
    target: str = "",
    upstream_url: str | None = None,
    logging: str = "",
) -> str:
    """A route file in the project's config language."""
    auth_block = (
        auth
        or f"""
          auth:
            header_name: api-key
            header_value: {key}"""
    )
    url_line = f"\n              upstream_url: {upstream_url}" if upstream_url else ""
    return f"""route:
  name: {name}
  paths: [{path}]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:{config}
      targets:
        - route_type: {route_type}{auth_block}{target}{logging}
          model:
            provider: azure
            name: {model}
            options:
              azure_instance: ${{AZURE_INSTANCE}}
              azure_deployment_id: {deployment}{url_line}{options}
"""


def _chat(name: str, deployment: str = "gpt-4o", **kw: str) -> str:
    return route_yaml(
        name,
        f"/openai/deployments/{name}/chat/completions",
        model=name,
        deployment=deployment,
        **kw,
    )


def write_test_routes(conf: Path, mock_url: str) -> None:
    """The shipped routes plus one route per feature under test."""
    for shipped in ("gpt-4o.yaml", "gpt-4.1-mini.yaml"):
        shutil.copy(REPO / "conf.d" / shipped, conf / shipped)
    files = {
        "embeddings.yaml": route_yaml(
            "embeddings",
            "/openai/deployments/text-embedding-3-small/embeddings",
            model="text-embedding-3-small",
            deployment="text-embedding-3-small",
            route_type="llm/v1/embeddings",
        ),
        "completions.yaml": route_yaml(
            "instruct",
            "/openai/deployments/gpt-35-turbo-instruct/completions",
            model="gpt-35-turbo-instruct",
            deployment="gpt-35-turbo-instruct",
            route_type="llm/v1/completions",
        ),
        "small.yaml": _chat("small", config="\n      max_request_body_size: 512"),
        "nostream.yaml": _chat("nostream", config="\n      response_streaming: deny"),
        "capped.yaml": _chat(
            "capped", options="\n              max_tokens: 3\n              temperature: 0.25"
        ),
        "unreachable.yaml": _chat(
            "unreachable",
            upstream_url=f"http://127.0.0.1:{_closed_port()}/openai/deployments/x/chat/completions",
        ),
        "slow.yaml": _chat("slow", target="\n          read_timeout: 400"),
        "payloads.yaml": _chat(
            "payloads", logging="\n          logging:\n            log_payloads: true"
        ),
        "wrongkey.yaml": _chat("wrongkey", key="not-the-azure-key"),
        "nodeployment.yaml": _chat("nodeployment", deployment="no-such-deployment"),
        "queryauth.yaml": _chat(
            "queryauth",
            auth="""
          auth:
            param_name: subscription-key
            param_value: ${AZURE_OPENAI_KEY}
            param_location: query""",
        ),
        "override.yaml": _chat(
            "override",
            auth="""
          auth:
            header_name: api-key
            header_value: ${AZURE_OPENAI_KEY}
            allow_override: true""",
        ),
        # Broken files: rejected at load, never taking the others down.
        "typo.yaml": _chat("typo").replace("header_value:", "header_vaule:"),
        "noenv.yaml": _chat("noenv", key="${AIGW_TEST_UNSET_VARIABLE}"),
    }
    for name, text in files.items():
        (conf / name).write_text(text)


@pytest.fixture(scope="session")
def mock() -> Iterator[MockProcess]:
    process = MockProcess()
    yield process
    process.close()


@pytest.fixture(scope="session")
def conf_dir(tmp_path_factory: pytest.TempPathFactory, mock: MockProcess) -> Path:
    conf = tmp_path_factory.mktemp("conf.d")
    write_test_routes(conf, mock.url)
    return conf


@pytest.fixture(scope="session")
def gateway(conf_dir: Path, mock: MockProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(conf_dir, "--azure-base-url", mock.url, env=GATEWAY_ENV)
    yield process
    process.close()


@pytest.fixture(autouse=True)
def _fresh_mock(request: pytest.FixtureRequest) -> None:
    if "mock" in request.fixturenames:
        request.getfixturevalue("mock").reset()


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    from tests.integration.test_sdk import OPEN_CLIENTS

    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


@pytest.fixture
def request_id() -> str:
    """A unique id to find this test's access-log line."""
    return f"test-{uuid.uuid4().hex}"
