"""Per-request bounds on time and memory that are process settings, not route config.

Routes say where to forward; these say how long a client or an upstream may
hold the gateway's resources, and how many bytes any one request may make it
buffer. They come from the command line (``aigw serve --client-body-timeout``
and friends, see the README's "Limits and timeouts" table), are fixed for the
life of the process and are bound into every route's chain when it is
compiled, so a request reads them from its closure, never from a lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Time and size bounds applied to every request.

    Attributes:
        client_body_timeout: Seconds the client may stay silent between two
            reads of its request body (nginx ``client_body_timeout``).
        client_body_total_timeout: Seconds the whole request body may take,
            however steadily it trickles in.
        max_response_size: Largest upstream response body relayed, in bytes;
            a longer one is cut and ends as an error. 0 means no limit.
        max_event_size: Largest single server-sent event accepted from the
            upstream, in bytes (Azure's are a few KiB); a larger one ends the
            stream with an error event.
        max_buffered_request_bytes: Request-body bytes one worker holds at
            once, all requests together (``aigw.chain.body_budget``); past it
            the body stalled longest is answered 503 and dropped.
    """

    client_body_timeout: float = 60.0
    client_body_total_timeout: float = 300.0
    max_response_size: int = 256 * MiB
    max_event_size: int = 1 * MiB
    # Per worker: 256 concurrent 1 MiB prompts, or thousands of usual ones. A
    # full budget, with the parsed and rewritten copies a chat route adds for
    # completed bodies, stays inside the systemd unit's 1 GiB MemoryMax for one
    # worker; with --workers N, lower it to about 256 MiB / N.
    max_buffered_request_bytes: int = 256 * MiB

    def __post_init__(self) -> None:
        for name in ("client_body_timeout", "client_body_total_timeout"):
            value = getattr(self, name)
            # Zero or negative would read as "no deadline" or "fail at once";
            # neither is a safe thing to get by accident.
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.max_response_size < 0:
            raise ValueError(f"max_response_size must be >= 0, got {self.max_response_size}")
        if self.max_event_size < 1024:
            raise ValueError(f"max_event_size must be >= 1024, got {self.max_event_size}")
        if self.max_buffered_request_bytes < MiB:
            # Below one chat request with a long prompt: the gateway would
            # refuse ordinary traffic.
            raise ValueError(
                "max_buffered_request_bytes must be >= 1 MiB, "
                f"got {self.max_buffered_request_bytes}"
            )


DEFAULT_LIMITS = Limits()
"""The limits ``aigw serve`` uses when no flag changes them."""
