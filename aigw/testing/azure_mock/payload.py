"""Request-body checks with the OpenAI-style 400s the model container returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .wire import Operation, model_error_body

__all__ = [
    "BadRequest",
    "count_tokens",
    "knows_stream_options",
    "parse_embeddings",
    "parse_generation",
    "positive_int",
]


class BadRequest(Exception):
    """A request body the model would refuse; carries the OpenAI-style 400 body."""

    def __init__(self, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.body = model_error_body(message, param, code)


def count_tokens(value: object) -> int:
    """Deterministic prompt "tokens": whitespace-separated words of every text, 1 per int.

    Only message ``content`` and part ``text`` count, so roles and tool schemas do not.
    """
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(count_tokens(item) for item in value)
    if isinstance(value, dict):
        return count_tokens(value.get("content")) + count_tokens(value.get("text"))
    return 0


def _type_name(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    names |= {list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), "an unknown type")


def positive_int(payload: Mapping[str, Any], key: str) -> int | None:
    """The positive integer at *key*, or None when absent; a 400 for anything else."""
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"Invalid type for '{key}': expected an integer, but got {_type_name(value)} instead.",
            key,
            "invalid_type",
        )
    if value < 1:
        raise BadRequest(
            f"Invalid '{key}': integer below minimum value. Expected a value >= 1,"
            f" but got {value} instead.",
            key,
            "integer_below_min_value",
        )
    return value


def _required(payload: Mapping[str, Any], key: str) -> object:
    value = payload.get(key)
    if value is None:
        raise BadRequest(f"Missing required parameter: '{key}'.", key, "missing_required_parameter")
    return value


def knows_stream_options(api_version: str) -> bool:
    """Whether the service accepts ``stream_options`` on *api_version*.

    It arrived in 2024-09-01-preview and GA 2024-10-21; older versions refuse
    the parameter. Undated versions (``v1``, ``preview``) are current.
    """
    if not api_version[:1].isdigit():
        return True
    if api_version.endswith("-preview"):
        return api_version[:10] >= "2024-09-01"
    return api_version[:10] >= "2024-10-21"


def parse_generation(
    op: Operation, payload: Mapping[str, Any], *, stream: bool, api_version: str = "2024-10-21"
) -> tuple[int, int | None, bool]:
    """Check a chat or completions body; returns (prompt tokens, max tokens, include_usage)."""
    prompt = _required(payload, "messages" if op == "chat" else "prompt")
    if op == "chat" and not isinstance(prompt, list):
        raise BadRequest(
            "Invalid type for 'messages': expected an array of objects, but got"
            f" {_type_name(prompt)} instead.",
            "messages",
            "invalid_type",
        )
    if op == "chat" and not prompt:
        raise BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1,"
            " but got an empty array instead.",
            "messages",
            "empty_array",
        )
    # The newer name wins, as it does on the service.
    limit = positive_int(payload, "max_completion_tokens") or positive_int(payload, "max_tokens")
    stream_options = payload.get("stream_options")
    if "stream_options" in payload and not knows_stream_options(api_version):
        raise BadRequest(
            "Unknown parameter: 'stream_options'.", "stream_options", "unknown_parameter"
        )
    if stream_options is not None and not stream:
        raise BadRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            None,
        )
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return max(count_tokens(prompt), 1), limit, include_usage


def _embedding_texts(value: object) -> list[str]:
    # One vector per input item; token arrays are hashed via their decimal form.
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [",".join(map(str, value))]
        texts = []
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and all(isinstance(v, int) for v in item):
                texts.append(",".join(map(str, item)))
            else:
                break
        else:
            return texts
    raise BadRequest(
        "Invalid 'input': expected a string, an array of strings or an array of token arrays.",
        "input",
        "invalid_value",
    )


def parse_embeddings(payload: Mapping[str, Any]) -> tuple[list[str], int, int | None, bool]:
    """Check an embeddings body; returns (texts, prompt tokens, dimensions, base64?)."""
    value = _required(payload, "input")
    texts = _embedding_texts(value)
    dimensions = positive_int(payload, "dimensions")
    encoding = payload.get("encoding_format")
    if encoding not in ("float", "base64", None):
        raise BadRequest(
            f"Invalid value for 'encoding_format': {encoding!r}. Supported values are:"
            " 'float' and 'base64'.",
            "encoding_format",
            "invalid_value",
        )
    return texts, max(count_tokens(value), 1), dimensions, encoding == "base64"
