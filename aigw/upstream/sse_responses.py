"""The usage observer of a Responses API stream (``POST /openai/responses``, ``stream: true``).

A Responses stream is typed SSE, not chat's ``data:`` chunks::

    event: response.created
    data: {"type":"response.created","response":{"model":"gpt-4o","usage":null,…}}

    event: response.output_text.delta
    data: {"type":"response.output_text.delta","delta":"Hi",…}

    event: response.completed
    data: {"type":"response.completed","response":{…,"usage":{"input_tokens":…}}}

It has no ``[DONE]``: it ends after its terminal event (``response.completed``,
``response.incomplete`` or ``response.failed``), which carries the usage. A
streamed transcription (gpt-4o-transcribe, ``stream: true``) is read alike: its
``transcript.text.delta`` events, then ``transcript.text.done`` with a top-level
``usage``. The
usage is normalised to chat's names (``aigw.upstream.body_window.normalise_usage``)
so the access log, metrics and quotas read it unchanged.

The relay forwards every event as it came; this observer only reads them.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from aigw.upstream.body_window import normalise_usage
from aigw.upstream.sse import event_data

__all__ = ["ResponsesObserver"]

_OUTPUT_DELTAS = frozenset(
    {
        b"response.output_text.delta",
        b"response.refusal.delta",
        b"response.function_call_arguments.delta",
        b"transcript.text.delta",
    }
)
"""Events that carry output: the first one is the first token."""
_STARTS = frozenset({b"response.created", b"response.in_progress"})
"""Events whose ``response`` names the model (its usage still null)."""
_TRANSCRIPT_DONE = b"transcript.text.done"
_ENDS = frozenset(
    {b"response.completed", b"response.incomplete", b"response.failed", _TRANSCRIPT_DONE}
)
"""The terminal events: their ``response.usage`` (a transcript's ``usage``) is the
stream's usage."""
_KINDS = (b'"response.', b'"transcript.text.')
"""How the ``type`` of every event this observer reads begins."""


class ResponsesObserver:
    """Reads token usage, the served model and time to first token off a Responses stream.

    PERF: an event's type is read from its ``event:`` line (the first line Azure
    sends) with one slice, never by decoding its JSON; the JSON is decoded only for
    a start event while the model is unknown and for the terminal event. A
    1,000-delta stream costs two decodes. An event without an ``event:`` line is
    typed by its data's ``type``, decoded only when a byte test says it can be one
    of those events.

    The interface is ``aigw.upstream.sse.StreamObserver``'s, so the relay treats
    both alike; nothing is ever withheld from the client (aigw injects nothing
    into a Responses request).
    """

    __slots__ = ("first_token_ns", "hide_usage_chunk", "model", "saw_done", "usage")

    def __init__(self) -> None:
        self.hide_usage_chunk = False
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.first_token_ns: int | None = None
        self.saw_done = False  # a terminal event came

    def observe(self, event: bytes) -> bool:
        """Notes what *event* says; always True (every event reaches the client)."""
        name = _event_name(event)
        if name is None:
            self._observe_untyped(event)
        elif name in _OUTPUT_DELTAS:
            if self.first_token_ns is None:
                self.first_token_ns = time.perf_counter_ns()
        elif name in _ENDS or (name in _STARTS and self.model is None):
            self._note(name, _decoded(event_data(event)))
        return True

    def _observe_untyped(self, event: bytes) -> None:
        data = event_data(event)
        if data is None or not any(kind in data for kind in _KINDS):
            return
        if (
            self.first_token_ns is not None
            and self.model is not None
            and not any(end in data for end in _ENDS)
        ):
            return  # only a terminal event can still say something new
        chunk = _decoded(data)
        kind = chunk.get("type") if chunk is not None else None
        if not isinstance(kind, str):
            return
        name = kind.encode()
        if name in _OUTPUT_DELTAS:
            if self.first_token_ns is None:
                self.first_token_ns = time.perf_counter_ns()
        elif name in _ENDS or name in _STARTS:
            self._note(name, chunk)

    def _note(self, name: bytes, chunk: dict[str, Any] | None) -> None:
        """Takes the model and, from a terminal event, the usage of *chunk*'s response."""
        if name in _ENDS:
            self.saw_done = True
        if name == _TRANSCRIPT_DONE:
            usage = chunk.get("usage") if chunk is not None else None
            if isinstance(usage, dict):
                self.usage = normalise_usage(usage)
            return
        response = chunk.get("response") if chunk is not None else None
        if not isinstance(response, dict):
            return
        model = response.get("model")
        if self.model is None and isinstance(model, str) and model:
            self.model = model
        usage = response.get("usage")
        if name in _ENDS and isinstance(usage, dict):
            self.usage = normalise_usage(usage)


def _event_name(event: bytes) -> bytes | None:
    """The ``event:`` field when it is the event's first line (as Azure sends it)."""
    if not event.startswith(b"event:"):
        return None
    end = event.find(b"\n", 6)
    line = event[6:end] if end >= 0 else event[6:]
    # CRLF leaves a CR; a CR-only line end leaves the rest of the event after it.
    return line.partition(b"\r")[0].strip()


def _decoded(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None
