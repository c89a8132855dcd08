"""Pieces of the relay that need no network: usage scanning, header policy, targets."""

from __future__ import annotations

import json

from aigw.config.model import (
    AuthConfig,
    LoggingConfig,
    ModelConfig,
    ModelOptions,
    TargetConfig,
)
from aigw.upstream.headers import REQUEST_POLICY, RESPONSE_POLICY
from aigw.upstream.relay import read_body_usage
from aigw.upstream.target import DEFAULT_API_VERSION, compile_target, valid_api_version


def test_usage_and_model_read_from_an_azure_body() -> None:
    body = json.dumps(
        {
            "choices": [{"message": {"content": 'say "usage": {"x": 1} and "model": "fake"'}}],
            "model": "gpt-4o-2024-11-20",
            "usage": {"completion_tokens": 5, "prompt_tokens": 7, "total_tokens": 12},
        }
    ).encode()
    model, usage = read_body_usage(body)
    assert model == "gpt-4o-2024-11-20"
    assert usage == {"completion_tokens": 5, "prompt_tokens": 7, "total_tokens": 12}


def test_usage_read_when_it_is_not_the_last_key() -> None:
    # Not Azure's (alphabetical) order: the fast slice fails, the fallback decodes.
    body = b'{"usage": {"prompt_tokens": 7, "details": {"cached": 1}},\n "model": "m", "z": [1]}\n'
    assert read_body_usage(body) == ("m", {"prompt_tokens": 7, "details": {"cached": 1}})


def test_usage_absent_or_broken_body() -> None:
    assert read_body_usage(b"{}") == (None, None)
    assert read_body_usage(b'{"usage": {"broken"') == (None, None)


def test_request_policy_drops_credentials_and_hop_by_hop() -> None:
    headers = [
        ("api-key", "k"),
        ("Authorization", "Bearer k"),
        ("Connection", "close"),
        ("Content-Type", "application/json"),
        ("X-Stainless-Retry-Count", "0"),
        ("Cookie", "a=b"),
        ("Host", "gateway"),
        ("Content-Length", "12"),
    ]
    kept = REQUEST_POLICY.filter(headers)
    assert kept == [
        ("Content-Type", "application/json"),
        ("X-Stainless-Retry-Count", "0"),
    ]


def test_response_policy_keeps_azure_diagnostics_and_drops_cookies() -> None:
    headers = [
        ("Set-Cookie", "x=y"),
        ("apim-request-id", "1"),
        ("x-ratelimit-remaining-tokens", "9"),
        ("Retry-After", "3"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "3"),
        ("x-ms-region", "Sweden Central"),
    ]
    assert [k for k, _ in RESPONSE_POLICY.filter(headers)] == [
        "apim-request-id",
        "x-ratelimit-remaining-tokens",
        "Retry-After",
        "x-ms-region",
    ]


def _target(**options: object) -> TargetConfig:
    return TargetConfig(
        route_type="llm/v1/chat",
        auth=AuthConfig(header_name="api-key", header_value="secret"),
        model=ModelConfig(provider="azure", name="gpt-4o", options=ModelOptions(**options)),  # type: ignore[arg-type]
        logging=LoggingConfig(),
    )


def test_target_url_is_built_like_kong() -> None:
    target = compile_target(_target(azure_instance="res", azure_deployment_id="gpt-4o"))
    assert str(target.url("/ignored")) == (
        "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
    )
    assert target.default_api_version == DEFAULT_API_VERSION
    assert (target.connect_timeout, target.read_timeout, target.write_timeout) == (10, 600, 60)


def test_target_upstream_url_and_path_overrides() -> None:
    full = compile_target(
        _target(upstream_url="http://127.0.0.1:9/custom/path?api-version=2024-06-01")
    )
    assert str(full.url("/x")) == "http://127.0.0.1:9/custom/path"
    assert full.default_api_version == "2024-06-01"
    based = compile_target(
        _target(azure_instance="res", azure_deployment_id="d", upstream_path="extra/op"),
        azure_base_url="http://127.0.0.1:9100",
    )
    assert str(based.url("/x")) == "http://127.0.0.1:9100/openai/deployments/d/extra/op"


def test_api_version_syntax() -> None:
    assert valid_api_version("2025-01-01-preview")
    assert valid_api_version("2024-10-21")
    assert valid_api_version("v1")
    assert not valid_api_version("2024-10-21&x=1")
    assert not valid_api_version("")
