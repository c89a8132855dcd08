"""The mock's aiohttp application: request recording, the deployment lookup (path, body
``model``, form field or query), faults, and dispatch of each operation to its module
(`chat`, `responses`, `images`, `audio`, `realtime`); the checks before the deployment
are `front_door`'s. The ``/_mock/`` control API is
`aigw.testing.azure_mock.control`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from aiohttp import web

from . import audio, chat, images, realtime, responses
from .call import Call, Form
from .config import MockConfig
from .control import add_control_routes
from .deployments import Deployment
from .faults import FaultQueue
from .forms import read_form
from .front_door import FrontDoor
from .payload import BadRequest
from .playback import STREAM_KINDS, immediate_fault
from .records import RequestRecord
from .routes import Endpoint, OpRoute, classify
from .settings import MockSettings
from .wire import (
    DEPLOYMENT_NOT_FOUND,
    INVALID_JSON_MESSAGE,
    RESOURCE_NOT_FOUND,
    Operation,
    operation_not_supported_body,
)

__all__ = [
    "STATE_KEY",
    "ListenerControl",
    "MockState",
    "RequestRecord",
    "build_app",
]

Handler = Callable[[Call, Mapping[str, Any]], Awaitable[web.StreamResponse]]

_HANDLERS: Final[Mapping[Operation, Handler]] = {
    "chat": chat.generate,
    "completions": chat.generate,
    "embeddings": chat.embeddings,
    "responses": responses.create,
    "images": images.generate,
    "speech": audio.speech,
    "image_edits": images.edit,
    "transcriptions": audio.transcribe,
    "translations": audio.transcribe,
}
_STREAMING: Final[frozenset[Operation]] = frozenset({"chat", "completions", "responses"})
_UNPARSABLE: Final = object()
# OpenAI's words when a model-in-body call has no model.
_MISSING_MODEL: Final = "you must provide a model parameter"


class ListenerControl(Protocol):
    """What can stop and restart the mock's listening socket (:class:`MockServer` can)."""

    async def refuse_connections(
        self, for_s: float | None, *, spare: asyncio.BaseTransport | None = None
    ) -> None:
        """Close the listening socket and every connection but *spare*; reopen after *for_s*."""


class MockState:
    """Per-application state and the data-plane entry point of the mock."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        # Set by MockServer: a bare build_app() has no socket of its own to close.
        self.listener: ListenerControl | None = None
        self.settings = MockSettings()
        self.stored_responses = responses.StoredResponses()
        self.open_sessions: set[realtime.RealtimeSession] = set()
        self.front_door = FrontDoor(config)
        self.faults = FaultQueue()
        self.records: deque[RequestRecord] = deque(maxlen=config.record_limit)
        self._deployments = {
            name: Deployment(name, model, config) for name, model in config.deployments.items()
        }
        self._started = int(time.time())
        self._seq = 0
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def idle(self) -> asyncio.Event:
        """Set while no request is in flight."""
        return self._idle

    @property
    def deployments(self) -> Mapping[str, Deployment]:
        """Deployment name -> deployment."""
        return self._deployments

    # ------------------------------------------------------------------ data plane

    async def api(self, request: web.Request) -> web.StreamResponse:
        """Every non-control request: the Azure OpenAI data plane."""
        route = classify(request.method, request.rel_url.raw_path)
        # Multipart bodies are streamed by their handler (never held whole) and a
        # WebSocket upgrade has none.
        streamed = isinstance(route, OpRoute) and route.body != "json"
        body = b"" if streamed else await request.read()
        self._seq += 1
        record = RequestRecord(self._seq, request, body)
        self.records.append(record)
        self._inflight += 1
        self._idle.clear()
        try:
            return await self._serve(request, route, body, record)
        except asyncio.CancelledError:
            # With handler_cancellation the client leaving cancels us mid-sleep or mid-write.
            record.client_gone()
            raise
        finally:
            record.ended_at = time.time()
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _serve(
        self,
        request: web.Request,
        route: OpRoute | Endpoint | None,
        body: bytes,
        record: RequestRecord,
    ) -> web.StreamResponse:
        if route is None:
            return self.front_door.bare_error(record, 404, RESOURCE_NOT_FOUND)
        rejected = self.front_door.check(request, route, record)
        if rejected is not None:
            return rejected
        if isinstance(route, Endpoint):
            return await self._endpoint(request, route, record)
        record.operation = route.op
        if route.op == "realtime":
            return await self._realtime(request, route, record)
        read = await self._read(request, route, body, record)
        if isinstance(read, web.Response):
            return read
        return await self._dispatch(request, record, route, *read)

    async def _realtime(
        self, request: web.Request, route: OpRoute, record: RequestRecord
    ) -> web.StreamResponse:
        """A realtime WebSocket: its deployment is in the query; faults play as for a
        stream (``cut_stream``: the mock vanishes after ``after_events`` server events)."""
        assert route.query_key is not None
        name = request.query.get(route.query_key)
        if not name:
            return self.front_door.bare_error(record, 404, RESOURCE_NOT_FOUND)
        record.deployment = name
        deployment = self._deployments.get(name)
        if deployment is None:
            return self.front_door.bare_error(record, 404, DEPLOYMENT_NOT_FOUND)
        record.stream = True
        call = self._call(request, record, deployment, route, True)
        fault = call.fault
        if fault is not None and fault.kind not in STREAM_KINDS | {"delay"}:
            return await immediate_fault(call, fault)
        if deployment.operations is not None and "realtime" not in deployment.operations:
            record.status = 400
            body = operation_not_supported_body("realtime", deployment.model)
            return web.Response(status=400, body=body, headers=call.headers)
        return await realtime.serve(call)

    async def _read(
        self, request: web.Request, route: OpRoute, body: bytes, record: RequestRecord
    ) -> web.Response | tuple[Deployment, object, Form | None]:
        """The call's deployment, its payload (the JSON body or the form's text fields)
        and form; or the answer to a request that names no known deployment."""
        form: Form | None = None
        if route.body == "multipart":
            if route.deployment is not None and route.deployment not in self._deployments:
                # Azure answers an unknown deployment before reading the upload.
                record.deployment = route.deployment
                return self.front_door.bare_error(record, 404, DEPLOYMENT_NOT_FOUND)
            try:
                form = await read_form(request)
            except BadRequest as exc:
                return self.front_door.model_error(record, str(exc), None)
            record.form = form.fields
            record.file_bytes = form.file_bytes
            record.body_size = request.content.total_bytes
            payload: object = dict(form.fields)
        else:
            payload = _parse_json(body)
        name = route.deployment
        if name is None:
            if not isinstance(payload, dict):
                return self.front_door.model_error(record, _payload_error(payload), None)
            name = payload.get("model")
            if not isinstance(name, str) or not name:
                return self.front_door.model_error(record, _MISSING_MODEL, None)
        record.deployment = name
        deployment = self._deployments.get(name)
        if deployment is None:
            return self.front_door.bare_error(record, 404, DEPLOYMENT_NOT_FOUND)
        return deployment, payload, form

    async def _dispatch(
        self,
        request: web.Request,
        record: RequestRecord,
        route: OpRoute,
        deployment: Deployment,
        payload: object,
        form: Form | None,
    ) -> web.StreamResponse:
        """Play the call's fault, or check its body and hand it to its operation."""
        stream = (
            route.op in _STREAMING and isinstance(payload, dict) and payload.get("stream") is True
        )
        record.stream = stream
        call = self._call(request, record, deployment, route, stream)
        call.form = form
        if call.fault is not None and call.fault.kind not in STREAM_KINDS | {"delay"}:
            return await immediate_fault(call, call.fault)
        try:
            if not isinstance(payload, dict):
                raise BadRequest(_payload_error(payload), None, None)
            if deployment.operations is not None and route.op not in deployment.operations:
                record.status = 400
                body_out = operation_not_supported_body(route.op, deployment.model)
                return web.Response(status=400, body=body_out, headers=call.headers)
            return await _HANDLERS[route.op](call, payload)
        except BadRequest as exc:
            record.status = 400
            call.headers["ms-azureml-model-error-reason"] = "model_error"
            call.headers["ms-azureml-model-error-statuscode"] = "400"
            return web.Response(status=400, body=exc.body, headers=call.headers)

    def _call(
        self,
        request: web.Request,
        record: RequestRecord,
        deployment: Deployment,
        route: OpRoute,
        stream: bool,
    ) -> Call:
        """The call's response headers and the fault it consumes."""
        latency_ms = self.config.latency_ms
        token_delay_ms = self.config.token_delay_ms
        fault = self.faults.take(deployment.name, stream)
        headers = self.deployment_headers(request, record, deployment)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "delay":
                if fault.latency_ms is not None:
                    latency_ms = fault.latency_ms
                if fault.token_delay_ms is not None:
                    token_delay_ms = fault.token_delay_ms
            headers.update(fault.headers)
        return Call(
            state=self,
            request=request,
            record=record,
            deployment=deployment,
            op=route.op,
            style=route.style,
            headers=headers,
            fault=fault,
            latency_ms=latency_ms,
            token_delay_ms=token_delay_ms,
        )

    async def _endpoint(
        self, request: web.Request, route: Endpoint, record: RequestRecord
    ) -> web.StreamResponse:
        if route.response_id is None:
            record.status = 200
            body = responses.models_body(self.config.deployments, self._started)
        else:
            status, body = responses.stored_response(
                self.stored_responses, request.method, route.response_id
            )
            record.status = status
        headers = self.front_door.common_headers(record)
        headers["x-request-id"] = str(uuid.uuid4())
        return web.Response(status=record.status, body=body, headers=headers)

    def deployment_headers(
        self, request: web.Request, record: RequestRecord, deployment: Deployment
    ) -> dict[str, str]:
        """Headers of an answer from *deployment*, with fresh request ids."""
        apim = record.apim_request_id = str(uuid.uuid4())
        headers = dict(deployment.headers)
        headers["apim-request-id"] = apim
        headers["x-request-id"] = str(uuid.uuid4())
        headers["x-ms-client-request-id"] = request.headers.get("x-ms-client-request-id", apim)
        requests_left, tokens_left = deployment.remaining()
        headers["x-ratelimit-remaining-requests"] = str(requests_left)
        headers["x-ratelimit-remaining-tokens"] = str(tokens_left)
        return headers


def _parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return _UNPARSABLE


def _payload_error(payload: object) -> str:
    if payload is _UNPARSABLE:
        return INVALID_JSON_MESSAGE
    return "Invalid type for request body: expected an object."


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
