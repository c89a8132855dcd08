"""Telling a WebSocket upgrade request from a plain HTTP one."""

from __future__ import annotations

from aiohttp import web

__all__ = ["is_websocket_upgrade"]


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """The client asks to switch this request to a WebSocket (``Upgrade: websocket``)."""
    return request.headers.get("Upgrade", "").lower() == "websocket"
