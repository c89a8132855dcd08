"""The mock's aiohttp application: Azure data-plane routes and request recording (the
``/_mock/`` control API is `aigw.testing.azure_mock.control`)."""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import re
import socket
import string
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from http import HTTPStatus
from typing import Any, Final, Literal, Protocol
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDictProxy

from .config import MockConfig
from .control import add_control_routes
from .faults import Fault, FaultQueue
from .payload import BadRequest, parse_embeddings, parse_generation
from .wire import (
    API_VERSION_NOT_SUPPORTED,
    DEPLOYMENT_NOT_FOUND,
    DONE_EVENT,
    INVALID_BEARER,
    INVALID_JSON_MESSAGE,
    INVALID_KEY,
    JSON_CT,
    RESOURCE_NOT_FOUND,
    SSE_CT,
    Operation,
    StreamPlan,
    chat_body,
    completion_body,
    content_filter_body,
    embeddings_body,
    generic_error_body,
    operation_not_supported_body,
    rate_limit_body,
    server_error_body,
    stream_error_event,
    stream_plan,
)

__all__ = [
    "STATE_KEY",
    "ListenerControl",
    "MockState",
    "RequestRecord",
    "StreamOutcome",
    "build_app",
]

StreamOutcome = Literal["completed", "client_disconnected", "cut"]

# Matched against the raw (still percent-encoded) path so that "a%2Fb" stays one segment.
_API_PATH: Final = re.compile(
    r"/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)"
)
_OPERATIONS: Final[Mapping[str, Operation]] = {
    "chat/completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
}
_API_VERSION: Final = re.compile(r"\d{4}-\d{2}-\d{2}(?:-preview)?")
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_HSTS: Final = "max-age=31536000; includeSubDomains; preload"
# Defaults for stream faults when the test gives no ``after_events``: the first chunk, the
# role chunk and one content chunk, so clients have seen real content before it breaks.
_DEFAULT_BREAK_AFTER: Final = 3
_HANG_POLL_S: Final = 0.05
_UNPARSABLE: Final = object()


class RequestRecord:
    """One request as the mock saw it; rendered to JSON only when a test asks.

    Holding aiohttp's header and query proxies instead of copying them keeps recording
    almost free on the benchmark path.
    """

    __slots__ = (
        "_body",
        "_headers",
        "_query",
        "apim_request_id",
        "deployment",
        "ended_at",
        "fault",
        "method",
        "path",
        "seq",
        "started_at",
        "status",
        "stream",
        "stream_outcome",
    )

    def __init__(self, seq: int, request: web.Request, body: bytes) -> None:
        self.seq = seq
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.method = request.method
        self.path = request.rel_url.raw_path
        self._query: MultiDictProxy[str] = request.rel_url.query
        self._headers: CIMultiDictProxy[str] = request.headers
        self._body = body
        self.deployment: str | None = None
        self.stream = False
        self.status: int | None = None
        self.fault: str | None = None
        self.apim_request_id: str | None = None
        self.stream_outcome: StreamOutcome | None = None

    def client_gone(self) -> None:
        """Note that the client left before the mock finished answering."""
        if self.stream_outcome is None:
            self.stream_outcome = "client_disconnected"

    def to_json(self) -> dict[str, Any]:
        """The record as served by ``GET /_mock/requests``."""
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": _join(self._query.items()),
            "headers": _join((k.lower(), v) for k, v in self._headers.items()),
            "body": self._body.decode("utf-8", "replace"),
            "deployment": self.deployment,
            "stream": self.stream,
            "status": self.status,
            "fault": self.fault,
            "apim_request_id": self.apim_request_id,
            "stream_outcome": self.stream_outcome,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


def _join(items: Any) -> dict[str, str]:
    joined: dict[str, str] = {}
    for key, value in items:
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    return joined


class _Deployment:
    """A deployment's static response headers and its per-minute rate-limit window."""

    __slots__ = ("_requests", "_tokens", "_window", "headers", "model", "name", "operations")

    def __init__(self, name: str, model: str, config: MockConfig) -> None:
        self.name = name
        self.model = model
        self.operations = _operations_for(model) if config.enforce_operations else None
        self.headers: Mapping[str, str] = {
            "Content-Type": JSON_CT,
            "Cache-Control": "no-cache, must-revalidate",
            "access-control-allow-origin": "*",
            "Strict-Transport-Security": _HSTS,
            "x-content-type-options": "nosniff",
            "x-ms-region": config.region,
            "x-ms-deployment-name": name,
            "x-ms-rai-invoked": "true",
            "x-ratelimit-limit-requests": str(config.rate_limit_requests),
            "x-ratelimit-limit-tokens": str(config.rate_limit_tokens),
        }
        self._requests = config.rate_limit_requests
        self._tokens = config.rate_limit_tokens
        self._window = (0.0, 0, 0)

    def remaining(self, spend_tokens: int = 0, *, spend_request: bool = False) -> tuple[int, int]:
        """Remaining (requests, tokens) in the current minute, after spending the given amounts.

        Nothing is refused when a bucket runs dry: throttling is a fault tests ask for.
        """
        now = time.monotonic()
        start, requests, tokens = self._window
        if now - start >= 60.0:
            start, requests, tokens = now, 0, 0
        requests += spend_request
        tokens += spend_tokens
        self._window = (start, requests, tokens)
        return max(self._requests - requests, 0), max(self._tokens - tokens, 0)


def _operations_for(model: str) -> frozenset[Operation]:
    lowered = model.lower()
    if "embedding" in lowered:
        return frozenset({"embeddings"})
    if "instruct" in lowered or lowered.startswith(("davinci", "babbage")):
        return frozenset({"completions"})
    return frozenset({"chat"})


def _random_id(prefix: str) -> str:
    return prefix + "".join(random.choices(_ID_ALPHABET, k=29))


def _format_seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


class ListenerControl(Protocol):
    """What can stop and restart the mock's listening socket (:class:`MockServer` can)."""

    async def refuse_connections(
        self, for_s: float | None, *, spare: asyncio.BaseTransport | None = None
    ) -> None:
        """Close the listening socket and every connection but *spare*; reopen after *for_s*."""


class MockState:
    """Per-application state and request handlers of the mock."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        # Set by MockServer: a bare build_app() has no socket of its own to close.
        self.listener: ListenerControl | None = None
        self._verify_entra = _entra_verifier(config.entra_secret)
        self.faults = FaultQueue()
        self.records: deque[RequestRecord] = deque(maxlen=config.record_limit)
        self._deployments = {
            name: _Deployment(name, model, config) for name, model in config.deployments.items()
        }
        self._seq = 0
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def idle(self) -> asyncio.Event:
        """Set while no request is in flight."""
        return self._idle

    # ------------------------------------------------------------------ data plane

    async def api(self, request: web.Request) -> web.StreamResponse:
        """Every non-control request: the Azure OpenAI data plane."""
        body = await request.read()
        self._seq += 1
        record = RequestRecord(self._seq, request, body)
        self.records.append(record)
        self._inflight += 1
        self._idle.clear()
        try:
            return await self._serve(request, body, record)
        except asyncio.CancelledError:
            # With handler_cancellation the client leaving cancels us mid-sleep or mid-write.
            record.client_gone()
            raise
        finally:
            record.ended_at = time.time()
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    def _route(
        self, request: web.Request, record: RequestRecord
    ) -> web.Response | tuple[_Deployment, Operation]:
        """Front-door checks in Azure's order: path, api-version, key, version, deployment."""
        match = _API_PATH.fullmatch(record.path)
        if match is None or request.method != "POST":
            return self._bare_error(record, 404, RESOURCE_NOT_FOUND)
        name = unquote(match.group(1))
        record.deployment = name
        api_version = request.query.get("api-version")
        # Azure's front door answers a missing version before it even looks at the key.
        if not api_version:
            return self._bare_error(record, 404, RESOURCE_NOT_FOUND)
        auth_error = self._auth_error(request)
        if auth_error is not None:
            record.status = 401
            record.apim_request_id = str(uuid.uuid4())
            headers = {"apim-request-id": record.apim_request_id, "Content-Type": JSON_CT}
            return web.Response(status=401, body=auth_error, headers=headers)
        if not self._version_ok(api_version):
            headers = self._common_headers(record)
            headers["x-request-id"] = str(uuid.uuid4())
            record.status = 400
            return web.Response(status=400, body=API_VERSION_NOT_SUPPORTED, headers=headers)
        deployment = self._deployments.get(name)
        if deployment is None:
            return self._bare_error(record, 404, DEPLOYMENT_NOT_FOUND)
        return deployment, _OPERATIONS[match.group(2)]

    async def _serve(
        self, request: web.Request, body: bytes, record: RequestRecord
    ) -> web.StreamResponse:
        routed = self._route(request, record)
        if isinstance(routed, web.Response):
            return routed
        deployment, op = routed

        try:
            payload: object = json.loads(body)
        except ValueError:
            payload = _UNPARSABLE
        stream = op != "embeddings" and isinstance(payload, dict) and payload.get("stream") is True
        record.stream = stream
        latency_ms = self.config.latency_ms
        token_delay_ms = self.config.token_delay_ms
        fault = self.faults.take(deployment.name, stream)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "delay":
                if fault.latency_ms is not None:
                    latency_ms = fault.latency_ms
                if fault.token_delay_ms is not None:
                    token_delay_ms = fault.token_delay_ms
            elif fault.kind not in ("cut_stream", "eof_stream", "stream_error_event"):
                return await self._immediate_fault(request, record, deployment, op, fault)

        headers = self._deployment_headers(request, record, deployment)
        if fault is not None:
            headers.update(fault.headers)
        try:
            if not isinstance(payload, dict):
                message = (
                    INVALID_JSON_MESSAGE
                    if payload is _UNPARSABLE
                    else "Invalid type for request body: expected an object."
                )
                raise BadRequest(message, None, None)
            if deployment.operations is not None and op not in deployment.operations:
                record.status = 400
                body_out = operation_not_supported_body(op, deployment.model)
                return web.Response(status=400, body=body_out, headers=headers)
            if op == "embeddings":
                return await self._embeddings(record, deployment, payload, headers, latency_ms)
            return await self._generate(
                request, record, deployment, op, payload, headers, fault, latency_ms, token_delay_ms
            )
        except BadRequest as exc:
            record.status = 400
            headers["ms-azureml-model-error-reason"] = "model_error"
            headers["ms-azureml-model-error-statuscode"] = "400"
            return web.Response(status=400, body=exc.body, headers=headers)

    def _auth_error(self, request: web.Request) -> bytes | None:
        key = request.headers.get("api-key")
        if key is not None:
            ok = hmac.compare_digest(key.encode(), self.config.api_key.encode())
            return None if ok else INVALID_KEY
        authorization = request.headers.get("Authorization", "")
        if authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
            expected = self.config.bearer_token
            if expected is not None and hmac.compare_digest(token.encode(), expected.encode()):
                return None
            verify = self._verify_entra
            if verify is not None and verify(token, time.time()):
                return None
            return INVALID_BEARER
        return INVALID_KEY

    def _version_ok(self, api_version: str) -> bool:
        allowed = self.config.api_versions
        if allowed is not None:
            return api_version in allowed
        return _API_VERSION.fullmatch(api_version) is not None

    # ------------------------------------------------------------------ headers

    def _common_headers(self, record: RequestRecord) -> dict[str, str]:
        record.apim_request_id = str(uuid.uuid4())
        return {
            "apim-request-id": record.apim_request_id,
            "Content-Type": JSON_CT,
            "Strict-Transport-Security": _HSTS,
            "x-content-type-options": "nosniff",
            "x-ms-region": self.config.region,
        }

    def _bare_error(self, record: RequestRecord, status: int, body: bytes) -> web.Response:
        # Azure's 404s come from the front door: no x-request-id, no deployment headers.
        record.status = status
        return web.Response(status=status, body=body, headers=self._common_headers(record))

    def _deployment_headers(
        self,
        request: web.Request,
        record: RequestRecord,
        deployment: _Deployment,
    ) -> dict[str, str]:
        apim = record.apim_request_id = str(uuid.uuid4())
        headers = dict(deployment.headers)
        headers["apim-request-id"] = apim
        headers["x-request-id"] = str(uuid.uuid4())
        headers["x-ms-client-request-id"] = request.headers.get("x-ms-client-request-id", apim)
        requests_left, tokens_left = deployment.remaining()
        headers["x-ratelimit-remaining-requests"] = str(requests_left)
        headers["x-ratelimit-remaining-tokens"] = str(tokens_left)
        return headers

    # ------------------------------------------------------------------ faults

    async def _immediate_fault(
        self,
        request: web.Request,
        record: RequestRecord,
        deployment: _Deployment,
        op: Operation,
        fault: Fault,
    ) -> web.StreamResponse:
        if fault.kind == "hang":
            # Polling also notices a client that left when handler_cancellation is off.
            # aiohttp exposes no "peer closed" event, hence the poll.
            while (transport := request.transport) is not None and not transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(_HANG_POLL_S)
            record.client_gone()
            return web.Response()
        if fault.kind == "close":
            _drop_connection(request, rst=fault.rst)
            return web.Response()

        headers = self._deployment_headers(request, record, deployment)
        status = 200
        body = fault.body
        if fault.kind == "status":
            assert fault.status is not None
            status = fault.status
            if body is None:
                body = self._status_body(status, op, request, headers, fault)
            if fault.content_type is not None:
                headers["Content-Type"] = fault.content_type
            if status == 429:
                headers["x-ratelimit-remaining-requests"] = "0"
                headers["x-ratelimit-remaining-tokens"] = "0"
            if fault.retry_after is not None:
                headers["retry-after"] = _format_seconds(fault.retry_after)
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = _format_seconds(fault.retry_after_ms)
        elif fault.kind == "content_filter":
            status, body = 400, content_filter_body()
        elif fault.kind == "redirect":
            assert fault.status is not None
            status, body = fault.status, b""
            headers["Location"] = fault.location or _other_origin(request)
        elif fault.kind == "malformed":
            if record.stream:
                headers["Content-Type"] = SSE_CT
                body = body if body is not None else b'data: {"choices": [\n\n'
            else:
                body = body if body is not None else b'{"choices": [{"index": 0, "message": '
        headers.update(fault.headers)
        record.status = status
        return web.Response(status=status, body=body, headers=headers)

    @staticmethod
    def _status_body(
        status: int, op: Operation, request: web.Request, headers: Mapping[str, str], fault: Fault
    ) -> bytes:
        if status == 429:
            api_version = request.query.get("api-version", "")
            return rate_limit_body(op, api_version, fault.retry_after)
        if status == 500:
            return server_error_body(headers["x-request-id"])
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        return generic_error_body(status, reason)

    # ------------------------------------------------------------------ operations

    async def _embeddings(
        self,
        record: RequestRecord,
        deployment: _Deployment,
        payload: Mapping[str, Any],
        headers: dict[str, str],
        latency_ms: float,
    ) -> web.Response:
        texts, prompt_tokens, dimensions, b64 = parse_embeddings(payload)
        dimensions = dimensions or self.config.embedding_dimensions
        self._spend(deployment, headers, prompt_tokens)
        body = embeddings_body(deployment.model, texts, dimensions, b64, prompt_tokens)
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        record.status = 200
        return web.Response(body=body, headers=headers)

    def _spend(self, deployment: _Deployment, headers: dict[str, str], tokens: int) -> None:
        requests_left, tokens_left = deployment.remaining(tokens, spend_request=True)
        headers["x-ratelimit-remaining-requests"] = str(requests_left)
        headers["x-ratelimit-remaining-tokens"] = str(tokens_left)

    async def _generate(
        self,
        request: web.Request,
        record: RequestRecord,
        deployment: _Deployment,
        op: Operation,
        payload: Mapping[str, Any],
        headers: dict[str, str],
        fault: Fault | None,
        latency_ms: float,
        token_delay_ms: float,
    ) -> web.StreamResponse:
        prompt_tokens, limit, include_usage = parse_generation(
            op, payload, stream=record.stream, api_version=request.query.get("api-version", "")
        )
        tokens = self.config.tokens
        finish = "stop"
        if limit is not None and limit < tokens:
            tokens, finish = limit, "length"
        self._spend(deployment, headers, prompt_tokens + tokens)
        created = str(int(time.time())).encode()
        response_id = _random_id("chatcmpl-" if op == "chat" else "cmpl-").encode()
        model = deployment.model
        if record.stream:
            plan = stream_plan(op, model, prompt_tokens, tokens, finish, include_usage)
            return await self._stream(
                request,
                record,
                plan,
                (created, response_id),
                headers,
                fault,
                latency_ms,
                token_delay_ms,
            )
        template = (chat_body if op == "chat" else completion_body)(
            model, prompt_tokens, tokens, finish
        )
        body = template.render(created, response_id)
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        record.status = 200
        return web.Response(body=body, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        record: RequestRecord,
        plan: StreamPlan,
        ids: tuple[bytes, bytes],
        headers: dict[str, str],
        fault: Fault | None,
        latency_ms: float,
        token_delay_ms: float,
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else None
        after = fault.after_events if fault is not None else None
        events = plan.events
        if kind == "cut_stream":
            limit = min(_DEFAULT_BREAK_AFTER if after is None else after, len(events) + 1)
        elif kind == "eof_stream":
            limit = len(events) if after is None else min(after, len(events))
        elif kind == "stream_error_event":
            limit = min(_DEFAULT_BREAK_AFTER if after is None else after, len(events))
        else:
            limit = len(events) + 1

        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        headers["Content-Type"] = SSE_CT
        headers["x-accel-buffering"] = "no"
        response = web.StreamResponse(status=200, headers=headers)
        response.enable_chunked_encoding()
        record.status = 200
        delay = token_delay_ms / 1000
        content = plan.content
        try:
            await response.prepare(request)
            for index in range(limit):
                if index == len(events):
                    await response.write(DONE_EVENT)
                    break
                if delay and index and content[index] and content[index - 1]:
                    await asyncio.sleep(delay)
                await response.write(events[index].render(*ids))
            if kind == "stream_error_event":
                assert fault is not None
                await response.write(stream_error_event(fault.error))
            if kind == "cut_stream":
                assert fault is not None
                record.stream_outcome = "cut"
                await _wait_flushed(request)
                _drop_connection(request, rst=fault.rst)
                return response
            await response.write_eof()
        except ConnectionError:
            # Writing to a client that left; re-raising would only make aiohttp log it.
            record.client_gone()
            return response
        record.stream_outcome = "completed"
        return response


async def _wait_flushed(request: web.Request) -> None:
    # An abort discards unsent bytes, yet the events before the cut must reach the client;
    # asyncio transports have no "buffer empty" event, hence the poll.
    transport = request.transport
    while transport is not None and transport.get_write_buffer_size():
        if transport.is_closing():
            return
        await asyncio.sleep(0.001)


def _drop_connection(request: web.Request, *, rst: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if rst:
        # Zero linger turns close() into a TCP RST instead of a FIN.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _other_origin(request: web.Request) -> str:
    # localhost and 127.0.0.1 are different origins that both reach this mock, so a
    # client that follows the redirect shows up in the recorded requests.
    host = "127.0.0.1" if request.url.host == "localhost" else "localhost"
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if sockname else request.url.port
    return f"http://{host}:{port}{request.rel_url.raw_path_qs}"


def _entra_verifier(secret: str | None) -> Callable[[str, float], bool] | None:
    """``verify(token, now)`` for tokens the local Entra endpoint issued with *secret*."""
    if secret is None:
        return None
    # Imported only when asked: the token endpoint is a test tool of its own.
    from aigw.testing.entra import verify_token

    return partial(_verify_with, verify_token, secret)


def _verify_with(
    verify_token: Callable[[str, str, float], bool], secret: str, token: str, now: float
) -> bool:
    return verify_token(token, secret, now)


STATE_KEY: Final = web.AppKey("azure_mock_state", MockState)


def build_app(config: MockConfig | None = None) -> web.Application:
    """Build the mock as an aiohttp application (run it with ``handler_cancellation=True``).

    ``aiohttp``'s test server already enables handler cancellation, which the mock uses to
    record ``client_disconnected`` as soon as a client leaves.
    """
    state = MockState(config or MockConfig())
    # Real prompts with images exceed aiohttp's 1 MiB default.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    add_control_routes(app, state)
    app.router.add_route("*", "/{tail:.*}", state.api)
    return app
