"""The Responses stream observer, on event streams shaped as Azure sends them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aigw.upstream.body_window import normalise_usage, read_body_usage
from aigw.upstream.sse import SSESplitter
from aigw.upstream.sse_responses import ResponsesObserver

USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 18,
}


def _event(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def _response(status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-4o-2024-11-20",
        "status": status,
        "output": [],
        "usage": usage,
    }


def _stream(deltas: int = 3, end: str = "response.completed") -> list[bytes]:
    events = [
        _event("response.created", sequence_number=0, response=_response("in_progress", None)),
        _event("response.in_progress", sequence_number=1, response=_response("in_progress", None)),
        _event("response.output_item.added", output_index=0, item={"type": "message"}),
        _event("response.content_part.added", output_index=0, content_index=0, part={}),
    ]
    events += [
        _event(
            "response.output_text.delta",
            item_id="msg_1",
            output_index=0,
            content_index=0,
            delta=f"word{n} ",
        )
        for n in range(deltas)
    ]
    events += [
        _event("response.output_text.done", text="word0 word1 word2"),
        _event(end, response=_response("completed", USAGE)),
    ]
    return events


def _observe(events: list[bytes]) -> ResponsesObserver:
    observer = ResponsesObserver()
    assert all(observer.observe(event) for event in events)  # nothing is ever withheld
    return observer


def test_usage_model_and_first_token_from_a_stream() -> None:
    observer = _observe(_stream())
    assert observer.model == "gpt-4o-2024-11-20"
    assert observer.usage is not None
    assert (observer.usage["prompt_tokens"], observer.usage["completion_tokens"]) == (11, 7)
    assert observer.usage["total_tokens"] == 18
    assert observer.first_token_ns is not None
    assert observer.saw_done


@pytest.mark.parametrize("end", ["response.incomplete", "response.failed"])
def test_usage_read_from_the_other_terminal_events(end: str) -> None:
    observer = _observe(_stream(end=end))
    assert observer.usage is not None and observer.usage["completion_tokens"] == 7


def test_first_token_is_the_first_text_delta_not_an_earlier_event() -> None:
    events = _stream(deltas=0)
    observer = _observe(events[:-2])  # created .. content_part.added, no delta yet
    assert observer.first_token_ns is None and observer.usage is None


def test_a_stream_cut_before_its_terminal_event_has_no_usage() -> None:
    observer = _observe(_stream()[:-1])
    assert observer.usage is None and not observer.saw_done


@pytest.mark.parametrize("piece", [1, 7, 64])
def test_events_split_across_reads_read_the_same(piece: int) -> None:
    wire = b"".join(_stream()).replace(b"\n", b"\r\n")  # CRLF lines, split anywhere
    splitter, observer = SSESplitter(), ResponsesObserver()
    for at in range(0, len(wire), piece):
        for event in splitter.feed(wire[at : at + piece]):
            observer.observe(event)
    assert observer.usage is not None and observer.usage["prompt_tokens"] == 11
    assert observer.model == "gpt-4o-2024-11-20" and observer.first_token_ns is not None


def test_events_without_an_event_line_are_typed_by_their_data() -> None:
    untyped = [b"data: " + event.split(b"data: ", 1)[1] for event in _stream()]
    observer = _observe(untyped)
    assert observer.usage is not None and observer.usage["completion_tokens"] == 7
    assert observer.model == "gpt-4o-2024-11-20" and observer.first_token_ns is not None


def test_text_that_names_a_terminal_event_is_not_mistaken_for_one() -> None:
    fake = json.dumps({"usage": {"input_tokens": 999}})
    events = _stream()
    events[4] = _event("response.output_text.delta", delta=f"response.completed {fake}")
    observer = _observe(events[:-1])
    assert observer.usage is None


def test_deltas_are_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    import aigw.upstream.sse_responses as module

    decoded: list[bytes | None] = []
    real = module._decoded

    def counting(data: bytes | None) -> dict[str, Any] | None:
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(module, "_decoded", counting)
    _observe(_stream(deltas=200))
    assert len(decoded) == 2  # response.created (the model) and response.completed


def test_usage_normalised_to_chat_names() -> None:
    usage = normalise_usage({"input_tokens": 3, "output_tokens": 4})
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (3, 4, 7)
    chat = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert normalise_usage(chat) is chat
    duration = {"type": "duration", "seconds": 3}
    assert normalise_usage(duration) is duration


@pytest.mark.parametrize(
    "body",
    [
        # A Responses object: usage is not its last key.
        {**_response("completed", USAGE), "user": None, "metadata": {}},
        # gpt-image-1 images.
        {"created": 1, "data": [{"b64_json": "aGk="}], "usage": USAGE},
        # gpt-4o-transcribe.
        {"text": "hello", "usage": {"type": "tokens", **USAGE}},
    ],
)
def test_body_usage_normalised(body: dict[str, Any]) -> None:
    _model, usage = read_body_usage(json.dumps(body).encode())
    assert usage is not None
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        11,
        7,
        18,
    )


@pytest.mark.parametrize("typed", [True, False])
def test_a_streamed_transcription_counts_its_usage(typed: bool) -> None:
    done = {"text": "hello world", "usage": {"type": "tokens", **USAGE}}
    events = [
        _event("transcript.text.delta", delta="hello"),
        _event("transcript.text.delta", delta=" world"),
        _event("transcript.text.done", **done),
    ]
    if not typed:
        events = [b"data: " + event.split(b"data: ", 1)[1] for event in events]
    observer = _observe(events)
    assert observer.first_token_ns is not None and observer.saw_done
    assert observer.usage is not None and observer.usage["prompt_tokens"] == 11
