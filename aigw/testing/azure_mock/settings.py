"""Knobs tests turn at run time through ``POST /_mock/settings`` (the config is frozen)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["MockSettings", "SettingsError"]


class SettingsError(ValueError):
    """A posted setting is unknown or out of range; the message says which."""


@dataclass(slots=True)
class MockSettings:
    """Sizes and pacing of generated binary answers.

    Attributes:
        speech_bytes: Size of each ``/audio/speech`` answer.
        speech_chunk_bytes: Speech is written in pieces of this size...
        speech_chunk_delay_ms: ...with this pause between two pieces, so a client can
            tell a relayed stream from a buffered one.
        realtime_audio_deltas: ``response.audio.delta`` events per realtime response
            (each 50 ms of 24 kHz pcm16: 2400 bytes).
    """

    speech_bytes: int = 48_000
    speech_chunk_bytes: int = 8_192
    speech_chunk_delay_ms: float = 5.0
    realtime_audio_deltas: int = 3

    def update(self, posted: object) -> None:
        """Apply a posted object of settings; nothing changes when one is refused."""
        if not isinstance(posted, dict):
            raise SettingsError("settings must be a JSON object")
        known = {field.name: field.type for field in fields(self)}
        unknown = set(posted) - set(known)
        if unknown:
            raise SettingsError(f"unknown settings: {sorted(unknown)}")
        for name, value in posted.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"{name!r} must be a number")
            minimum = 1 if name in ("speech_bytes", "speech_chunk_bytes") else 0
            if value < minimum:
                raise SettingsError(f"{name!r} must be >= {minimum}")
            if known[name] == "int" and value != int(value):
                raise SettingsError(f"{name!r} must be an integer")
        for name, value in posted.items():
            setattr(self, name, int(value) if known[name] == "int" else float(value))

    def to_json(self) -> dict[str, Any]:
        """The current settings."""
        return asdict(self)
