"""What the mock saw: one :class:`RequestRecord` per data-plane request, served by
``GET /_mock/requests``; realtime WebSocket requests also carry a :class:`SessionRecord`."""

from __future__ import annotations

import time
from typing import Any, Final, Literal

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDictProxy

__all__ = ["RequestRecord", "SessionRecord", "StreamOutcome"]

StreamOutcome = Literal["completed", "client_disconnected", "cut"]

#: Event types kept per direction and session; frame counts stay exact beyond it, so a
#: benchmark's long sessions do not grow the mock.
EVENT_TYPES_KEPT: Final = 1000


class SessionRecord:
    """One realtime WebSocket session: the frames each way and how it ended."""

    __slots__ = (
        "audio_bytes_in",
        "close_code",
        "closed_by",
        "events_in",
        "events_out",
        "frames_in",
        "frames_out",
    )

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.events_in: list[str] = []
        self.events_out: list[str] = []
        self.audio_bytes_in = 0
        self.close_code: int | None = None
        # "client" (it sent a close frame or left), "mock" (a drop control or a fault
        # closed it cleanly) or "dropped" (the mock vanished without a close frame).
        self.closed_by: str | None = None

    def note_in(self, kind: str) -> None:
        """Record a client event's type (frames are counted where they are read)."""
        if len(self.events_in) < EVENT_TYPES_KEPT:
            self.events_in.append(kind)

    def note_out(self, kind: str) -> None:
        """Count a server event and record its type."""
        self.frames_out += 1
        if len(self.events_out) < EVENT_TYPES_KEPT:
            self.events_out.append(kind)

    def to_json(self) -> dict[str, Any]:
        """The session as served inside its request's record."""
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "events_in": list(self.events_in),
            "events_out": list(self.events_out),
            "audio_bytes_in": self.audio_bytes_in,
            "close_code": self.close_code,
            "closed_by": self.closed_by,
        }


class RequestRecord:
    """One request as the mock saw it; rendered to JSON only when a test asks.

    Holding aiohttp's header and query proxies instead of copying them keeps recording
    almost free on the benchmark path.
    """

    __slots__ = (
        "_body",
        "_headers",
        "_query",
        "apim_request_id",
        "body_size",
        "deployment",
        "ended_at",
        "fault",
        "file_bytes",
        "form",
        "method",
        "operation",
        "path",
        "seq",
        "session",
        "started_at",
        "status",
        "stream",
        "stream_outcome",
    )

    def __init__(self, seq: int, request: web.Request, body: bytes) -> None:
        self.seq = seq
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.method = request.method
        self.path = request.rel_url.raw_path
        self._query: MultiDictProxy[str] = request.rel_url.query
        self._headers: CIMultiDictProxy[str] = request.headers
        self._body = body
        self.body_size = len(body)
        self.operation: str | None = None
        self.deployment: str | None = None
        self.stream = False
        self.status: int | None = None
        self.fault: str | None = None
        self.apim_request_id: str | None = None
        self.stream_outcome: StreamOutcome | None = None
        # Multipart requests: the non-file fields, and the bytes of every file part
        # (counted as they stream by, never kept).
        self.form: dict[str, str] | None = None
        self.file_bytes: int | None = None
        self.session: SessionRecord | None = None

    def client_gone(self) -> None:
        """Note that the client left before the mock finished answering."""
        if self.stream_outcome is None:
            self.stream_outcome = "client_disconnected"

    def to_json(self) -> dict[str, Any]:
        """The record as served by ``GET /_mock/requests``."""
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": _join(self._query.items()),
            "headers": _join((k.lower(), v) for k, v in self._headers.items()),
            "body": self._body.decode("utf-8", "replace"),
            "body_size": self.body_size,
            "operation": self.operation,
            "deployment": self.deployment,
            "stream": self.stream,
            "status": self.status,
            "fault": self.fault,
            "apim_request_id": self.apim_request_id,
            "stream_outcome": self.stream_outcome,
            "form": self.form,
            "file_bytes": self.file_bytes,
            "session": None if self.session is None else self.session.to_json(),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


def _join(items: Any) -> dict[str, str]:
    joined: dict[str, str] = {}
    for key, value in items:
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    return joined
