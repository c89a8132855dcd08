"""The mock's control API under ``/_mock/``: what it recorded, the faults it will play, and
whether its port listens. The Azure API itself is `aigw.testing.azure_mock.app`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from aiohttp import web

from .faults import FaultSpecError, parse_fault
from .settings import SettingsError

if TYPE_CHECKING:
    from .app import MockState

__all__ = ["MockControl", "add_control_routes"]


class MockControl:
    """The ``/_mock/*`` handlers over one mock's state."""

    def __init__(self, state: MockState) -> None:
        self.state = state

    async def health(self, request: web.Request) -> web.Response:
        """``GET /_mock/health``."""
        return web.json_response({"ok": True})

    async def get_requests(self, request: web.Request) -> web.Response:
        """``GET /_mock/requests[?settle_ms=N]``; waits up to N ms for in-flight requests."""
        settle = request.query.get("settle_ms")
        if settle:
            try:
                timeout = float(settle) / 1000
            except ValueError:
                return web.json_response({"error": "settle_ms must be a number"}, status=400)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.state.idle.wait(), timeout)
        return web.json_response([record.to_json() for record in self.state.records])

    async def delete_requests(self, request: web.Request) -> web.Response:
        """``DELETE /_mock/requests``."""
        self.state.records.clear()
        return web.json_response({"ok": True})

    async def get_faults(self, request: web.Request) -> web.Response:
        """``GET /_mock/faults``: pending faults with their remaining counts."""
        return web.json_response(self.state.faults.to_json())

    async def post_faults(self, request: web.Request) -> web.Response:
        """``POST /_mock/faults`` with one fault object or a list of them."""
        try:
            posted = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        specs = posted if isinstance(posted, list) else [posted]
        try:
            parsed = [parse_fault(spec) for spec in specs]
        except FaultSpecError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for fault, count in parsed:
            self.state.faults.add(fault, count)
        return web.json_response({"ok": True, "pending": self.state.faults.to_json()})

    async def delete_faults(self, request: web.Request) -> web.Response:
        """``DELETE /_mock/faults``."""
        self.state.faults.clear()
        return web.json_response({"ok": True})

    async def get_sessions(self, request: web.Request) -> web.Response:
        """``GET /_mock/sessions``: the records of realtime sessions (open ones too)."""
        sessions = [r.to_json() for r in self.state.records if r.session is not None]
        return web.json_response(sessions)

    async def drop_sessions(self, request: web.Request) -> web.Response:
        """``POST /_mock/sessions/drop`` ``{"code": N | null, "rst": bool}``: end every
        open realtime session: with a close frame of *code*, or (``null``) by vanishing
        (the TCP connection closes, with a RST when ``rst``)."""
        try:
            posted = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(posted, dict) or set(posted) - {"code", "rst"}:
            return web.json_response(
                {"error": 'expected {"code": N|null, "rst": bool}'}, status=400
            )
        code, rst = posted.get("code"), posted.get("rst", False)
        valid_code = code is None or (
            isinstance(code, int) and not isinstance(code, bool) and 1000 <= code <= 4999
        )
        if not valid_code or not isinstance(rst, bool):
            return web.json_response({"error": "'code' must be 1000-4999 or null"}, status=400)
        sessions = list(self.state.open_sessions)
        for session in sessions:
            if code is None:
                session.drop(rst=rst)
            else:
                await session.close(code)
        return web.json_response({"ok": True, "sessions": len(sessions)})

    async def get_settings(self, request: web.Request) -> web.Response:
        """``GET /_mock/settings``: the run-time knobs (speech size and pacing...)."""
        return web.json_response(self.state.settings.to_json())

    async def post_settings(self, request: web.Request) -> web.Response:
        """``POST /_mock/settings`` with some of them; answers them all."""
        try:
            posted = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        try:
            self.state.settings.update(posted)
        except SettingsError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.state.settings.to_json())

    async def post_connections(self, request: web.Request) -> web.Response:
        """``POST /_mock/connections`` ``{"refuse": true, "for_ms": N | null}``: stop listening.

        New connections are refused (ECONNREFUSED) and open ones, idle or busy, are
        aborted, as when the region's process dies; after ``for_ms`` (``null``: until
        the CLI process gets SIGUSR1, or ``MockServer.accept_connections()``) the same
        port listens again. Only this request's connection is spared, to answer it
        (with ``Connection: close``).
        """
        try:
            posted = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(posted, dict) or posted.get("refuse") is not True:
            return web.json_response({"error": 'expected {"refuse": true}'}, status=400)
        unknown = set(posted) - {"refuse", "for_ms"}
        if unknown:
            return web.json_response({"error": f"unknown fields: {sorted(unknown)}"}, status=400)
        for_ms = posted.get("for_ms")
        if for_ms is not None and (
            isinstance(for_ms, bool) or not isinstance(for_ms, int | float) or for_ms <= 0
        ):
            message = "'for_ms' must be a positive number or null"
            return web.json_response({"error": message}, status=400)
        if self.state.listener is None:
            message = "refusing connections needs the mock's own server (MockServer or the CLI)"
            return web.json_response({"error": message}, status=501)
        # Refused before answering: a client that connects again as soon as it has
        # the answer must find the port closed.
        await self.state.listener.refuse_connections(
            None if for_ms is None else for_ms / 1000, spare=request.transport
        )
        return web.json_response({"ok": True}, headers={"Connection": "close"})


def add_control_routes(app: web.Application, state: MockState) -> None:
    """Adds the ``/_mock/*`` routes over *state* to *app*."""
    control = MockControl(state)
    app.router.add_get("/_mock/health", control.health)
    app.router.add_get("/_mock/requests", control.get_requests)
    app.router.add_delete("/_mock/requests", control.delete_requests)
    app.router.add_get("/_mock/faults", control.get_faults)
    app.router.add_post("/_mock/faults", control.post_faults)
    app.router.add_delete("/_mock/faults", control.delete_faults)
    app.router.add_post("/_mock/connections", control.post_connections)
    app.router.add_get("/_mock/sessions", control.get_sessions)
    app.router.add_post("/_mock/sessions/drop", control.drop_sessions)
    app.router.add_get("/_mock/settings", control.get_settings)
    app.router.add_post("/_mock/settings", control.post_settings)
