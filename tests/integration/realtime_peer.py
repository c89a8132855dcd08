"""A scripted Azure Realtime upstream for tests: an aiohttp WebSocket server in a thread.

It speaks enough of Azure's realtime protocol for the openai SDK
(``session.created`` on open, ``conversation.item.created``,
``response.created`` / ``response.output_text.delta`` / ``response.done`` with
usage) and obeys test commands sent as client events of type ``test.*``:

* ``test.drop``: vanish (the TCP connection is aborted, no close frame);
* ``test.close`` ``{"code": n}``: close with code *n*;
* ``test.big`` ``{"size": n}``: send one text frame of *n* bytes;
* ``test.flood`` ``{"count": n, "size": m}``: send *n* frames of *m* bytes as fast as
  the gateway takes them;
* a binary frame is echoed back.

Every session is recorded (path, query, headers, subprotocols offered, frames
received, the close code it ended with). It runs in its own thread, so sync
and async tests use it alike.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

__all__ = ["USAGE", "PeerSession", "RealtimePeer"]

USAGE = {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}
"""The usage of every response the peer makes."""


@dataclass
class PeerSession:
    """What one upstream session saw."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    protocols: list[str]
    frames: list[Any] = field(default_factory=list)
    close_code: int | None = None
    ended: bool = False
    ended_at: float | None = None


class RealtimePeer:
    """The upstream; ``url`` is its origin (``http://127.0.0.1:port``)."""

    def __init__(self, *, protocol: str | None = "realtime") -> None:
        self.sessions: list[PeerSession] = []
        self.refuse: tuple[int, dict[str, str]] | None = None
        """When set: answer the next upgrades with this status and headers, no WebSocket."""
        self.redirect_to: str | None = None
        self._protocol = protocol
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("realtime peer did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None)
        assert sockets
        self.port = sockets[0].getsockname()[1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        if self.refuse is not None:
            status, headers = self.refuse
            return web.json_response(
                {"error": {"code": str(status), "message": "refused"}},
                status=status,
                headers=headers,
            )
        offered = [
            name.strip()
            for value in request.headers.getall("Sec-WebSocket-Protocol", ())
            for name in value.split(",")
        ]
        session = PeerSession(
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            protocols=offered,
        )
        self.sessions.append(session)
        protocols = (self._protocol,) if self._protocol else ()
        ws = web.WebSocketResponse(protocols=protocols, max_msg_size=0, heartbeat=None)
        await ws.prepare(request)
        await ws.send_json(
            {"type": "session.created", "event_id": "ev_0", "session": {"model": "gpt-realtime"}}
        )
        try:
            async for message in ws:
                if message.type is WSMsgType.BINARY:
                    session.frames.append(message.data)
                    await ws.send_bytes(message.data)
                    continue
                if message.type is not WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                session.frames.append(event)
                if await self._answer(ws, request, event):
                    break
        finally:
            session.close_code = ws.close_code
            session.ended = True
            session.ended_at = time.monotonic()
        return ws

    async def _answer(
        self, ws: web.WebSocketResponse, request: web.Request, event: dict[str, Any]
    ) -> bool:
        """Reacts to one client event; True when the session is over."""
        kind = event.get("type")
        if kind == "session.update":
            await ws.send_json({"type": "session.updated", "session": event.get("session", {})})
        elif kind == "conversation.item.create":
            await ws.send_json({"type": "conversation.item.created", "item": event.get("item")})
        elif kind == "response.create":
            response_id = f"resp_{len(self.sessions)}_{time.monotonic_ns()}"
            await ws.send_json(
                {
                    "type": "response.created",
                    "response": {"id": response_id, "status": "in_progress"},
                }
            )
            for word in ("Hello", " from", " the", " realtime", " peer"):
                await ws.send_json(
                    {
                        "type": "response.output_text.delta",
                        "response_id": response_id,
                        "delta": word,
                    }
                )
            audio = base64.b64encode(b"\x00\x01" * 64).decode()
            await ws.send_json({"type": "response.output_audio.delta", "delta": audio})
            await ws.send_json(
                {
                    "type": "response.done",
                    "response": {"id": response_id, "status": "completed", "usage": USAGE},
                }
            )
        elif kind == "test.drop":
            transport = request.transport
            assert transport is not None
            transport.abort()
            return True
        elif kind == "test.close":
            await ws.close(code=int(event["code"]), message=b"peer closes")
            return True
        elif kind == "test.big":
            await ws.send_str("x" * int(event["size"]))
        elif kind == "test.flood":
            filler = json.dumps({"type": "test.filler", "data": "y" * int(event["size"])})
            for _ in range(int(event["count"])):
                await ws.send_str(filler)
        return False

    def wait_ended(self, count: int = 1, timeout: float = 10.0) -> list[PeerSession]:
        """The first *count* sessions, once each has ended."""
        deadline = time.monotonic() + timeout
        while True:
            sessions = self.sessions[:count]
            if len(sessions) == count and all(s.ended for s in sessions):
                return sessions
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} upstream session(s) did not end in {timeout}s")
            time.sleep(0.02)

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
