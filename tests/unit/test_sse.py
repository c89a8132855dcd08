"""The SSE splitter and the usage observer."""

from __future__ import annotations

import json

import pytest

from aigw.upstream.sse import SSESplitter, StreamObserver, event_data

AZURE_STREAM = [
    b'data: {"choices":[],"created":0,"id":"","model":"","object":"",'
    b'"prompt_filter_results":[]}\n\n',
    b'data: {"choices":[{"delta":{"content":"","role":"assistant"},"index":0}],'
    b'"model":"gpt-4o-2024-11-20","usage":null}\n\n',
    b'data: {"choices":[{"delta":{"content":"Hi"},"index":0}],"model":"gpt-4o-2024-11-20",'
    b'"usage":null}\n\n',
    b'data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}],"usage":null}\n\n',
    b'data: {"choices":[],"model":"gpt-4o-2024-11-20","usage":{"completion_tokens":1,'
    b'"prompt_tokens":9,"total_tokens":10}}\n\n',
    b"data: [DONE]\n\n",
]
WIRE = b"".join(AZURE_STREAM)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(WIRE)])
def test_splitter_yields_the_same_events_at_any_chunking(size: int) -> None:
    splitter = SSESplitter()
    events: list[bytes] = []
    for at in range(0, len(WIRE), size):
        events += splitter.feed(WIRE[at : at + size])
    assert events == AZURE_STREAM
    assert splitter.pending == b""


def test_splitter_handles_crlf_and_keeps_partial_tail() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b": keep-alive\r\n\r\ndata: {}\r\n\r\ndata: {") == [
        b": keep-alive\r\n\r\n",
        b"data: {}\r\n\r\n",
    ]
    assert splitter.pending == b"data: {"


def test_splitter_one_event_per_read_and_reads_that_only_look_like_one() -> None:
    splitter = SSESplitter()
    event = b'data: {"a": 1}\n\n'
    assert splitter.feed(event) == [event]
    # Ends like one event, but a CRLF-terminated event comes first.
    assert splitter.feed(b"data: a\r\n\r\ndata: b\n\n") == [b"data: a\r\n\r\n", b"data: b\n\n"]
    assert splitter.feed(b"data: a\n\ndata: b\n\n") == [b"data: a\n\n", b"data: b\n\n"]
    assert splitter.pending == b""


def test_event_data_joins_lines_and_ignores_comments() -> None:
    assert event_data(b"data: a\ndata:b\n\n") == b"a\nb"
    assert event_data(b": comment\n\n") is None


def test_observer_reads_model_usage_first_token_and_done() -> None:
    observer = StreamObserver(hide_usage_chunk=False)
    kept = [observer.observe(e) for e in AZURE_STREAM]
    assert all(kept)
    assert observer.model == "gpt-4o-2024-11-20"
    assert observer.usage == {"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 10}
    assert observer.first_token_ns is not None
    assert observer.saw_done


def test_observer_hides_only_the_usage_chunk_it_was_asked_to() -> None:
    observer = StreamObserver(hide_usage_chunk=True)
    kept = [e for e in AZURE_STREAM if observer.observe(e)]
    assert kept == AZURE_STREAM[:4] + AZURE_STREAM[5:]
    assert observer.usage is not None


def test_observer_ignores_non_json_and_errors() -> None:
    observer = StreamObserver(hide_usage_chunk=True)
    assert observer.observe(b"data: not-json\n\n")
    error = json.dumps({"error": {"code": "content_filter"}}).encode()
    assert observer.observe(b"data: " + error + b"\n\n")
    assert observer.usage is None and not observer.saw_done
