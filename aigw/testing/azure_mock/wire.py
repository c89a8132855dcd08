"""Byte-level Azure OpenAI wire formats: error bodies, response bodies, SSE events.

Bodies reproduce captured Azure responses (the project's Azure notes, sections 2.4-2.7):
success bodies have alphabetically ordered keys, but the nested ``prompt_filter_results``
items keep Azure's ``prompt_index``-first order, so nothing here uses ``sort_keys``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

__all__ = [
    "API_VERSION_NOT_SUPPORTED",
    "DEPLOYMENT_NOT_FOUND",
    "DONE_EVENT",
    "INVALID_BEARER",
    "INVALID_JSON_MESSAGE",
    "INVALID_KEY",
    "JSON_CT",
    "RESOURCE_NOT_FOUND",
    "SSE_CT",
    "Operation",
    "StreamPlan",
    "Template",
    "chat_body",
    "completion_body",
    "content_filter_body",
    "dumps",
    "embeddings_body",
    "fingerprint",
    "generic_error_body",
    "model_error_body",
    "operation_not_supported_body",
    "rate_limit_body",
    "reply_tokens",
    "server_error_body",
    "stream_error_event",
    "stream_plan",
]

Operation = Literal[
    "chat",
    "completions",
    "embeddings",
    "responses",
    "images",
    "image_edits",
    "speech",
    "transcriptions",
    "translations",
    "realtime",
]

JSON_CT: Final = "application/json; charset=utf-8"
SSE_CT: Final = "text/event-stream; charset=utf-8"

# Verbatim texts captured from Azure; the odd space in RESOURCE_NOT_FOUND is real.
RESOURCE_NOT_FOUND: Final = b'{"error":{"code":"404","message": "Resource not found"}}'
DEPLOYMENT_NOT_FOUND: Final = (
    b'{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource'
    b" does not exist. If you created the deployment within the last 5 minutes, please wait"
    b' a moment and try again."}}'
)
API_VERSION_NOT_SUPPORTED: Final = (
    b'{"error":{"code":"BadRequest","message":"API version not supported"}}'
)
INVALID_KEY: Final = (
    b'{"error":{"code":"401","message":"Access denied due to invalid subscription key or'
    b" wrong API endpoint. Make sure to provide a valid key for an active subscription and"
    b' use a correct regional API endpoint for your resource."}}'
)
INVALID_BEARER: Final = (
    b'{"statusCode": 401, "message": "Unauthorized. Access token is missing, invalid,'
    b' audience is incorrect (https://cognitiveservices.azure.com), or have expired."}'
)
INVALID_JSON_MESSAGE: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't"
    " using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was"
    " sent was not valid JSON. If you have trouble figuring out how to fix this, please"
    " contact us through our help center at help.openai.com.)"
)

_SAFE: Final = {"filtered": False, "severity": "safe"}
_NOT_DETECTED: Final = {"filtered": False, "detected": False}
PROMPT_FILTER_RESULTS: Final = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            "hate": _SAFE,
            "jailbreak": _NOT_DETECTED,
            "self_harm": _SAFE,
            "sexual": _SAFE,
            "violence": _SAFE,
        },
    }
]
# Non-stream captures carry the protected-material checks; stream chunks only the four.
_CHOICE_FILTER_RESULTS: Final = {
    "hate": _SAFE,
    "protected_material_code": _NOT_DETECTED,
    "protected_material_text": _NOT_DETECTED,
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
_CHUNK_FILTER_RESULTS: Final = {
    "hate": _SAFE,
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}

_OPERATION_ID: Final[dict[Operation, str]] = {
    "chat": "ChatCompletions_Create",
    "completions": "Completions_Create",
    "embeddings": "Embeddings_Create",
    "responses": "Responses_Create",
    "images": "ImageGenerations_Create",
    "image_edits": "ImageEdits_Create",
    "speech": "AudioSpeech_Create",
    "transcriptions": "Transcriptions_Create",
    "translations": "Translations_Create",
    "realtime": "Realtime_Connect",
}
_OPERATION_NAME: Final[dict[Operation, str]] = {
    "chat": "chatCompletion",
    "completions": "completion",
    "embeddings": "embeddings",
    "responses": "responses",
    "images": "imageGenerations",
    "image_edits": "imageEdits",
    "speech": "audioSpeech",
    "transcriptions": "audioTranscription",
    "translations": "audioTranslation",
    "realtime": "realtime",
}

# JSON strings that mark where per-request values go in a cached template.
_CREATED_HOLE: Final = "\u0001created\u0001"
_ID_HOLE: Final = "\u0001id\u0001"


def dumps(obj: object) -> bytes:
    """Compact JSON, as Azure sends it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _pretty(obj: object) -> bytes:
    # Errors that come from the model container are pretty-printed with a trailing newline.
    return (json.dumps(obj, indent=2) + "\n").encode()


class Template:
    """Serialized JSON with holes for the per-request ``created`` and ``id`` values.

    Serializing once and splicing two values in is what keeps the benchmark happy path
    cheap: rendering is a single ``bytes.join``.
    """

    __slots__ = ("_parts",)

    def __init__(self, raw: bytes) -> None:
        created_hole = dumps(_CREATED_HOLE)
        id_hole = dumps(_ID_HOLE)[1:-1]
        if created_hole not in raw:
            self._parts: tuple[bytes, ...] = (raw,)
            return
        head, rest = raw.split(created_hole)
        middle, tail = rest.split(id_hole)
        self._parts = (head, middle, tail)

    def render(self, created: bytes, response_id: bytes) -> bytes:
        """Return the bytes with ``created`` (a JSON number) and ``response_id`` spliced in."""
        parts = self._parts
        if len(parts) == 1:
            return parts[0]
        return b"".join((parts[0], created, parts[1], response_id, parts[2]))


@lru_cache(maxsize=64)
def fingerprint(model: str) -> str:
    """A stable ``system_fingerprint`` per model, shaped like Azure's ``fp_<10 hex>``."""
    return "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10]


_FILLER: Final = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog.")


@lru_cache(maxsize=256)
def reply_tokens(model: str, count: int) -> tuple[str, ...]:
    """The deterministic reply, one string per token: ``I am <model>.`` then filler words."""
    head = ("I", " am", f" {model}", ".")
    tokens = list(head[:count])
    while len(tokens) < count:
        tokens.append(_FILLER[(len(tokens) - len(head)) % len(_FILLER)])
    return tuple(tokens)


def _usage(prompt_tokens: int, completion_tokens: int, details: bool) -> dict[str, Any]:
    if not details:
        return {
            "completion_tokens": completion_tokens,
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    return {
        "completion_tokens": completion_tokens,
        "completion_tokens_details": {
            "accepted_prediction_tokens": 0,
            "audio_tokens": 0,
            "reasoning_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


@lru_cache(maxsize=4096)
def chat_body(model: str, prompt_tokens: int, completion_tokens: int, finish: str) -> Template:
    """Non-stream ``chat.completion`` body."""
    content = "".join(reply_tokens(model, completion_tokens))
    body = {
        "choices": [
            {
                "content_filter_results": _CHOICE_FILTER_RESULTS,
                "finish_reason": finish,
                "index": 0,
                "logprobs": None,
                "message": {
                    "annotations": [],
                    "content": content,
                    "refusal": None,
                    "role": "assistant",
                },
            }
        ],
        "created": _CREATED_HOLE,
        "id": _ID_HOLE,
        "model": model,
        "object": "chat.completion",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
        "service_tier": "default",
        "system_fingerprint": fingerprint(model),
        "usage": _usage(prompt_tokens, completion_tokens, details=True),
    }
    return Template(dumps(body))


@lru_cache(maxsize=4096)
def completion_body(
    model: str, prompt_tokens: int, completion_tokens: int, finish: str
) -> Template:
    """Non-stream legacy ``text_completion`` body."""
    body = {
        "choices": [
            {
                "content_filter_results": _CHOICE_FILTER_RESULTS,
                "finish_reason": finish,
                "index": 0,
                "logprobs": None,
                "text": "".join(reply_tokens(model, completion_tokens)),
            }
        ],
        "created": _CREATED_HOLE,
        "id": _ID_HOLE,
        "model": model,
        "object": "text_completion",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
        "usage": _usage(prompt_tokens, completion_tokens, details=False),
    }
    return Template(dumps(body))


def _vector(text: str, dimensions: int) -> list[float]:
    # Derived from the input so equal inputs embed equally; unit length like real ones.
    raw = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 7) for v in values]


def embeddings_body(
    model: str, texts: Sequence[str], dimensions: int, b64: bool, prompt_tokens: int
) -> bytes:
    """``list`` of embeddings, one per input, as floats or base64 little-endian float32."""
    data = []
    for index, text in enumerate(texts):
        vector = _vector(text, dimensions)
        embedding: list[float] | str = vector
        if b64:
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"embedding": embedding, "index": index, "object": "embedding"})
    return dumps(
        {
            "data": data,
            "model": model,
            "object": "list",
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """All SSE events of one stream shape, in order, with the indices of content events."""

    events: tuple[Template, ...]
    #: ``content[i]`` is true when ``events[i]`` carries a generated token; token
    #: delays are only inserted between two such events.
    content: tuple[bool, ...]


def _sse(obj: object) -> Template:
    return Template(b"data: " + dumps(obj) + b"\n\n")


DONE_EVENT: Final = b"data: [DONE]\n\n"


@lru_cache(maxsize=1024)
def stream_plan(
    op: Operation,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    finish: str,
    include_usage: bool,
) -> StreamPlan:
    """Events of a chat or completions stream, without the final ``data: [DONE]``."""
    chat = op == "chat"
    envelope: dict[str, Any] = {
        "created": _CREATED_HOLE,
        "id": _ID_HOLE,
        "model": model,
        "object": "chat.completion.chunk" if chat else "text_completion",
    }
    if chat:
        envelope["system_fingerprint"] = fingerprint(model)
    if include_usage:
        envelope["usage"] = None

    def chunk(choice: dict[str, Any]) -> Template:
        return _sse({"choices": [choice], **envelope})

    first: dict[str, Any] = {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
    }
    if include_usage:
        first["usage"] = None
    events = [_sse(first)]
    content = [False]
    if chat:
        events.append(
            chunk(
                {
                    "content_filter_results": {},
                    "delta": {"content": "", "refusal": None, "role": "assistant"},
                    "finish_reason": None,
                    "index": 0,
                    "logprobs": None,
                }
            )
        )
        content.append(False)
    for token in reply_tokens(model, completion_tokens):
        choice: dict[str, Any] = {
            "content_filter_results": _CHUNK_FILTER_RESULTS,
            "finish_reason": None,
            "index": 0,
            "logprobs": None,
        }
        if chat:
            choice["delta"] = {"content": token}
        else:
            choice["text"] = token
        events.append(chunk(dict(sorted(choice.items()))))
        content.append(True)
    last: dict[str, Any] = {
        "content_filter_results": {},
        "finish_reason": finish,
        "index": 0,
        "logprobs": None,
    }
    if chat:
        last["delta"] = {}
    else:
        last["text"] = ""
    events.append(chunk(dict(sorted(last.items()))))
    content.append(False)
    if include_usage:
        usage = {
            **envelope,
            "choices": [],
            "usage": _usage(prompt_tokens, completion_tokens, details=chat),
        }
        events.append(_sse(dict(sorted(usage.items()))))
        content.append(False)
    return StreamPlan(tuple(events), tuple(content))


def stream_error_event(error: Mapping[str, Any] | None) -> bytes:
    """A mid-stream ``data: {"error": ...}`` event; the SDK raises ``APIError`` on it."""
    if error is None:
        error = {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    return b"data: " + dumps({"error": error}) + b"\n\n"


def model_error_body(message: str, param: str | None, code: str | None) -> bytes:
    """OpenAI-style ``invalid_request_error``, pretty-printed as the model container sends it."""
    return _pretty(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": code,
            }
        }
    )


def operation_not_supported_body(op: Operation, model: str) -> bytes:
    """Azure's 400 for an operation the deployment's model cannot do."""
    message = (
        f"The {_OPERATION_NAME[op]} operation does not work with the specified model, {model}."
        " Please choose different model and try again. You can learn more about which models"
        " can be used with each operation here: https://go.microsoft.com/fwlink/?linkid=2197993."
    )
    return dumps({"error": {"code": "OperationNotSupported", "message": message}})


def rate_limit_body(op: Operation, api_version: str, retry_after: float | None) -> bytes:
    """Azure's standard-tier 429 body."""
    if retry_after is None:
        return dumps({"error": {"code": "429", "message": "Rate limit is exceeded."}})
    message = (
        f"Requests to the {_OPERATION_ID[op]} Operation under Azure OpenAI API version"
        f" {api_version} have exceeded token rate limit of your current AIServices S0 pricing"
        f" tier. Please retry after {math.ceil(retry_after)} seconds. Please contact Azure"
        " support service if you would like to further increase the default rate limit."
    )
    return dumps({"error": {"code": "429", "message": message}})


def server_error_body(request_id: str) -> bytes:
    """Azure's 500 ``server_error`` body, which quotes the request id."""
    message = (
        "The server had an error processing your request. Sorry about that! You can retry your"
        " request, or contact us through an Azure support request at:"
        " https://go.microsoft.com/fwlink/?linkid=2213926 if you keep seeing this error."
        f" (Please include the request ID {request_id} in your email.)"
    )
    return dumps(
        {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    )


def generic_error_body(status: int, reason: str) -> bytes:
    """Azure-envelope error for statuses without a captured body."""
    if status == 503:
        reason = (
            "The service is temporarily unable to process your request. Please try again later."
        )
    return dumps({"error": {"code": str(status), "message": reason}})


def content_filter_body() -> bytes:
    """Azure's 400 when the prompt trips the content filter (chat wire shape)."""
    return dumps(
        {
            "error": {
                "message": (
                    "The response was filtered due to the prompt triggering Azure OpenAI's"
                    " content management policy. Please modify your prompt and retry. To learn"
                    " more about our content filtering policies please read our documentation:"
                    " https://go.microsoft.com/fwlink/?linkid=2198766"
                ),
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {
                        "hate": _SAFE,
                        "jailbreak": {"filtered": True, "detected": True},
                        "self_harm": _SAFE,
                        "sexual": _SAFE,
                        "violence": _SAFE,
                    },
                },
            }
        }
    )
