"""Every error aigw makes itself is OpenAI-shaped, specific, and raised by the SDK."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.harness import GatewayProcess, MockProcess
from tests.integration.test_sdk import QUESTION, sync_client


def raw_post(
    gateway: GatewayProcess,
    path: str,
    body: bytes,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(
        gateway.url + path,
        data=body,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())


CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


def test_unknown_route_is_404(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sync_client(gateway, max_retries=0).chat.completions.create(
            model="no-such-route", messages=QUESTION
        )
    assert info.value.code == "route_not_found"
    assert "/openai/deployments/no-such-route/chat/completions" in info.value.message


def test_unknown_route_logs_the_body_the_client_sent(
    gateway: GatewayProcess, request_id: str
) -> None:
    body = json.dumps({"messages": QUESTION}).encode()
    status, _, _ = raw_post(
        gateway,
        "/openai/deployments/nope/chat/completions",
        body,
        headers={"x-request-id": request_id},
    )
    assert status == 404
    line = gateway.access_log(request_id)
    assert (line["route"], line["outcome"], line["bytes_in"]) == ("-", "route_not_found", len(body))
    assert line["level"] == "info"


def test_invalid_json_is_400_and_never_forwarded(
    gateway: GatewayProcess, mock: MockProcess
) -> None:
    status, _, body = raw_post(gateway, CHAT, b'{"messages": [}')
    assert status == 400
    assert body["error"]["code"] == "invalid_json"
    assert "not valid JSON" in body["error"]["message"]
    assert mock.requests() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b"", "body is empty"),
        (b'{"model": "gpt-4o"}', "'messages' is missing"),
        (b'{"messages": []}', "'messages' is not a non-empty array"),
        (b"\xff\xfe", "not valid UTF-8"),
    ],
)
def test_bad_bodies_are_400_with_a_specific_message(
    gateway: GatewayProcess, mock: MockProcess, body: bytes, message: str
) -> None:
    status, headers, answer = raw_post(gateway, CHAT, body)
    assert status == 400, answer
    assert message in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"
    assert headers["x-request-id"]
    assert mock.requests() == []


def test_model_mismatch_is_400_naming_both(gateway: GatewayProcess) -> None:
    client = openai.AzureOpenAI(
        api_key="k",
        azure_endpoint=gateway.url,
        api_version="2024-10-21",
        azure_deployment="gpt-4o",
        max_retries=0,
    )
    with client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4.1-mini", messages=QUESTION)
    assert info.value.code == "model_mismatch"
    assert "'gpt-4.1-mini'" in info.value.message and "'gpt-4o'" in info.value.message


def test_oversized_body_is_413(gateway: GatewayProcess, mock: MockProcess) -> None:
    big: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 2000}]
    with pytest.raises(openai.APIStatusError) as info:
        sync_client(gateway, max_retries=0).chat.completions.create(model="small", messages=big)
    assert info.value.status_code == 413
    assert "max_request_body_size (512 bytes)" in info.value.message
    assert mock.requests() == []


def test_oversized_chunked_body_is_413(gateway: GatewayProcess, mock: MockProcess) -> None:
    def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 100

    request = urllib.request.Request(
        gateway.url + "/openai/deployments/small/chat/completions",
        data=chunks(),
        method="POST",
        headers={"Transfer-Encoding": "chunked"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    info.value.close()
    assert info.value.code == 413
    assert mock.requests() == []


def test_wrong_method_is_405_with_allow(gateway: GatewayProcess) -> None:
    status, headers, body = raw_post(gateway, CHAT, b"", method="GET")
    assert status == 405
    assert headers["Allow"] == "POST"
    assert body["error"]["code"] == "method_not_allowed"


def test_streaming_denied_route(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sync_client(gateway, max_retries=0).chat.completions.create(
            model="nostream", messages=QUESTION, stream=True
        )
    assert info.value.code == "streaming_disabled"


def test_invalid_api_version_is_400(gateway: GatewayProcess, mock: MockProcess) -> None:
    status, _, body = raw_post(
        gateway,
        "/openai/deployments/gpt-4o/chat/completions?api-version=../../x",
        json.dumps({"messages": QUESTION}).encode(),
    )
    assert status == 400
    assert body["error"]["code"] == "invalid_api_version"
    assert mock.requests() == []


def test_unreachable_upstream_is_502(gateway: GatewayProcess, request_id: str) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        sync_client(gateway, max_retries=0).chat.completions.create(
            model="unreachable",
            messages=QUESTION,
            extra_headers={"x-request-id": request_id},
        )
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unreachable"
    assert gateway.access_log(request_id)["outcome"] == "upstream_unreachable"


def test_upstream_timeout_is_504(gateway: GatewayProcess, mock: MockProcess) -> None:
    mock.fault("delay", latency_ms=3000)
    with pytest.raises(openai.InternalServerError) as info:
        sync_client(gateway, max_retries=0).chat.completions.create(model="slow", messages=QUESTION)
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"


def test_upstream_redirect_is_not_followed(gateway: GatewayProcess, mock: MockProcess) -> None:
    mock.fault("redirect")
    with pytest.raises(openai.InternalServerError) as info:
        sync_client(gateway, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=QUESTION
        )
    assert info.value.code == "upstream_redirect"
    assert len(mock.requests()) == 1


def test_upstream_closing_without_answer_is_502(gateway: GatewayProcess, mock: MockProcess) -> None:
    mock.fault("close")
    with pytest.raises(openai.InternalServerError) as info:
        sync_client(gateway, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=QUESTION
        )
    assert info.value.status_code == 502


GPT_4O_UPSTREAM = "/openai/deployments/gpt-4o/chat/completions"


@pytest.mark.parametrize(
    ("path", "status", "answer"),
    [
        # Resolved before routing: the route is chosen by the normalised path.
        pytest.param(
            "/openai/deployments/gpt-4o/../gpt-4o/chat/completions",
            200,
            GPT_4O_UPSTREAM,
            id="dot-dot-back-to-itself",
        ),
        pytest.param(
            "/openai/deployments/gpt-4.1-mini/../gpt-4o/chat/completions",
            200,
            GPT_4O_UPSTREAM,
            id="dot-dot-from-another-route",
        ),
        pytest.param(
            "/openai/deployments/%67pt-4o/chat/./completions",
            200,
            GPT_4O_UPSTREAM,
            id="encoded-letter-and-dot",
        ),
        pytest.param(
            "/openai/deployments/gpt-4o/chat/completions/../../../gpt-4.1-mini",
            404,
            "no route for POST /openai/deployments/gpt-4.1-mini",
            id="dot-dot-out-of-a-route",
        ),
        pytest.param(
            "/openai/deployments/gpt-4o/chat/completions/..",
            404,
            "no route for POST /openai/deployments/gpt-4o/chat/",
            id="trailing-dot-dot",
        ),
        # An encoded separator could be split differently by the next parser: refused.
        pytest.param(
            "/openai/deployments/x/..%2F../gpt-4o/chat/completions",
            400,
            "encoded '/' (%2F) is not allowed in a path",
            id="encoded-slash-dot-dot",
        ),
        pytest.param(
            "/openai/deployments/gpt%2D4o%2Fchat/completions",
            400,
            "encoded '/' (%2F) is not allowed in a path",
            id="encoded-slash",
        ),
    ],
)
def test_path_spellings_never_reach_another_route(
    gateway: GatewayProcess, mock: MockProcess, path: str, status: int, answer: str
) -> None:
    """Each spelling gets the one answer its normalised path deserves.

    *answer* is the path the mock saw for a 200, else the error message.
    """
    got, _, body = raw_post(gateway, path, json.dumps({"messages": QUESTION}).encode())
    assert got == status, body
    if status == 200:
        assert [r["path"] for r in mock.requests()] == [answer]
    else:
        assert mock.requests() == []
        code = "route_not_found" if status == 404 else "invalid_path"
        assert body["error"]["code"] == code
        # A model route's classic prefix adds what it does serve after the path.
        assert body["error"]["message"].partition(":")[0] == answer.partition(":")[0]
