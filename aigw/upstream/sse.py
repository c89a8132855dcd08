"""A sans-io server-sent-events splitter and the usage observer built on it.

The relay forwards upstream bytes verbatim; this module only looks at them. It
never re-serialises an event, so what the client receives is byte-identical to
what Azure sent (less the one usage chunk aigw asked for on the client's
behalf, see ``StreamObserver``).
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

__all__ = ["DEFAULT_MAX_EVENT_SIZE", "EventTooLarge", "SSESplitter", "StreamObserver", "event_data"]

_CR, _LF = 0x0D, 0x0A

# A line end (CRLF, LF or CR) followed by another: the second ends a blank
# line. Atomic groups keep CRLF whole, so ``x\r\ny`` is never read as CR + LF.
_BLANK_LINE = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
_CONTENT = re.compile(rb"[^\r\n]")

DEFAULT_MAX_EVENT_SIZE = 1024 * 1024


class EventTooLarge(ValueError):
    """One event grew past the splitter's ``max_event_size`` without ending."""


class SSESplitter:
    """Cuts a byte stream into complete events, keeping each event's raw bytes.

    ``feed`` returns the events completed by a chunk; an incomplete tail is
    kept for the next chunk. Lines end in CRLF, LF or CR (the SSE grammar), and
    an event ends at the first blank line after a non-blank one; blank lines
    before an event's first line belong to that event. Concatenated, the events
    and ``pending`` are exactly the bytes fed.

    One CRLF can straddle two reads: when a read ends in the CR of a blank line
    the event is returned at once (waiting for the next read would hold it back
    from the client), and the LF that may follow starts the next event.

    PERF: every byte is scanned once, by a C search over the new chunk only;
    the incomplete tail is kept as a list of pieces, joined once when its event
    completes. So a huge event costs linear time, and it is refused as soon as
    it passes *max_event_size*, before it can cost more memory.

    Args:
        max_event_size: Largest event accepted, in bytes, blank line included.

    Raises:
        EventTooLarge: from ``feed``, once the current event is larger.
    """

    __slots__ = ("_after_cr", "_clean", "_in_event", "_line_start", "_max", "_parts", "_size")

    def __init__(self, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self._max = max_event_size
        self._parts: list[bytes] = []  # the incomplete event, as received
        self._size = 0
        self._in_event = False  # the incomplete event has a non-blank line
        self._line_start = True  # the last byte fed ended a line
        self._after_cr = False  # ... and it was a CR, whose LF may come next
        self._clean = True  # nothing pending and no CR just before: the fast path holds

    def feed(self, chunk: bytes) -> list[bytes]:
        """Adds *chunk* and returns the events it completes."""
        size = len(chunk)
        if (
            self._clean
            and 2 < size <= self._max
            and chunk.endswith(b"\n\n")
            and chunk.find(b"\n\n") == size - 2
            and b"\r" not in chunk
        ):
            return [chunk]  # PERF: the usual delta, exactly one whole event
        if not size:
            return []
        events: list[bytes] = []
        start = at = 0  # where the current event and the scan start in chunk
        if self._after_cr and chunk[0] == _LF:
            at = 1  # the LF of a CRLF the previous read ended in the middle of
        if self._in_event and self._line_start and at < size and chunk[at] in (_CR, _LF):
            # The blank line starts right at the read boundary.
            at += 2 if chunk[at] == _CR and chunk[at + 1 : at + 2] == b"\n" else 1
            events.append(self._complete(chunk, start, at))
            start = at
        while True:
            if not self._in_event:
                found = _CONTENT.search(chunk, at)
                if found is None:
                    break  # only blank lines so far: they wait for their event
                at = found.start()
                self._in_event = True
            blank = _BLANK_LINE.search(chunk, at)
            if blank is None:
                break
            at = blank.end()
            events.append(self._complete(chunk, start, at))
            start = at
        if start < size:
            rest = chunk[start:] if start else chunk
            self._parts.append(rest)
            self._size += len(rest)
            if self._size > self._max:
                raise EventTooLarge(f"an event is larger than {self._max} bytes")
        last = chunk[-1]
        self._line_start = last in (_CR, _LF)
        self._after_cr = last == _CR
        self._clean = not self._parts and not self._after_cr
        return events

    def _complete(self, chunk: bytes, start: int, end: int) -> bytes:
        parts = self._parts
        if parts:
            parts.append(chunk[start:end])
            event = b"".join(parts)
            parts.clear()
            self._size = 0
        else:
            event = chunk[start:end]
        self._in_event = False
        if len(event) > self._max:
            raise EventTooLarge(f"an event is larger than {self._max} bytes")
        return event

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete event."""
        return b"".join(self._parts)


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

    __slots__ = ("_quiet", "first_token_ns", "hide_usage_chunk", "model", "saw_done", "usage")

    def __init__(self, *, hide_usage_chunk: bool) -> None:
        self.hide_usage_chunk = hide_usage_chunk
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.first_token_ns: int | None = None
        self.saw_done = False
        self._quiet = False  # the model and the first token are both known

    def observe(self, event: bytes) -> bool:
        """Notes what *event* says; returns False if it must not reach the client."""
        # PERF: once the model and the first token are known, only a usage
        # object or the [DONE] marker can still matter; byte scans rule out the
        # other deltas (whose "usage" is null) without splitting them into lines.
        if (
            self._quiet
            and b"[DONE]" not in event
            and b'"usage":{' not in event  # _has_usage, inlined: this runs per delta
            and b'"usage": {' not in event
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
        self._quiet = self.model is not None and self.first_token_ns is not None
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
