"""A request body sent upstream as it arrives, never held whole (multipart uploads)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

__all__ = ["BodyStream"]


class BodyStream(Protocol):
    """A body the upstream pool sends piece by piece.

    Attributes:
        length: The body's size in bytes when known in advance (sent as
            ``Content-Length``); None sends it ``Transfer-Encoding: chunked``.
    """

    length: int | None

    @property
    def received(self) -> int:
        """Body bytes received from the client so far (the access log's ``bytes_in``
        when no length was declared)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces in order; may be iterated once. Raises a ``GatewayError``
        (413, 408) when the client's body breaks a bound on the way."""
        ...
