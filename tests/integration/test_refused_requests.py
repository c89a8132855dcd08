"""Requests the HTTP parser refuses, against the real process: JSON, one log line, no leak.

Each case is sent on a raw socket, carrying a secret in an ``Authorization``
header where the case allows it. The answer must be the OpenAI-style JSON
error aigw gives everywhere else (431 for an oversized head, 505 for other
HTTP versions and the HTTP/2 preface, 400 for the rest), with an
``x-request-id`` and the connection closed; the access log must have exactly
one line for it, without header content; and the process output must hold no
traceback and never the secret (aiohttp's default logs both).

Also here: the ``Server`` header every response carries, on both ports.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.harness import GatewayProcess, wait_until
from tests.integration.rawnet import (
    COMPLETION_ANSWER,
    RawResponse,
    ScriptedUpstream,
    always_answer,
    chat_body,
    error_of,
    gateway_to,
    post,
    read_response,
)

SECRET = "sk-refused-3f9a1c7e5b2d4a6f8e0c"
AUTH = f"Authorization: Bearer {SECRET}\r\n".encode()
HOST = b"Host: aigw.test\r\n"

CASES: dict[str, tuple[bytes, int, str]] = {
    "header_line_over_8190_bytes": (
        b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-Pad: " + b"a" * 9000 + b"\r\n" + AUTH + b"\r\n",
        431,
        "request_header_fields_too_large",
    ),
    "secret_in_header_over_8190_bytes": (
        b"GET /v1/models HTTP/1.1\r\n" + HOST + AUTH[:-2] + b"A" * 9000 + b"\r\n\r\n",
        431,
        "request_header_fields_too_large",
    ),
    "too_many_headers": (
        b"GET /v1/models HTTP/1.1\r\n"
        + HOST
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + AUTH
        + b"\r\n",
        431,
        "request_header_fields_too_large",
    ),
    "control_character_in_header": (
        b"GET /v1/models HTTP/1.1\r\n" + HOST + AUTH[:-2] + b"\x01x\r\n\r\n",
        400,
        "bad_request",
    ),
    "garbage_request_line": (b"HELLO " + SECRET.encode() + b"\r\n\r\n", 400, "bad_request"),
    "tls_client_hello": (
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,
        400,
        "bad_request",
    ),
    "http2_prior_knowledge_preface": (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        505,
        "http_version_not_supported",
    ),
    "http2_request_line": (
        b"GET /v1/models HTTP/2.0\r\n" + HOST + AUTH + b"\r\n",
        505,
        "http_version_not_supported",
    ),
    "http1.2_request_line": (
        b"GET /v1/models HTTP/1.2\r\n" + HOST + AUTH + b"\r\n",
        505,
        "http_version_not_supported",
    ),
}

# The upstream names itself: the gateway must not relay that.
ANSWER_WITH_SERVER = COMPLETION_ANSWER.replace(
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nServer: upstream-server/1.0\r\n", 1
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(always_answer(ANSWER_WITH_SERVER)) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("refused")
    with gateway_to(upstream.url, conf, "--header-timeout", "1") as process:
        yield process


def _send(port: int, data: bytes) -> tuple[RawResponse, bytes]:
    """Sends *data*, reads one response, then whatever follows until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        response = read_response(sock)
        rest = b""
        try:
            while chunk := sock.recv(4096):
                rest += chunk
        except ConnectionResetError:
            pass
        return response, rest


def _request_events(gateway: GatewayProcess, request_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in gateway.events()
        if e.get("event") == "request" and e.get("request_id") == request_id
    ]


@pytest.mark.parametrize("case", list(CASES))
def test_refused_request_gets_json_error_and_one_log_line(
    gateway: GatewayProcess, case: str
) -> None:
    data, status, code = CASES[case]
    response, rest = _send(gateway.port, data)

    assert response.status == status, response.body
    assert response.complete
    error = error_of(response)
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert SECRET not in response.body.decode("latin-1")
    assert "aaaa" not in error["message"]  # the parser's own message quotes the line
    request_id = response.header("x-request-id")
    assert request_id is not None and len(request_id) >= 32
    # Nothing after a refused head can be trusted: the connection is closed.
    assert rest == b""

    lines = wait_until(lambda: _request_events(gateway, request_id))
    assert len(lines) == 1
    (line,) = lines
    assert (line["route"], line["status"], line["outcome"]) == ("-", status, code)
    assert line["bytes_out"] == len(response.body)
    text = json.dumps(line)
    assert SECRET not in text
    assert "Bearer" not in text and "X-H1" not in text


def test_refusals_leave_no_traceback_or_secret_in_the_output(gateway: GatewayProcess) -> None:
    ids = []
    for data, _status, _code in CASES.values():
        response, _ = _send(gateway.port, data)
        ids.append(response.header("x-request-id"))
    wait_until(lambda: all(_request_events(gateway, i) for i in ids if i))
    output = gateway.raw_log()
    assert "Traceback" not in output
    assert SECRET not in output
    assert "aiohttp.server" not in output
    # Every line of the output is a JSON log line: nothing else reached stdout or stderr.
    for line in output.splitlines():
        assert line.startswith("{"), line[:200]


def test_refused_requests_are_counted(gateway: GatewayProcess) -> None:
    def refused_400() -> float:
        assert gateway.admin_url is not None
        with urllib.request.urlopen(gateway.admin_url + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            if line.startswith('aigw_requests_total{model="-",route="-",status="400"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = refused_400()
    _send(gateway.port, CASES["garbage_request_line"][0])
    wait_until(lambda: refused_400() == before + 1)


def test_valid_request_before_a_refused_one_on_the_same_connection(gateway: GatewayProcess) -> None:
    """Pipelined: the good request is answered, then the refusal, then the close."""
    good = b"GET /no/such/route HTTP/1.1\r\n" + HOST + b"\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(good)
        first = read_response(sock)
        sock.sendall(CASES["control_character_in_header"][0])
        second = read_response(sock)
        assert sock.recv(4096) == b""
    assert first.status == 404
    assert json.loads(first.body)["error"]["code"] == "route_not_found"
    assert second.status == 400
    assert json.loads(second.body)["error"]["code"] == "bad_request"


def test_half_sent_head_gets_json_408_and_one_log_line(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + AUTH)
        response = read_response(sock)
        assert sock.recv(4096) == b""
    assert response.status == 408
    assert error_of(response)["code"] == "request_timeout"
    request_id = response.header("x-request-id")
    assert request_id is not None
    (line,) = wait_until(lambda: _request_events(gateway, request_id))
    assert (line["route"], line["status"], line["outcome"]) == ("-", 408, "request_timeout")
    assert SECRET not in json.dumps(line)


# -- the Server header ------------------------------------------------------


def _server_headers(gateway: GatewayProcess) -> dict[str, str | None]:
    assert gateway.admin_url is not None
    relayed, _ = _send(gateway.port, post(chat_body(), headers="Connection: close\r\n"))
    not_found, _ = _send(
        gateway.port, b"GET /nowhere HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
    )
    refused, _ = _send(gateway.port, CASES["garbage_request_line"][0])
    assert (relayed.status, not_found.status, refused.status) == (200, 404, 400)
    with urllib.request.urlopen(gateway.admin_url + "/status", timeout=10) as answer:
        admin = answer.headers.get("Server")
    return {
        "relayed": relayed.header("server"),
        "not_found": not_found.header("server"),
        "refused": refused.header("server"),
        "admin": admin,
    }


def test_server_header_names_aigw_without_versions(gateway: GatewayProcess) -> None:
    # aiohttp's default is "Python/3.11 aiohttp/3.14.5": versions help only an
    # attacker. The upstream's own Server header is not relayed either.
    assert _server_headers(gateway) == {
        "relayed": "aigw",
        "not_found": "aigw",
        "refused": "aigw",
        "admin": "aigw",
    }
