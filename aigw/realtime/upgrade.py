"""Telling a WebSocket upgrade request from a plain HTTP one."""

from __future__ import annotations

import binascii
from base64 import b64decode

from aiohttp import web

__all__ = ["is_websocket_handshake", "is_websocket_upgrade"]

_VERSIONS = frozenset({"13", "8", "7"})


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """The client asks to switch this request to a WebSocket (``Upgrade: websocket``)."""
    return request.headers.get("Upgrade", "").lower() == "websocket"


def is_websocket_handshake(request: web.BaseRequest) -> bool:
    """A complete, valid opening handshake (RFC 6455 §4.2.1) that aiohttp will accept.

    Checked before the upstream is dialled, so a request that could never be
    upgraded costs no upstream connection.
    """
    if request.method != "GET" or not is_websocket_upgrade(request):
        return False
    headers = request.headers
    if "upgrade" not in headers.get("Connection", "").lower():
        return False
    if headers.get("Sec-WebSocket-Version", "") not in _VERSIONS:
        return False
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        return len(b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False
