"""Pieces of the relay that need no network: usage scanning, header policy, targets."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from aigw.config.model import (
    AuthConfig,
    LoggingConfig,
    ModelConfig,
    ModelOptions,
    TargetConfig,
)
from aigw.upstream.body_window import (
    CAPTURE_BYTES,
    HEAD_BYTES,
    TAIL_BYTES,
    BodyWindow,
    PayloadCapture,
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


# -- the bounded window a relayed body's usage is read from --------------------------------

AZURE_USAGE = {"completion_tokens": 5, "prompt_tokens": 7, "total_tokens": 12}


def _azure_body(content_size: int, **extra: object) -> bytes:
    """An Azure-ordered completion (keys alphabetical: model and usage come last)."""
    body = {
        "choices": [{"index": 0, "message": {"content": "w" * content_size}}],
        "created": 1,
        "id": "chatcmpl-1",
        "model": "gpt-4o-2024-11-20",
        "object": "chat.completion",
        "usage": AZURE_USAGE,
        **extra,
    }
    return json.dumps(body).encode()


def _windowed(body: bytes, piece: int) -> tuple[str | None, dict[str, object] | None]:
    window = BodyWindow()
    for at in range(0, len(body), piece):
        window.add(body[at : at + piece])
    return window.usage()


@pytest.mark.parametrize("piece", [1, 100, 4096, 65536, 10**9])
def test_window_reads_what_the_whole_body_gives_when_it_fits(piece: int) -> None:
    body = _azure_body(20_000)
    assert _windowed(body, piece) == read_body_usage(body)
    assert _windowed(body, piece) == ("gpt-4o-2024-11-20", AZURE_USAGE)


@pytest.mark.parametrize("piece", [1000, 65536, 256 * 1024])
def test_window_reads_model_and_usage_from_the_tail_of_a_large_body(piece: int) -> None:
    assert _windowed(_azure_body(3_000_000), piece) == ("gpt-4o-2024-11-20", AZURE_USAGE)


def test_window_reads_model_from_the_head_when_it_comes_first() -> None:
    body = b'{"id":"x","model":"gpt-head","choices":[{"text":"' + b"w" * 500_000 + b'"}]}'
    assert _windowed(body, 4096) == ("gpt-head", None)


def test_window_usage_larger_than_the_tail_is_none_not_a_part_of_it() -> None:
    usage = {**AZURE_USAGE, "details": {"note": "n" * (TAIL_BYTES + 1000), "inner": {"a": 1}}}
    body = json.dumps({"choices": [{"text": "w" * 200_000}], "usage": usage}).encode()
    assert read_body_usage(body)[1] == usage  # the whole body has it
    assert _windowed(body, 4096)[1] is None


def test_window_usage_in_the_dropped_middle_is_none() -> None:
    body = json.dumps(
        {"usage": AZURE_USAGE, "model": "m", "data": ["w" * 300_000], "z": {"t": 1}}
    ).encode()
    assert read_body_usage(body)[1] == AZURE_USAGE
    assert _windowed(body, 4096) == ("m", None)


def test_window_never_reads_a_wrong_usage_at_any_boundary() -> None:
    """Slide the usage object across the head and tail boundaries: right or None, never wrong."""
    usage = {"completion_tokens": 11, "prompt_tokens": 22, "total_tokens": 33}
    tail_bytes = json.dumps({"usage": usage, "z": 1}).encode()[1:]
    for before in range(TAIL_BYTES - 200, TAIL_BYTES + 200, 7):
        for size in (HEAD_BYTES - 50, HEAD_BYTES + 50, 200_000):
            body = (
                b'{"a":"'
                + b"w" * size
                + b'",'
                + tail_bytes[:-1]
                + b',"pad":"'
                + b"p" * before
                + b'"}'
            )
            found = _windowed(body, 5000)[1]
            assert found in (usage, None), (before, size, found)


def test_capture_keeps_the_start_and_says_how_much_it_left_out() -> None:
    capture = PayloadCapture(limit=10)
    capture.add(b"0123")
    capture.add(b"456789abcdef")
    capture.add(b"ghij")
    assert capture.value() == b"0123456789...[aigw: 10 more bytes not logged]"
    whole = PayloadCapture(limit=10)
    whole.add(b"0123456789")
    assert whole.value() == b"0123456789"


def test_window_never_splices_head_and_tail_into_a_usage() -> None:
    """Head and tail read as one would join ``"completion_tokens": 1`` to ``2, ...``."""
    head = b'{"pad": "", "usage": {"completion_tokens": 1'
    head = head.replace(b'""', b'"' + b"h" * (HEAD_BYTES - len(head)) + b'"')
    middle = b', "note": "' + b"n" * 1000 + b'", "x": 1'
    tail = b'2, "prompt_tokens": 2, "total_tokens": 3, "pad": ""}}'
    tail = tail.replace(b'""', b'"' + b"t" * (TAIL_BYTES - len(tail)) + b'"')
    assert (len(head), len(tail)) == (HEAD_BYTES, TAIL_BYTES)
    body = head + middle + tail
    real = read_body_usage(body)[1]
    assert real is not None and real["completion_tokens"] == 1 and real["x"] == 12
    assert _windowed(body, 1) == (None, None)


def test_window_and_capture_hold_bounded_memory_whatever_the_body_size() -> None:
    window, capture = BodyWindow(), PayloadCapture()
    piece = 256 * 1024
    tracemalloc.start()
    try:
        for _ in range(64):  # 16 MiB, each piece a fresh object as the socket delivers them
            window.add(bytes(piece))
            capture.add(bytes(piece))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < HEAD_BYTES + TAIL_BYTES + CAPTURE_BYTES + piece + 64 * 1024
