"""The body stage per operation: required fields, streaming, usage injection, defaults,
the preread body of a model route, the model rewrite, WebSocket refusal."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from aigw.apis.operations import BY_ROUTE_TYPE
from aigw.chain.body import body_checks
from aigw.chain.exchange import Exchange
from aigw.config.model import AiProxyAdvancedConfig, TargetConfig
from aigw.errors import BadRequest, GatewayError, PayloadTooLarge, RouteNotFound
from aigw.limits import DEFAULT_LIMITS
from tests.unit.test_chain import Recorder, exchange, target


def _stage(t: TargetConfig, *, models: tuple[str, ...] = (), **proxy: Any) -> Any:
    return body_checks(
        AiProxyAdvancedConfig(targets=(t,), **proxy),
        t,
        DEFAULT_LIMITS,
        Recorder(),
        route="r",
        models=models,
    )


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _sent(ex: Exchange) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(ex.upstream_body)
    return result


@pytest.mark.parametrize(
    ("route_type", "body", "param"),
    [
        ("image/v1/images/generations", {"model": "gpt-4o", "size": "1024x1024"}, "prompt"),
        ("audio/v1/audio/speech", {"model": "gpt-4o", "input": ""}, "input"),
        ("llm/v1/embeddings", {"model": "gpt-4o"}, "input"),
    ],
)
async def test_required_field_per_operation(
    route_type: str, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        await _stage(target(route_type))(exchange(_body(**body)))
    assert refused.value.code == "invalid_request_body" and refused.value.param == param
    assert route_type in refused.value.message


async def test_responses_needs_no_input_and_gets_nothing_injected() -> None:
    t = target("llm/v1/responses", max_tokens=5, temperature=0.2)
    body = _body(model="gpt-4o", previous_response_id="resp_1", stream=True)
    await _stage(t)(ex := exchange(body))
    # A Responses stream carries its usage; max_output_tokens is not max_tokens.
    assert ex.stream and not ex.hide_usage_chunk
    assert ex.upstream_body == body


async def test_responses_streaming_obeys_the_route() -> None:
    with pytest.raises(BadRequest) as refused:
        await _stage(target("llm/v1/responses"), response_streaming="deny")(
            exchange(_body(input="hi", stream=True))
        )
    assert refused.value.code == "streaming_disabled"
    await _stage(target("llm/v1/responses"), response_streaming="always")(
        ex := exchange(_body(input="hi"))
    )
    assert _sent(ex)["stream"] is True and "stream_options" not in _sent(ex)


async def test_defaults_only_for_chat_and_completions_on_an_auto_route() -> None:
    t = target("auto", max_tokens=5, azure_deployment_id="gpt-4o")
    stage = _stage(t, models=("gpt-4o",))
    chat = exchange(_body(model="gpt-4o", messages=[1]))
    chat.operation, chat.api_style = BY_ROUTE_TYPE["llm/v1/chat"], "v1"
    await stage(chat)
    assert _sent(chat)["max_tokens"] == 5
    emb = exchange(body := _body(model="gpt-4o", input="x"))
    emb.operation, emb.api_style = BY_ROUTE_TYPE["llm/v1/embeddings"], "v1"
    await stage(emb)
    assert emb.upstream_body == body
    # Responses' max_output_tokens is not max_tokens: nothing is added.
    responses = exchange(body := _body(model="gpt-4o", input="x", stream=True))
    responses.operation, responses.api_style = BY_ROUTE_TYPE["llm/v1/responses"], "v1"
    await stage(responses)
    assert responses.upstream_body == body


def _preread(body: bytes, route_type: str, style: str = "v1") -> Exchange:
    ex = exchange()
    ex.client_body = ex.upstream_body = body
    ex.payload = json.loads(body)
    ex.body_preread = True
    ex.operation = BY_ROUTE_TYPE[route_type]
    ex.api_style = style  # type: ignore[assignment]
    return ex


async def test_preread_body_is_reused_not_read_and_still_bounded() -> None:
    t = target("auto", azure_deployment_id="gpt-4o")
    body = _body(model="gpt-4o", messages=[{"role": "user", "content": "x" * 100}])
    ex = _preread(body, "llm/v1/chat")
    payload = ex.payload
    await _stage(t, models=("gpt-4o",))(ex)
    assert ex.payload is payload and ex.upstream_body is body  # no second parse, no rewrite
    assert ex.body_budget.held == 0  # the dispatcher's reservation: not released here
    with pytest.raises(PayloadTooLarge) as refused:
        await _stage(t, models=("gpt-4o",), max_request_body_size=50)(_preread(body, "llm/v1/chat"))
    assert "max_request_body_size (50 bytes)" in refused.value.message


@pytest.mark.parametrize(
    ("style", "renamed"), [("v1", True), ("openai", True), ("deployments", False)]
)
async def test_body_model_names_the_deployment_on_model_in_body_styles(
    style: str, renamed: bool
) -> None:
    t = target("auto", azure_deployment_id="prod-4o")
    ex = _preread(_body(model="gpt-4o", input="hi"), "llm/v1/responses", style)
    await _stage(t, models=("gpt-4o",))(ex)
    assert _sent(ex)["model"] == ("prod-4o" if renamed else "gpt-4o")
    assert ex.requested_model == "gpt-4o"


async def test_classic_deployment_path_names_the_operation() -> None:
    stage = _stage(target("auto"), models=("gpt-4o",))
    ex = exchange(_body(model="gpt-4o", prompt="a cat"))
    ex.params = {"*": "images/generations"}
    await stage(ex)
    assert ex.operation is BY_ROUTE_TYPE["image/v1/images/generations"]
    assert ex.api_style == "deployments"
    unknown = exchange(_body(model="gpt-4o"))
    unknown.params = {"*": "images/variations"}
    with pytest.raises(RouteNotFound) as refused:
        await stage(unknown)
    assert refused.value.code == "route_not_found"


async def test_a_specific_route_type_serves_only_its_operation() -> None:
    stage = _stage(target("image/v1/images/generations"), models=("gpt-4o",))
    ex = exchange(_body(model="gpt-4o", messages=[1]))
    ex.params = {"*": "chat/completions"}
    with pytest.raises(RouteNotFound) as refused:
        await stage(ex)
    assert refused.value.code == "operation_not_found"
    assert "serves only image/v1/images/generations" in refused.value.message
    ok = exchange(_body(model="gpt-4o", prompt="a cat"))
    ok.params = {"*": "images/generations"}
    await stage(ok)


async def test_model_route_accepts_its_route_models_in_the_body() -> None:
    t = replace(target("auto"), model=replace(target().model, name="gpt-4o-2024-11-20"))
    ex = exchange(_body(model="gpt-4o", messages=[1]))
    ex.params = {"*": "chat/completions"}
    await _stage(t, models=("gpt-4o",))(ex)
    other = exchange(_body(model="gpt-35", messages=[1]))
    other.params = {"*": "chat/completions"}
    with pytest.raises(BadRequest, match="is not served here"):
        await _stage(t, models=("gpt-4o",))(other)


async def test_realtime_operation_reads_no_body() -> None:
    ex = exchange(headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    ex.operation = BY_ROUTE_TYPE["realtime/v1/realtime"]
    await _stage(target("auto"), models=("gpt-4o",))(ex)  # straight on, no body error


@pytest.mark.parametrize("route_type", ["llm/v1/chat", "preserve"])
async def test_websocket_upgrade_refused_where_the_route_does_not_speak_it(route_type: str) -> None:
    ex = exchange(headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    with pytest.raises(GatewayError) as refused:
        await _stage(target(route_type))(ex)
    assert refused.value.code == "websocket_not_supported" and refused.value.status == 400


async def test_v1_stream_without_api_version_gets_include_usage() -> None:
    t = target("auto", azure_api_version="2024-02-01")  # too old for stream_options
    ex = _preread(_body(model="gpt-4o", messages=[1], stream=True), "llm/v1/chat")
    await _stage(t, models=("gpt-4o",))(ex)
    assert _sent(ex)["stream_options"] == {"include_usage": True}
