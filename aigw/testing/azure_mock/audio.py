"""Audio: text to speech (``/audio/speech``: JSON in, audio bytes out in timed chunks)
and transcription / translation (``/audio/transcriptions``, ``/audio/translations``:
multipart in, text or JSON out)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from .call import Call
from .media_wire import AUDIO_CONTENT_TYPES, speech_chunks
from .payload import BadRequest

__all__ = ["speech"]

_MAX_INPUT: Final = 4096


def _required_string(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"Missing required parameter: '{key}'.", key, "missing_required_parameter")
    return value


async def speech(call: Call, payload: Mapping[str, Any]) -> web.StreamResponse:
    """``/audio/speech``: ``speech_bytes`` of audio, written ``speech_chunk_bytes`` at a
    time with ``speech_chunk_delay_ms`` between pieces (a ``delay`` fault's
    ``token_delay_ms`` overrides it), chunked as the service sends it."""
    text = _required_string(payload, "input")
    if len(text) > _MAX_INPUT:
        raise BadRequest(
            f"Invalid 'input': string too long. Expected a string with maximum length"
            f" {_MAX_INPUT}, but got a string with length {len(text)} instead.",
            "input",
            "string_above_max_length",
        )
    _required_string(payload, "voice")
    fmt = payload.get("response_format", "mp3")
    if fmt not in AUDIO_CONTENT_TYPES:
        raise BadRequest(
            f"Invalid value: '{fmt}'. Supported values are: "
            + ", ".join(f"'{name}'" for name in AUDIO_CONTENT_TYPES)
            + ".",
            "response_format",
            "invalid_value",
        )
    speed = payload.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4:
        raise BadRequest(
            "Invalid 'speed': expected a number between 0.25 and 4.0.", "speed", "invalid_value"
        )
    settings = call.state.settings
    call.deployment.spend(call.headers, 0)
    delay_ms = call.token_delay_ms or settings.speech_chunk_delay_ms
    if call.latency_ms:
        await asyncio.sleep(call.latency_ms / 1000)
    headers = call.headers
    headers["Content-Type"] = AUDIO_CONTENT_TYPES[fmt]
    response = web.StreamResponse(status=200, headers=headers)
    response.enable_chunked_encoding()
    call.record.status = 200
    try:
        await response.prepare(call.request)
        chunks = speech_chunks(fmt, text, settings.speech_bytes, settings.speech_chunk_bytes)
        for index, chunk in enumerate(chunks):
            if index and delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        call.record.client_gone()
        return response
    call.record.stream_outcome = "completed"
    return response
