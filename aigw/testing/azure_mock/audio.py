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
from .payload import BadRequest, count_tokens
from .wire import JSON_CT, dumps, reply_tokens

__all__ = ["speech", "transcribe"]

_MAX_INPUT: Final = 4096
_TEXT_FORMATS: Final = ("json", "text", "srt", "verbose_json", "vtt")
# gpt-4o-transcribe speaks only these; whisper all of _TEXT_FORMATS.
_TOKEN_MODEL_FORMATS: Final = ("json", "text")
# "Audio" is priced by the mock at 16 kB per second and 1 token per kB.
_BYTES_PER_SECOND: Final = 16_000
_BYTES_PER_TOKEN: Final = 1_000
_TEXT_CT: Final = "text/plain; charset=utf-8"


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


async def transcribe(call: Call, payload: Mapping[str, Any]) -> web.Response:
    """``/audio/transcriptions`` and ``/audio/translations``: the form's ``file`` turned
    into ``{"text": …}`` (gpt-4o-transcribe adds token ``usage``), or the text, SRT or
    WebVTT, or whisper's ``verbose_json``."""
    form = call.form
    upload = form.files.get("file") if form is not None else None
    if upload is None:
        raise BadRequest(
            "Missing required parameter: 'file'.", "file", "missing_required_parameter"
        )
    model = call.deployment.model
    token_model = "transcribe" in model.lower()
    fmt = payload.get("response_format", "json")
    formats = _TOKEN_MODEL_FORMATS if token_model else _TEXT_FORMATS
    if fmt not in formats:
        if fmt in _TEXT_FORMATS:
            message = (
                f"response_format '{fmt}' is not compatible with model '{model}'."
                " Use 'json' or 'text' instead."
            )
        else:
            message = f"Invalid value: '{fmt}'. Supported values are: " + ", ".join(
                f"'{name}'" for name in formats
            )
        raise BadRequest(message, "response_format", "invalid_value")
    size = upload[1]
    tokens = call.state.config.tokens
    text = "".join(reply_tokens(model, tokens))
    duration = round(size / _BYTES_PER_SECOND, 2)
    prompt_tokens = count_tokens(payload.get("prompt"))
    audio_tokens = max(size // _BYTES_PER_TOKEN, 1)
    call.deployment.spend(call.headers, audio_tokens + prompt_tokens + tokens)
    if call.latency_ms:
        await asyncio.sleep(call.latency_ms / 1000)
    if fmt == "text":
        return call.ok((text + "\n").encode(), _TEXT_CT)
    if fmt in ("srt", "vtt"):
        return call.ok(_subtitles(fmt, text, duration).encode(), _TEXT_CT)
    body: dict[str, Any] = {"text": text}
    if fmt == "verbose_json":
        task = "translate" if call.op == "translations" else "transcribe"
        body = {
            "task": task,
            "language": "english",
            "duration": duration,
            "text": text,
            "segments": [
                {
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": duration,
                    "text": text,
                    "tokens": list(range(50364, 50364 + tokens)),
                    "temperature": 0.0,
                    "avg_logprob": -0.25,
                    "compression_ratio": 1.0,
                    "no_speech_prob": 0.01,
                }
            ],
        }
    elif token_model:
        input_tokens = audio_tokens + prompt_tokens
        body["usage"] = {
            "type": "tokens",
            "input_tokens": input_tokens,
            "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio_tokens},
            "output_tokens": tokens,
            "total_tokens": input_tokens + tokens,
        }
    return call.ok(dumps(body), JSON_CT)


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _subtitles(fmt: str, text: str, duration: float) -> str:
    if fmt == "srt":
        span = f"{_timestamp(0, ',')} --> {_timestamp(duration, ',')}"
        return f"1\n{span}\n{text}\n\n"
    span = f"{_timestamp(0, '.')} --> {_timestamp(duration, '.')}"
    return f"WEBVTT\n\n{span}\n{text}\n\n"
