"""Chat completions, legacy completions and embeddings: JSON bodies and data-only SSE
streams ending in ``data: [DONE]``."""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, Final

from aiohttp import web

from .call import Call
from .payload import parse_embeddings, parse_generation
from .playback import play_stream
from .wire import (
    DONE_EVENT,
    Template,
    chat_body,
    completion_body,
    embeddings_body,
    stream_error_event,
    stream_plan,
)

__all__ = ["embeddings", "generate", "random_id"]

_ID_ALPHABET: Final = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 29) -> str:
    """An Azure-looking id: *prefix* and *length* letters and digits."""
    return prefix + "".join(random.choices(_ID_ALPHABET, k=length))


async def embeddings(call: Call, payload: Mapping[str, Any]) -> web.Response:
    """``/embeddings``: one vector per input."""
    texts, prompt_tokens, dimensions, b64 = parse_embeddings(payload)
    dimensions = dimensions or call.state.config.embedding_dimensions
    deployment = call.deployment
    deployment.spend(call.headers, prompt_tokens)
    body = embeddings_body(deployment.model, texts, dimensions, b64, prompt_tokens)
    if call.latency_ms:
        await asyncio.sleep(call.latency_ms / 1000)
    return call.ok(body)


async def generate(call: Call, payload: Mapping[str, Any]) -> web.StreamResponse:
    """``/chat/completions`` and ``/completions``, whole or streamed."""
    record = call.record
    prompt_tokens, limit, include_usage = parse_generation(
        call.op, payload, stream=record.stream, api_version=call.api_version
    )
    tokens = call.state.config.tokens
    finish = "stop"
    if limit is not None and limit < tokens:
        tokens, finish = limit, "length"
    call.deployment.spend(call.headers, prompt_tokens + tokens)
    created = str(int(time.time())).encode()
    response_id = random_id("chatcmpl-" if call.op == "chat" else "cmpl-").encode()
    model = call.deployment.model
    if record.stream:
        plan = stream_plan(call.op, model, prompt_tokens, tokens, finish, include_usage)
        return await play_stream(
            call,
            plan.events,
            partial(_render, created, response_id),
            plan.content,
            done=DONE_EVENT,
            error_event=_error_event,
        )
    template = (chat_body if call.op == "chat" else completion_body)(
        model, prompt_tokens, tokens, finish
    )
    body = template.render(created, response_id)
    if call.latency_ms:
        await asyncio.sleep(call.latency_ms / 1000)
    return call.ok(body)


def _render(created: bytes, response_id: bytes, template: Template) -> bytes:
    return template.render(created, response_id)


def _error_event(error: Mapping[str, Any] | None, sent: int) -> bytes:
    return stream_error_event(error)
