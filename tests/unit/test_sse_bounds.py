"""The SSE splitter's bounds: linear time in the event's size, and a cap on one event."""

from __future__ import annotations

import time

import pytest

from aigw.upstream.sse import DEFAULT_MAX_EVENT_SIZE, EventTooLarge, SSESplitter

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("line", "end"),
    [(b"x" * 1024, b"\n\n"), (b"data: x\n", b"\n"), (b"data: y\r\n", b"\r\n"), (b"d\r", b"\r")],
    ids=["one-long-line", "lf-lines", "crlf-lines", "cr-lines"],
)
def test_an_8_mib_event_in_1_kib_reads_costs_linear_time(line: bytes, end: bytes) -> None:
    """Quadratic rescanning (the old splitter) takes many seconds here; linear takes ~0.1 s."""
    event = line * (8 * MiB // len(line))
    splitter = SSESplitter(max_event_size=16 * MiB)
    started = time.process_time()
    events: list[bytes] = []
    for at in range(0, len(event), 1024):
        events += splitter.feed(event[at : at + 1024])
    events += splitter.feed(end)
    assert time.process_time() - started < 1.5
    assert events == [event + end]


def test_default_cap_is_1_mib() -> None:
    assert MiB == DEFAULT_MAX_EVENT_SIZE
    splitter = SSESplitter()
    splitter.feed(b"data: " + b"x" * (MiB - 10))
    with pytest.raises(EventTooLarge):
        splitter.feed(b"x" * 16)


def test_an_unfinished_event_is_refused_as_soon_as_it_passes_the_cap() -> None:
    splitter = SSESplitter(max_event_size=4096)
    assert splitter.feed(b"data: ok\n\n") == [b"data: ok\n\n"]
    splitter.feed(b"data: " + b"x" * 4000)
    with pytest.raises(EventTooLarge):
        splitter.feed(b"x" * 100)


def test_a_whole_event_over_the_cap_in_one_read_is_refused() -> None:
    with pytest.raises(EventTooLarge):
        SSESplitter(max_event_size=1024).feed(b"data: " + b"x" * 1100 + b"\n\n")
    with pytest.raises(EventTooLarge):
        SSESplitter(max_event_size=1024).feed(b"data: a\n\ndata: " + b"x" * 1100 + b"\n\ndata: c")


def test_blank_lines_alone_count_against_the_cap() -> None:
    """Blank lines wait for the event they lead; an endless run of them is still bounded."""
    splitter = SSESplitter(max_event_size=1024)
    splitter.feed(b"\r\n" * 500)
    with pytest.raises(EventTooLarge):
        splitter.feed(b"\n" * 100)


def test_an_event_of_exactly_the_cap_passes() -> None:
    event = b"data: " + b"x" * (1024 - 8) + b"\n\n"
    assert len(event) == 1024
    splitter = SSESplitter(max_event_size=1024)
    assert splitter.feed(event[:500]) == []
    assert splitter.feed(event[500:]) == [event]
    assert SSESplitter(max_event_size=1024).feed(event) == [event]
