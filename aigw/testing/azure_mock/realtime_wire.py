"""Realtime API server events, in the two dialects Azure speaks: the preview one on
``/openai/realtime?api-version=…&deployment=…`` (``response.audio.delta``,
``response.text.delta``, ``modalities``) and the GA one on ``/openai/v1/realtime?model=…``
(``response.output_audio.delta``, ``response.output_text.delta``, ``output_modalities``),
which the openai SDK's ``client.realtime`` types describe."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["AUDIO_DELTA_BYTES", "GA", "PREVIEW", "Dialect", "initial_session", "usage"]

#: 50 ms of 24 kHz mono pcm16 per ``audio.delta``.
AUDIO_DELTA_BYTES: Final = 2400
_SILENCE: Final = base64.b64encode(bytes(AUDIO_DELTA_BYTES)).decode()
_TURN_DETECTION: Final = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 200,
    "create_response": True,
}


@dataclass(frozen=True, slots=True)
class Dialect:
    """The event names and field names of one API version of the Realtime API."""

    audio_delta: str
    audio_done: str
    transcript_delta: str
    transcript_done: str
    text_delta: str
    text_done: str
    modalities_key: str
    default_modalities: tuple[str, ...]
    audio_content: str
    text_content: str

    def modalities(self, session: Mapping[str, Any], response: Mapping[str, Any]) -> Sequence[str]:
        """What a response outputs: its own choice, else the session's."""
        chosen = response.get(self.modalities_key) or session.get(self.modalities_key)
        return chosen if isinstance(chosen, list) else self.default_modalities


PREVIEW: Final = Dialect(
    audio_delta="response.audio.delta",
    audio_done="response.audio.done",
    transcript_delta="response.audio_transcript.delta",
    transcript_done="response.audio_transcript.done",
    text_delta="response.text.delta",
    text_done="response.text.done",
    modalities_key="modalities",
    default_modalities=("text", "audio"),
    audio_content="audio",
    text_content="text",
)
GA: Final = Dialect(
    audio_delta="response.output_audio.delta",
    audio_done="response.output_audio.done",
    transcript_delta="response.output_audio_transcript.delta",
    transcript_done="response.output_audio_transcript.done",
    text_delta="response.output_text.delta",
    text_done="response.output_text.done",
    modalities_key="output_modalities",
    default_modalities=("audio",),
    audio_content="output_audio",
    text_content="output_text",
)


def silence() -> str:
    """One ``audio.delta``'s base64 payload."""
    return _SILENCE


def initial_session(dialect: Dialect, session_id: str, model: str) -> dict[str, Any]:
    """The session ``session.created`` announces."""
    expires_at = int(time.time()) + 1800
    if dialect is PREVIEW:
        return {
            "id": session_id,
            "object": "realtime.session",
            "model": model,
            "expires_at": expires_at,
            "modalities": list(PREVIEW.default_modalities),
            "instructions": "",
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "turn_detection": _TURN_DETECTION,
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
        }
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "expires_at": expires_at,
        "output_modalities": list(GA.default_modalities),
        "instructions": "",
        "audio": {
            "input": {
                "format": pcm,
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": _TURN_DETECTION,
            },
            "output": {"format": pcm, "voice": "alloy", "speed": 1.0},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "include": None,
    }


def usage(text_in: int, audio_in: int, text_out: int, audio_out: int) -> dict[str, Any]:
    """``response.done``'s ``response.usage``."""
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_tokens": text_in + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }
