"""What one realtime session did, for its access-log line (written when it closes)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SessionStats"]


@dataclass(slots=True)
class SessionStats:
    """Counters of one relayed WebSocket session.

    Attributes:
        frames_in: Frames relayed from the client to the upstream.
        frames_out: Frames relayed from the upstream to the client.
        bytes_in: Payload bytes of ``frames_in``.
        bytes_out: Payload bytes of ``frames_out``.
        close_code: The WebSocket close code the session ended with (None: not closed
            cleanly by either side).
        closed_by: ``client``, ``upstream`` or ``gateway`` (a deadline or a bound).
        responses: ``response.done`` events seen (each adds its usage).
    """

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    close_code: int | None = None
    closed_by: str | None = None
    responses: int = 0
