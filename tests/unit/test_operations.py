"""Operations on the wire: the upstream path and api-version per API style, and the body
``model`` each pool attempt names."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from aigw.apis.operations import BY_ROUTE_TYPE, BY_SUFFIX
from aigw.balancer.members import compile_members
from aigw.balancer.state import TargetStates
from aigw.chain.exchange import Exchange
from aigw.errors import BadRequest
from aigw.upstream import relay
from aigw.upstream.target import DEFAULT_API_VERSION, UpstreamTarget, compile_target
from tests.unit.test_chain import exchange, target

CHAT = BY_ROUTE_TYPE["llm/v1/chat"]
RESPONSES = BY_ROUTE_TYPE["llm/v1/responses"]


class _Sent(Exception):
    """Raised by the fake pool with what the relay would have sent."""


class _Pool:
    async def request(self, origin: Any, method: str, path: str, *args: Any, **kw: Any) -> Any:
        raise _Sent(path)


async def _upstream_path(
    t: UpstreamTarget, path: str, query: str = "", operation: Any = None, style: Any = None
) -> str:
    ex = exchange(path=path + (f"?{query}" if query else ""))
    ex.path, ex.pool = path, _Pool()  # type: ignore[assignment]
    ex.operation, ex.api_style = operation, style
    with pytest.raises(_Sent) as sent:
        await relay._send(ex, t)
    return str(sent.value)


def test_the_deployment_paths_name_their_operations() -> None:
    assert BY_SUFFIX["chat/completions"] is CHAT
    assert BY_SUFFIX["audio/speech"].route_type == "audio/v1/audio/speech"
    assert "responses" not in BY_SUFFIX  # Responses has no deployment path


def test_path_route_targets_per_route_type() -> None:
    base = "http://127.0.0.1:9"
    images = compile_target(
        target("image/v1/images/generations", azure_deployment_id="d"), azure_base_url=base
    )
    assert images.fixed_path == "/openai/deployments/d/images/generations"
    responses = compile_target(
        target("llm/v1/responses", azure_deployment_id="d"), azure_base_url=base
    )
    assert responses.fixed_path == "/openai/responses"
    assert responses.default_api_version == RESPONSES.default_api_version
    configured = compile_target(
        target("llm/v1/responses", azure_deployment_id="d", azure_api_version="2025-03-01-preview")
    )
    assert configured.default_api_version == "2025-03-01-preview"


async def test_path_route_keeps_its_fixed_path() -> None:
    t = compile_target(target("llm/v1/responses", azure_deployment_id="d"))
    assert await _upstream_path(t, "/my/responses") == (
        f"/openai/responses?api-version={RESPONSES.default_api_version}"
    )


@pytest.mark.parametrize(
    ("path", "query", "operation", "style", "expected"),
    [
        # v1 keeps the client's path and sends no api-version unless the client did.
        ("/openai/v1/chat/completions", "", CHAT, "v1", "/openai/v1/chat/completions"),
        (
            "/openai/v1/responses",
            "api-version=preview",
            RESPONSES,
            "v1",
            "/openai/v1/responses?api-version=preview",
        ),
        # Classic Responses: the client's path, the op's minimum version by default.
        (
            "/openai/responses",
            "",
            RESPONSES,
            "openai",
            f"/openai/responses?api-version={RESPONSES.default_api_version}",
        ),
        (
            "/openai/responses",
            "api-version=2025-03-01-preview",
            RESPONSES,
            "openai",
            "/openai/responses?api-version=2025-03-01-preview",
        ),
        # A classic deployment path goes to the target's deployment.
        (
            "/openai/deployments/gpt-4o/chat/completions",
            "",
            CHAT,
            "deployments",
            f"/openai/deployments/prod-4o/chat/completions?api-version={DEFAULT_API_VERSION}",
        ),
    ],
)
async def test_model_route_upstream_path_and_api_version_per_style(
    path: str, query: str, operation: Any, style: str, expected: str
) -> None:
    t = compile_target(target("auto", azure_deployment_id="prod-4o"))
    assert await _upstream_path(t, path, query, operation, style) == expected


async def test_configured_api_version_and_query_credential_on_v1() -> None:
    t = compile_target(target("auto", azure_deployment_id="d", azure_api_version="2024-06-01"))
    ex_path = await _upstream_path(t, "/openai/responses", "", RESPONSES, "openai")
    assert ex_path.endswith("?api-version=2024-06-01")
    ex = exchange(path="/openai/v1/embeddings")
    ex.path, ex.pool = "/openai/v1/embeddings", _Pool()  # type: ignore[assignment]
    ex.operation, ex.api_style = BY_ROUTE_TYPE["llm/v1/embeddings"], "v1"
    ex.extra_query = (("key", "s"),)
    with pytest.raises(_Sent) as sent:
        await relay._send(ex, t)
    assert str(sent.value) == "/openai/v1/embeddings?key=s"  # '?' not '&' without a version


async def test_a_malformed_client_api_version_is_refused_on_every_style() -> None:
    t = compile_target(target("auto", azure_deployment_id="d"))
    with pytest.raises(BadRequest):
        await _upstream_path(t, "/openai/v1/responses", "api-version=2024-1", RESPONSES, "v1")


def _pool_exchange(style: str | None, operation: Any = CHAT) -> Exchange:
    ex = exchange()
    ex.api_style, ex.operation = style, operation  # type: ignore[assignment]
    return ex


def test_each_pool_attempt_names_its_own_deployment_on_v1() -> None:
    configs = [
        replace(target("auto", azure_deployment_id=name, azure_instance=name, max_tokens=3))
        for name in ("east-4o", "west-4o")
    ]
    members = compile_members(
        configs, states=TargetStates(), identities=None, shared_defaults=False
    )
    payload = {"model": "gpt-4o", "messages": [1]}
    sent = json.dumps(payload).encode()
    bodies = [json.loads(m.body(payload, sent, _pool_exchange("v1"))) for m in members]
    assert [body["model"] for body in bodies] == ["east-4o", "west-4o"]
    assert all(body["max_tokens"] == 3 for body in bodies)
    assert payload["model"] == "gpt-4o"  # the shared payload is never changed
    classic = members[0].body(payload, sent, _pool_exchange("deployments"))
    assert json.loads(classic)["model"] == "gpt-4o"
    embeddings = _pool_exchange("deployments", BY_ROUTE_TYPE["llm/v1/embeddings"])
    assert members[0].body({"input": "x"}, b'{"input":"x"}', embeddings) == b'{"input":"x"}'


async def test_preserve_route_sends_a_v1_path_without_a_version_unless_the_client_did() -> None:
    t = compile_target(target("preserve", azure_deployment_id="d"))
    assert await _upstream_path(t, "/openai/v1/models") == "/openai/v1/models"
    assert await _upstream_path(t, "/openai/v1/models", "api-version=preview") == (
        "/openai/v1/models?api-version=preview"
    )
    assert await _upstream_path(t, "/openai/models") == (
        f"/openai/models?api-version={DEFAULT_API_VERSION}"
    )
