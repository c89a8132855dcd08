"""What the client is told when the upstream call fails, and what the log keeps.

The HTTP relay and the realtime dialler fail the same ways before anything is
relayed (no connection, no answer in time, a TLS handshake refused, a broken
answer) and must say so in the same words, with the same ``ex.outcome``: a
balanced route fails over on the connect-phase ones, and ``aigw tail`` and
dashboards group by them. The client's message names no host and no detail,
only the request id to quote; the detail goes to the access log (``ex.error``).
"""

from __future__ import annotations

from aigw.chain.exchange import Exchange
from aigw.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable

__all__ = ["TOO_LARGE", "quoting", "upstream_failure"]

TOO_LARGE = "upstream_response_too_large"
"""The outcome of an upstream answer (body, stream or event) past aigw's size bounds."""

_LATE = "the upstream did not answer in time"
_BROKEN = "the upstream failed before answering"

# outcome -> (error class, code, what the client is told)
_ANSWERS: dict[str, tuple[type[GatewayError], str, str]] = {
    "upstream_connect_timeout": (
        UpstreamTimeout,
        "upstream_timeout",
        "the upstream did not answer in time",
    ),
    "upstream_timeout": (
        UpstreamTimeout,
        "upstream_timeout",
        "the upstream did not answer in time",
    ),
    "upstream_tls_error": (
        UpstreamUnavailable,
        "upstream_tls_error",
        "the TLS handshake with the upstream failed",
    ),
    "upstream_unreachable": (
        UpstreamUnavailable,
        "upstream_unreachable",
        "the upstream could not be reached",
    ),
    "upstream_error": (
        UpstreamUnavailable,
        "upstream_error",
        "the upstream failed before answering",
    ),
}


def quoting(ex: Exchange, what: str) -> str:
    """A client-facing message that gives no upstream detail, only the id to quote."""
    return f"{what}; quote request id {ex.request_id}"


def upstream_failure(ex: Exchange, outcome: str, detail: str) -> GatewayError:
    """Records *outcome* and *detail* (log only) on *ex*; returns the error to answer.

    Args:
        ex: The failed request.
        outcome: One of ``upstream_connect_timeout``, ``upstream_timeout``,
            ``upstream_tls_error``, ``upstream_unreachable``, ``upstream_error``.
        detail: What failed, with which host: for the access log, never the client.
    """
    ex.outcome = outcome
    ex.error = detail
    error_class, code, what = _ANSWERS[outcome]
    return error_class(code, quoting(ex, what))
