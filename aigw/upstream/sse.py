"""A sans-io server-sent-events splitter and the usage observer built on it.

The relay forwards upstream bytes verbatim; this module only looks at them. It
never re-serialises an event, so what the client receives is byte-identical to
what Azure sent (less the one usage chunk aigw asked for on the client's
behalf, see ``StreamObserver``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

__all__ = ["SSESplitter", "StreamObserver", "event_data"]

_TERMINATORS = (b"\n\n", b"\r\n\r\n")


class SSESplitter:
    """Cuts a byte stream into complete events, keeping each event's raw bytes.

    ``feed`` returns the events completed by a chunk, each including its
    terminating blank line; an incomplete tail is kept for the next chunk.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Adds *chunk* and returns the events it completes."""
        if (
            not self._pending
            and chunk.endswith(b"\n\n")
            and chunk.find(b"\n\n") == len(chunk) - 2
            and b"\r\n\r\n" not in chunk
        ):
            return [chunk]  # PERF: the usual delta, exactly one whole event
        buf = self._pending + chunk if self._pending else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = _find_terminator(buf, start)
            if end < 0:
                break
            events.append(buf[start:end])
            start = end
        self._pending = buf[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete event."""
        return self._pending


def _find_terminator(buf: bytes, start: int) -> int:
    """Index just past the first event terminator at or after *start*, or -1."""
    best = -1
    for term in _TERMINATORS:
        i = buf.find(term, start)
        if i >= 0 and (best < 0 or i + len(term) < best):
            best = i + len(term)
    return best


def event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` field of one raw event, or None if it has none."""
    parts: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


class StreamObserver:
    """Reads token usage, the served model and time to first token off a chat stream.

    PERF: an event is JSON-decoded only when a cheap byte test says it can
    carry something still unknown: the model (until seen), the first token
    (until seen) or a non-null usage object. A 1,000-token stream costs a
    handful of decodes, not a thousand.

    Args:
        hide_usage_chunk: aigw added ``stream_options.include_usage`` itself;
            the final usage-only chunk is then withheld from the client, who
            did not ask for it.
    """

    __slots__ = ("first_token_ns", "hide_usage_chunk", "model", "saw_done", "usage")

    def __init__(self, *, hide_usage_chunk: bool) -> None:
        self.hide_usage_chunk = hide_usage_chunk
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.first_token_ns: int | None = None
        self.saw_done = False

    def observe(self, event: bytes) -> bool:
        """Notes what *event* says; returns False if it must not reach the client."""
        # PERF: once the model and the first token are known, only a usage
        # object or the [DONE] marker can still matter; byte scans rule out the
        # other deltas (whose "usage" is null) without splitting them into lines.
        if (
            self.first_token_ns is not None
            and self.model is not None
            and b"[DONE]" not in event
            and not _has_usage(event)
        ):
            return True
        data = event_data(event)
        if data is None:
            return True
        if data.startswith(b"[DONE]"):
            self.saw_done = True
            return True
        has_usage = _has_usage(data)
        wants_model = self.model is None and b'"model":""' not in data
        wants_token = self.first_token_ns is None and (b'"delta"' in data or b'"text"' in data)
        if not (has_usage or wants_model or wants_token):
            return True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(chunk, dict):
            return True
        if wants_model and isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        choices = chunk.get("choices")
        if wants_token and isinstance(choices, list) and _carries_token(choices):
            self.first_token_ns = time.perf_counter_ns()
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            if self.hide_usage_chunk and choices == []:
                return False
        return True


def _has_usage(data: bytes) -> bool:
    return b'"usage":{' in data or b'"usage": {' in data


def _carries_token(choices: list[Any]) -> bool:
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and (
            delta.get("content") or delta.get("tool_calls") or delta.get("refusal")
        ):
            return True
    return False
