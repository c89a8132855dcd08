"""The Responses API: ``POST /openai/responses`` (classic, api-version ≥
2025-03-01-preview) and ``POST /openai/v1/responses``, whole or as typed SSE events;
stored responses (``GET``/``DELETE …/responses/{id}``); and the model list."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from .call import Call
from .chat import random_id
from .payload import BadRequest, count_tokens, positive_int
from .playback import play_stream
from .responses_wire import (
    deleted_body,
    not_found_body,
    response_object,
    stream_error_event,
    stream_events,
)
from .wire import dumps, reply_tokens

__all__ = [
    "RESPONSES_SINCE",
    "StoredResponses",
    "create",
    "models_body",
    "responses_version_ok",
    "stored_response",
]

#: The first api-version of the classic API that knows Responses (notes/azure.md §2.1).
RESPONSES_SINCE: Final = "2025-03-01"
RESPONSES_VERSION_MESSAGE: Final = (
    "Azure OpenAI Responses API is enabled only for api-version 2025-03-01-preview and later"
)
# The service refuses smaller limits.
_MIN_OUTPUT_TOKENS: Final = 16


def responses_version_ok(api_version: str) -> bool:
    """Whether a classic (dated) *api-version* knows the Responses API."""
    return api_version[:10] >= RESPONSES_SINCE


class StoredResponses:
    """Responses created with ``store`` (the default), newest last, at most *limit*."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._stored: OrderedDict[str, bytes] = OrderedDict()

    def put(self, response_id: str, body: bytes) -> None:
        """Keep *body* under *response_id*, forgetting the oldest beyond the limit."""
        self._stored[response_id] = body
        while len(self._stored) > self._limit:
            self._stored.popitem(last=False)

    def get(self, response_id: str) -> bytes | None:
        """The stored body, or None."""
        return self._stored.get(response_id)

    def delete(self, response_id: str) -> bool:
        """Forget a response; False when it was not stored."""
        return self._stored.pop(response_id, None) is not None


async def create(call: Call, payload: Mapping[str, Any]) -> web.StreamResponse:
    """``POST …/responses``: the reply as a ``response`` object or a stream of events."""
    stored = call.state.stored_responses
    previous = payload.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or stored.get(previous) is None):
        raise BadRequest(
            f"Previous response with id '{previous}' not found.",
            "previous_response_id",
            "previous_response_not_found",
        )
    text_input = payload.get("input")
    if text_input is None and previous is None:
        raise BadRequest(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    limit = positive_int(payload, "max_output_tokens")
    if limit is not None and limit < _MIN_OUTPUT_TOKENS:
        raise BadRequest(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >="
            f" {_MIN_OUTPUT_TOKENS}, but got {limit} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    input_tokens = max(count_tokens(text_input) + count_tokens(payload.get("instructions")), 1)
    model = call.deployment.model
    count = call.state.config.tokens
    truncated = limit is not None and limit < count
    tokens = reply_tokens(model, limit if truncated and limit is not None else count)
    final = response_object(
        response_id=random_id("resp_", 48),
        item_id=random_id("msg_", 48),
        created_at=int(time.time()),
        model=model,
        payload=payload,
        tokens=tokens,
        input_tokens=input_tokens,
        truncated=truncated,
    )
    call.deployment.spend(call.headers, input_tokens + len(tokens))
    body = dumps(final)
    if payload.get("store") is not False:
        stored.put(final["id"], body)
    if call.record.stream:
        events, content = stream_events(final, tokens)
        return await play_stream(
            call, events, _same, content, done=None, error_event=stream_error_event
        )
    if call.latency_ms:
        await asyncio.sleep(call.latency_ms / 1000)
    return call.ok(body)


def _same(event: bytes) -> bytes:
    return event


def stored_response(stored: StoredResponses, method: str, response_id: str) -> tuple[int, bytes]:
    """``GET``/``DELETE …/responses/{id}``: (status, body)."""
    if method == "DELETE":
        if stored.delete(response_id):
            return 200, deleted_body(response_id)
        return 404, not_found_body(response_id)
    body = stored.get(response_id)
    return (200, body) if body is not None else (404, not_found_body(response_id))


def models_body(models: Mapping[str, str], created: int) -> bytes:
    """``GET /openai/models`` and ``/openai/v1/models``: the models behind the deployments."""
    data = [
        {
            "id": model,
            "object": "model",
            "created": created,
            "created_at": created,
            "owned_by": "system",
            "status": "succeeded",
            "lifecycle_status": "generally-available",
        }
        for model in sorted(set(models.values()))
    ]
    return dumps({"data": data, "object": "list"})
