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


# -- line ends: CR, LF and CRLF, at every split position --------------------------------

MIXED = (
    b"\n: leading blank line, then a comment\r\n"
    b"data: crlf\r\n\r\n"
    b"data: lf\n\n"
    b"data: cr\r\r"
    b"event: x\rdata: a\r\ndata: b\n\r\n"
    b"data: after crlf\r\n\n"
    b"\r\n\r\n"  # blank lines only: they lead the next event
    b"data: lf then cr\n\r"
    b"data: [DONE]\r\r\n"
    b"data: unterminated\r"
)


def reference_split(data: bytes) -> tuple[list[bytes], bytes]:
    """The SSE rules applied to a whole stream one byte at a time: the test's oracle.

    Lines end in CRLF, LF or CR; an event ends with the first blank line after a
    non-blank one (blank lines before it belong to it).
    """
    events: list[bytes] = []
    start = at = 0
    in_event, line_empty = False, True
    while at < len(data):
        if data[at] in b"\r\n":
            end = at + 2 if data[at : at + 2] == b"\r\n" else at + 1
            if line_empty and in_event:
                events.append(data[start:end])
                start, in_event = end, False
            line_empty, at = True, end
        else:
            in_event, line_empty, at = True, False, at + 1
    return events, data[start:]


def split_in_reads(reads: list[bytes]) -> tuple[list[bytes], bytes]:
    """Feeds *reads* one by one; a CRLF cut after its CR is moved back to its event.

    The splitter returns an event that ends in a CR at once (its LF may never
    come), so that LF opens the next event instead: the only way its output may
    differ from the whole-stream oracle.
    """
    splitter = SSESplitter()
    events: list[bytes] = []
    for data in reads:
        events += splitter.feed(data)
    tail = splitter.pending
    merged: list[bytes] = []
    for event in [*events, tail]:
        if merged and merged[-1].endswith(b"\r") and event.startswith(b"\n"):
            merged[-1] += b"\n"
            event = event[1:]
        merged.append(event)
    return merged[:-1], merged[-1]


def test_reference_reads_the_mixed_sample_as_intended() -> None:
    events, tail = reference_split(MIXED)
    assert [event_data(e) for e in events] == [
        b"crlf",
        b"lf",
        b"cr",
        b"a\nb",
        b"after crlf",
        b"lf then cr",
        b"[DONE]",
    ]
    assert tail == b"data: unterminated\r"
    assert events[0].startswith(b"\n: leading")  # leading blank line and comment joined


def test_every_two_way_split_gives_the_reference_events() -> None:
    expected = reference_split(MIXED)
    for cut in range(len(MIXED) + 1):
        assert split_in_reads([MIXED[:cut], MIXED[cut:]]) == expected, cut


def test_every_three_way_split_gives_the_reference_events() -> None:
    expected = reference_split(MIXED)
    for first in range(len(MIXED) + 1):
        for second in range(first, len(MIXED) + 1):
            reads = [MIXED[:first], MIXED[first:second], MIXED[second:]]
            assert split_in_reads(reads) == expected, (first, second)


def test_byte_at_a_time_gives_the_reference_events() -> None:
    assert split_in_reads([MIXED[i : i + 1] for i in range(len(MIXED))]) == reference_split(MIXED)


def test_cr_then_lf_in_the_next_read_is_one_line_end() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r") == []
    # LF completes the CRLF: it is not a blank line, so the event goes on.
    assert splitter.feed(b"\ndata: b\r") == []
    assert splitter.feed(b"\n\r\n") == [b"data: a\r\ndata: b\r\n\r\n"]


def test_event_ending_in_cr_is_returned_without_waiting_for_the_next_read() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r\r") == [b"data: a\r\r"]
    # The LF that may follow is part of that blank line, never a new one.
    assert splitter.feed(b"\n") == []
    assert splitter.feed(b"data: b\r\r") == [b"\ndata: b\r\r"]


def test_event_data_reads_cr_and_crlf_lines() -> None:
    assert event_data(b"data: a\rdata:b\r\r") == b"a\nb"
    assert event_data(b"\ndata: a\r\ndata: b\r\n\r\n") == b"a\nb"
    assert event_data(b": only a comment\r\r") is None
