"""The Realtime API: a WebSocket session on ``/openai/realtime?api-version=…&deployment=…``
(preview events) or ``/openai/v1/realtime?model=…`` (GA events; `realtime_wire`).

On open the mock sends ``session.created``; then ``session.update`` → ``session.updated``,
``conversation.item.create`` → ``conversation.item.created``,
``input_audio_buffer.append`` (counted) / ``.commit`` / ``.clear``, and
``response.create`` → ``response.created``, ``response.output_item.added``,
``response.content_part.added``, audio and transcript deltas (or text deltas),
their ``…done`` events, ``response.output_item.done`` and ``response.done`` with
``response.usage``. Anything else gets an ``error`` event, as the service sends it.
Every frame each way and the close are recorded in the request's ``session``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web

from .call import Call
from .chat import random_id
from .payload import count_tokens
from .playback import drop_connection
from .realtime_wire import AUDIO_DELTA_BYTES, GA, PREVIEW, initial_session, silence, usage
from .records import SessionRecord
from .wire import JSON_CT, dumps, reply_tokens

__all__ = ["RealtimeSession", "serve"]

# Big enough for seconds of base64 audio in one append.
_MAX_FRAME: Final = 16 * 1024 * 1024
# Output audio tokens per 50 ms delta (the service counts ~10 per second of audio).
_AUDIO_TOKENS_PER_DELTA: Final = 1
_NOT_AN_UPGRADE: Final = dumps(
    {"error": {"code": "BadRequest", "message": "Expected a WebSocket upgrade request."}}
)
_CLIENT_EVENTS: Final = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "response.create",
    "response.cancel",
)


class _Break(Exception):
    """The session's fault strikes now: it was sent its ``after_events`` events."""


class RealtimeSession:
    """One accepted WebSocket, its conversation state and its record."""

    def __init__(self, call: Call, ws: web.WebSocketResponse) -> None:
        self.call = call
        self.ws = ws
        self.record = SessionRecord()
        call.record.session = self.record
        self.dialect = GA if call.style == "v1" else PREVIEW
        self.session = initial_session(self.dialect, random_id("sess_", 22), call.deployment.model)
        self._text_in = 0
        self._last_item: str | None = None
        # A stream fault strikes after this many server events (default: right after
        # session.created).
        fault = call.fault
        self._break_after = None if fault is None else (fault.after_events or 1)

    async def send(self, kind: str, **fields: Any) -> None:
        """One server event, counted and recorded; the fault may cut the session first."""
        if self._break_after is not None and self.record.frames_out >= self._break_after:
            self._break_after = None
            raise _Break
        event = {"type": kind, "event_id": random_id("event_", 22), **fields}
        await self.ws.send_str(dumps(event).decode())
        self.record.note_out(kind)

    async def run(self) -> None:
        """Serve the session until either side closes it."""
        try:
            await self.send("session.created", session=self.session)
            async for message in self.ws:
                self.record.frames_in += 1
                if message.type == WSMsgType.TEXT:
                    await self._on_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    self.record.note_in("<binary>")
                    await self._error("invalid_request_error", "Binary frames are not supported.")
        except _Break:
            await self._strike()
            return
        except (ConnectionError, asyncio.CancelledError):
            self.record.closed_by = self.record.closed_by or "client"
            raise
        if self.record.closed_by is None:
            self.record.closed_by = "client"
        if self.record.close_code is None:
            self.record.close_code = self.ws.close_code
        self.call.record.stream_outcome = "completed"

    async def _strike(self) -> None:
        """Play the stream fault: ``cut_stream`` vanishes, ``eof_stream`` closes with
        1000, ``stream_error_event`` sends an ``error`` event and closes with 1011."""
        fault = self.call.fault
        assert fault is not None
        if fault.kind == "cut_stream":
            self.call.record.stream_outcome = "cut"
            self.drop(rst=fault.rst)
            return
        if fault.kind == "stream_error_event":
            error = dict(fault.error or {})
            await self._error(
                str(error.get("type", "server_error")),
                str(error.get("message", "The server had an error processing your request.")),
                error.get("code"),
            )
            await self.close(WSCloseCode.INTERNAL_ERROR)
        else:
            await self.close(WSCloseCode.OK)
        self.call.record.stream_outcome = "completed"

    def drop(self, *, rst: bool = False) -> None:
        """Vanish: the TCP connection closes without a close frame."""
        self.record.closed_by = "dropped"
        drop_connection(self.call.request, rst=rst)

    async def close(self, code: int) -> None:
        """Close the session cleanly from the mock's side with *code*."""
        self.record.closed_by = "mock"
        self.record.close_code = code
        await self.ws.close(code=code, message=b"closed by the mock")

    async def _error(
        self, kind: str, message: str, code: str | None = None, event_id: str | None = None
    ) -> None:
        error = {"type": kind, "code": code, "message": message, "param": None}
        await self.send("error", error={**error, "event_id": event_id})

    async def _on_text(self, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.record.note_in("<invalid>")
            await self._error(
                "invalid_request_error",
                "The server could not parse the event: expected a JSON object with a 'type'.",
                "invalid_json",
            )
            return
        kind = event["type"]
        self.record.note_in(kind)
        event_id = event.get("event_id")
        if kind == "session.update":
            update = event.get("session")
            if isinstance(update, dict):
                self.session.update(update)
            await self.send("session.updated", session=self.session)
        elif kind == "conversation.item.create":
            await self._item_created(event.get("item"))
        elif kind == "input_audio_buffer.append":
            await self._append(event, event_id)
        elif kind == "input_audio_buffer.commit":
            item_id = random_id("item_", 22)
            await self.send(
                "input_audio_buffer.committed", previous_item_id=self._last_item, item_id=item_id
            )
            self._last_item = item_id
        elif kind == "input_audio_buffer.clear":
            await self.send("input_audio_buffer.cleared")
        elif kind == "response.create":
            response = event.get("response")
            await self._respond(response if isinstance(response, dict) else {})
        elif kind == "response.cancel":
            await self._error(
                "invalid_request_error",
                "Cancellation failed: no active response found",
                "response_cancel_not_active",
                event_id,
            )
        else:
            await self._error(
                "invalid_request_error",
                f"Invalid value: '{kind}'. Supported values are: "
                + ", ".join(f"'{name}'" for name in _CLIENT_EVENTS)
                + ".",
                "invalid_value",
                event_id,
            )

    async def _item_created(self, item: object) -> None:
        item = dict(item) if isinstance(item, dict) else {}
        item.setdefault("id", random_id("item_", 22))
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        self._text_in += count_tokens(item.get("content"))
        await self.send("conversation.item.created", previous_item_id=self._last_item, item=item)
        self._last_item = item["id"]

    async def _append(self, event: dict[str, Any], event_id: object) -> None:
        try:
            audio = base64.b64decode(str(event.get("audio", "")), validate=True)
        except (binascii.Error, ValueError):
            await self._error(
                "invalid_request_error",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                "invalid_value",
                str(event_id) if event_id is not None else None,
            )
            return
        self.record.audio_bytes_in += len(audio)

    async def _respond(self, request: dict[str, Any]) -> None:
        dialect = self.dialect
        call = self.call
        audio = "audio" in dialect.modalities(self.session, request)
        response_id = random_id("resp_", 22)
        item_id = random_id("item_", 22)
        tokens = reply_tokens(call.deployment.model, call.state.config.tokens)
        text = "".join(tokens)
        deltas = call.state.settings.realtime_audio_deltas if audio else 0
        pending: dict[str, Any] = {
            "object": "realtime.response",
            "id": response_id,
            "status": "in_progress",
            "status_details": None,
            "output": [],
            dialect.modalities_key: ["audio"] if audio else ["text"],
            "usage": None,
        }
        where = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        part_key = "transcript" if audio else "text"
        part_type = "audio" if audio else "text"
        await self.send("response.created", response=pending)
        message = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        await self.send(
            "response.output_item.added", response_id=response_id, output_index=0, item=message
        )
        await self.send("conversation.item.created", previous_item_id=self._last_item, item=message)
        await self.send(
            "response.content_part.added",
            **where,
            content_index=0,
            part={"type": part_type, part_key: ""},
        )
        delay = call.token_delay_ms / 1000
        for index, token in enumerate(tokens):
            if delay and index:
                await asyncio.sleep(delay)
            if index < deltas:
                await self.send(dialect.audio_delta, **where, content_index=0, delta=silence())
            delta_kind = dialect.transcript_delta if audio else dialect.text_delta
            await self.send(delta_kind, **where, content_index=0, delta=token)
        for _ in range(len(tokens), deltas):
            await self.send(dialect.audio_delta, **where, content_index=0, delta=silence())
        if audio:
            await self.send(dialect.audio_done, **where, content_index=0)
            await self.send(dialect.transcript_done, **where, content_index=0, transcript=text)
        else:
            await self.send(dialect.text_done, **where, content_index=0, text=text)
        part = {"type": part_type, part_key: text}
        await self.send("response.content_part.done", **where, content_index=0, part=part)
        content_type = dialect.audio_content if audio else dialect.text_content
        done_item = {**message, "status": "completed", "content": [{**part, "type": content_type}]}
        await self.send(
            "response.output_item.done", response_id=response_id, output_index=0, item=done_item
        )
        text_in = max(self._text_in, 1)
        audio_in = self.record.audio_bytes_in // AUDIO_DELTA_BYTES
        text_out = len(tokens)
        audio_out = deltas * _AUDIO_TOKENS_PER_DELTA
        spent = usage(text_in, audio_in, text_out, audio_out)
        final = {**pending, "status": "completed", "output": [done_item], "usage": spent}
        call.deployment.remaining(spent["total_tokens"], spend_request=True)
        await self.send("response.done", response=final)
        self._last_item = item_id


async def serve(call: Call) -> web.StreamResponse:
    """Accept the WebSocket and run the session (a 400 when the request is no upgrade)."""
    request, record = call.request, call.record
    ws = web.WebSocketResponse(protocols=("realtime",), max_msg_size=_MAX_FRAME)
    if not ws.can_prepare(request).ok:
        record.status = 400
        call.headers["Content-Type"] = JSON_CT
        return web.Response(status=400, body=_NOT_AN_UPGRADE, headers=call.headers)
    if call.latency_ms:
        await asyncio.sleep(call.latency_ms / 1000)
    # Azure's headers on the 101 (ids, region); a body's Content-Type has no place there.
    ws.headers.update((k, v) for k, v in call.headers.items() if k != "Content-Type")
    await ws.prepare(request)
    record.status = 101
    session = RealtimeSession(call, ws)
    sessions = call.state.open_sessions
    sessions.add(session)
    try:
        await session.run()
    finally:
        sessions.discard(session)
        if session.record.close_code is None and session.record.closed_by != "dropped":
            session.record.close_code = ws.close_code or WSCloseCode.ABNORMAL_CLOSURE
    return ws
