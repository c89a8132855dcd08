"""Byte-level Responses API formats: the ``response`` object and its typed SSE events
(``event: response.created`` ... ``event: response.completed``, no ``[DONE]``), in the
field order the service sends them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from .wire import dumps

__all__ = [
    "deleted_body",
    "not_found_body",
    "response_object",
    "stream_error_event",
    "stream_events",
]

_ECHOED_DEFAULTS: Final[tuple[tuple[str, Any], ...]] = (
    ("instructions", None),
    ("max_output_tokens", None),
    ("parallel_tool_calls", True),
    ("previous_response_id", None),
    ("reasoning", {"effort": None, "summary": None}),
    ("store", True),
    ("temperature", 1.0),
    ("text", {"format": {"type": "text"}}),
    ("tool_choice", "auto"),
    ("tools", []),
    ("top_p", 1.0),
    ("truncation", "disabled"),
)


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": parts,
        "role": "assistant",
    }


def response_object(
    *,
    response_id: str,
    item_id: str,
    created_at: int,
    model: str,
    payload: Mapping[str, Any],
    tokens: Sequence[str],
    input_tokens: int,
    truncated: bool,
) -> dict[str, Any]:
    """The finished ``response`` (status ``completed``, or ``incomplete`` when
    ``max_output_tokens`` cut the reply), echoing the request's settings."""
    status = "incomplete" if truncated else "completed"
    body: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
    }
    for key, default in _ECHOED_DEFAULTS[:2]:
        body[key] = payload.get(key, default)
    body["metadata"] = payload.get("metadata") or {}
    body["model"] = model
    body["output"] = [_message(item_id, [_text_part("".join(tokens))], status)]
    for key, default in _ECHOED_DEFAULTS[2:]:
        value = payload.get(key)
        body[key] = default if value is None else value
    body["usage"] = _usage(input_tokens, len(tokens))
    body["user"] = payload.get("user")
    return body


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **data}) + b"\n\n"


def stream_events(
    final: Mapping[str, Any], tokens: Sequence[str]
) -> tuple[list[bytes], list[bool]]:
    """Every event of a streamed *final* response, and which ones carry a token.

    Order and shapes as the service streams them: created, in_progress, the message
    item and its text part opening, one ``response.output_text.delta`` per token, the
    text, part and item closing, then ``response.completed`` (or
    ``response.incomplete``) holding the whole response with its usage.
    """
    item = final["output"][0]
    item_id = item["id"]
    text = item["content"][0]["text"]
    pending = {**final, "status": "in_progress", "output": [], "usage": None}
    pending["incomplete_details"] = None
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    planned: list[tuple[str, dict[str, Any], bool]] = [
        ("response.created", {"response": pending}, False),
        ("response.in_progress", {"response": pending}, False),
        (
            "response.output_item.added",
            {"output_index": 0, "item": _message(item_id, [], "in_progress")},
            False,
        ),
        ("response.content_part.added", {**where, "part": _text_part("")}, False),
    ]
    planned += [
        ("response.output_text.delta", {**where, "delta": token, "logprobs": []}, True)
        for token in tokens
    ]
    planned += [
        ("response.output_text.done", {**where, "text": text, "logprobs": []}, False),
        ("response.content_part.done", {**where, "part": _text_part(text)}, False),
        ("response.output_item.done", {"output_index": 0, "item": item}, False),
        (f"response.{final['status']}", {"response": final}, False),
    ]
    events = [
        _event(kind, {**data, "sequence_number": seq})
        for seq, (kind, data, _) in enumerate(planned)
    ]
    return events, [content for _, _, content in planned]


def stream_error_event(error: Mapping[str, Any] | None, sequence_number: int) -> bytes:
    """A mid-stream ``event: error``; the SDK yields it as a ``ResponseErrorEvent``."""
    fields = dict(error) if error is not None else {}
    return _event(
        "error",
        {
            "code": fields.get("code", "server_error"),
            "message": fields.get(
                "message", "The server had an error while processing your request."
            ),
            "param": fields.get("param"),
            "sequence_number": sequence_number,
        },
    )


def not_found_body(response_id: str) -> bytes:
    """404 for a response id that is not stored (never was, or deleted)."""
    return dumps(
        {
            "error": {
                "message": f"Response with id '{response_id}' not found.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    )


def deleted_body(response_id: str) -> bytes:
    """``DELETE /responses/{id}``'s answer."""
    return dumps({"id": response_id, "object": "response.deleted", "deleted": True})
