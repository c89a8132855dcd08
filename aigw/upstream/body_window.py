"""Bounded views of a relayed body: what the access log needs, never the whole body.

A response body is relayed as it arrives and is never held whole, so whatever
aigw reads from it has to come from a window of fixed size:

* ``BodyWindow`` keeps the first ``HEAD_BYTES`` and the last ``TAIL_BYTES``
  of a body, which is where ``model`` and ``usage`` sit in a completion, and
  reads them from there;
* ``PayloadCapture`` keeps the first ``CAPTURE_BYTES`` for ``log_payloads``
  and says how much it left out.

Usage comes in two spellings: chat's ``prompt_tokens``/``completion_tokens``
(chat, completions, embeddings) and ``input_tokens``/``output_tokens``
(Responses, gpt-image-1 images, gpt-4o-transcribe, realtime's ``response.done``).
``normalise_usage`` adds chat's names to the second, so the access log, metrics
and quotas read every usage alike.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Any

import orjson

__all__ = [
    "CAPTURE_BYTES",
    "HEAD_BYTES",
    "TAIL_BYTES",
    "BodyWindow",
    "PayloadCapture",
    "normalise_usage",
    "read_body_usage",
]

HEAD_BYTES = 4 * 1024
"""Kept from a body's start: OpenAI-ordered bodies put ``model`` near it."""

TAIL_BYTES = 64 * 1024
"""Kept from a body's end: Azure orders keys alphabetically, so ``usage`` is
last and ``model`` comes after ``choices`` (or ``data``), near the end."""

CAPTURE_BYTES = 64 * 1024
"""Most of one response body written to the access log under ``log_payloads``."""

Usage = tuple[str | None, dict[str, Any] | None]
"""``(model, usage)`` read from a body, each None when not found."""

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]*)"')
_decoder = json.JSONDecoder()


def read_body_usage(body: bytes) -> Usage:
    """Reads ``model`` and ``usage`` from a whole JSON completion body.

    PERF: Azure serialises keys alphabetically, so ``usage`` is the last key;
    it is decoded from the tail alone instead of parsing a body that can be
    megabytes of embedding floats. Escaped quotes inside strings cannot match
    the ``"usage"`` or ``"model"`` patterns, so text content cannot fake them.
    """
    return _read_model(body), _read_usage(body)


def normalise_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """*usage* with chat's names: ``prompt_tokens`` = ``input_tokens``,
    ``completion_tokens`` = ``output_tokens``, ``total_tokens`` as given (else their
    sum). A usage already in chat's names (or in neither) is returned as it is."""
    if "prompt_tokens" in usage or "input_tokens" not in usage:
        return usage
    prompt = usage.get("input_tokens")
    completion = usage.get("output_tokens")
    total = usage.get("total_tokens")
    if total is None and isinstance(prompt, int) and isinstance(completion, int):
        total = prompt + completion
    return {
        **usage,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
    }


class BodyWindow:
    """The first ``HEAD_BYTES`` and last ``TAIL_BYTES`` (at least) of a body fed in pieces.

    The tail is kept as the pieces that cover it, so adding one costs no copy;
    memory stays below ``HEAD_BYTES + TAIL_BYTES`` plus one piece.
    """

    __slots__ = ("_head", "_size", "_tail", "_tail_size")

    def __init__(self) -> None:
        self._head = b""
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._size = 0

    def add(self, data: bytes) -> None:
        """Notes the next *data* of the body."""
        self._size += len(data)
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]
        tail = self._tail
        tail.append(data)
        self._tail_size += len(data)
        while self._tail_size - len(tail[0]) >= TAIL_BYTES:
            self._tail_size -= len(tail.popleft())

    def usage(self) -> Usage:
        """``model`` and ``usage``, as ``read_body_usage`` would read the whole body.

        Either may be None where the whole body would have given a value (a
        usage object that starts before the tail, a model field only in the
        part dropped), never a different value: every match is read from a
        contiguous slice of the real body, the tail being its exact suffix.
        """
        tail = b"".join(self._tail)
        if self._tail_size == self._size:
            return read_body_usage(tail)  # the window holds the whole body
        model = _read_model(self._head)
        if model is None:
            model = _read_model(tail)
        return model, _read_usage(tail)


class PayloadCapture:
    """The first ``limit`` bytes of a body, for the access log, marked if cut."""

    __slots__ = ("_dropped", "_kept", "_limit")

    def __init__(self, limit: int = CAPTURE_BYTES) -> None:
        self._limit = limit
        self._kept = bytearray()
        self._dropped = 0

    def add(self, data: bytes) -> None:
        """Notes the next *data* of the body."""
        room = self._limit - len(self._kept)
        if len(data) <= room:
            self._kept += data
        else:
            self._kept += data[:room]
            self._dropped += len(data) - room

    def value(self) -> bytes:
        """The captured bytes, ending with a note of how many were left out."""
        if not self._dropped:
            return bytes(self._kept)
        return bytes(self._kept) + f"...[aigw: {self._dropped} more bytes not logged]".encode()


def _read_model(body: bytes) -> str | None:
    match = _MODEL_FIELD.search(body)
    return match.group(1).decode("utf-8", "replace") if match else None


def _read_usage(body: bytes) -> dict[str, Any] | None:
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    start = body.find(b"{", at)
    if start < 0 or body[at + 7 : start].strip() != b":":
        return None
    value = _usage_object(body, start)
    return normalise_usage(value) if isinstance(value, dict) else None


def _usage_object(body: bytes, start: int) -> Any:
    # The usual case: usage is the body's last key, so its object ends just
    # before the body's closing brace and orjson can take exactly that slice.
    end = body.rstrip().rfind(b"}")
    if end > start:
        try:
            return orjson.loads(body[start:end])
        except orjson.JSONDecodeError:
            pass
    # Otherwise decode one value from its start, wherever it ends.
    try:
        value, _ = _decoder.raw_decode(body[start:].decode("utf-8", "replace"))
    except ValueError:
        return None
    return value
