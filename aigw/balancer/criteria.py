"""When a failed attempt moves on to the next target (``retry_after_s``, how long a 429 asks
to wait, is `aigw.upstream.retry_after`'s, re-exported).

``FailoverPolicy`` is ``balancer.failover_criteria`` compiled once per route. The
rules are nginx's ``proxy_next_upstream``, which Kong's ai-proxy-advanced uses:

* ``error``: a connect error, or the connection failing before the response head;
* ``timeout``: a connect or read timeout;
* ``invalid_header``: the upstream sent a broken or oversized response head;
* ``http_NNN``: the upstream answered that status;
* ``non_idempotent``: without it, a request whose method is not idempotent (POST,
  PATCH, anything but GET/HEAD/PUT/DELETE/OPTIONS/TRACE) moves on only when it was
  never sent: a connect error, connect timeout or TLS failure. Azure's API is all
  POST, so without it a 429 or 5xx never fails over (``aigw check`` warns).

aigw's own client errors (400, 401, 404 no route, 413) happen before any attempt
and are not failures at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from aigw.config.model import FailoverCriterion
from aigw.upstream.retry_after import MAX_RETRY_AFTER_S, retry_after_s

__all__ = [
    "IDEMPOTENT_METHODS",
    "MAX_RETRY_AFTER_S",
    "FailoverPolicy",
    "Failure",
    "FailureKind",
    "retry_after_s",
]

FailureKind = Literal[
    "connect_error", "connect_timeout", "error", "timeout", "invalid_header", "status"
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
"""RFC 9110 §9.2.2; any other method (POST, PATCH, ...) is treated as non-idempotent."""


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong with one attempt.

    Attributes:
        kind: ``connect_error`` (refused, unreachable, TLS failure), ``connect_timeout``,
            ``error`` (the connection failed after connecting, before the head),
            ``timeout`` (read timeout), ``invalid_header`` (a broken head), or
            ``status`` (the upstream answered ``status``).
        sent: Whether any byte of the request may have reached the upstream.
        status: The upstream's status when ``kind`` is ``status``.
    """

    kind: FailureKind
    sent: bool
    status: int | None = None


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    """A route's ``failover_criteria``, compiled.

    Attributes:
        statuses: Upstream statuses that move on (``http_429`` -> 429, ...).
        on_error: ``error``: connect errors and connections lost before the head.
        on_timeout: ``timeout``: connect and read timeouts.
        non_idempotent: ``non_idempotent``: a sent POST may move on too.
        on_invalid_header: ``invalid_header``: a broken upstream head.
    """

    statuses: frozenset[int]
    on_error: bool
    on_timeout: bool
    non_idempotent: bool
    on_invalid_header: bool = False

    @classmethod
    def from_criteria(cls, criteria: Iterable[FailoverCriterion]) -> FailoverPolicy:
        """Compile ``BalancerConfig.failover_criteria``."""
        names = set(criteria)
        return cls(
            statuses=frozenset(int(name[5:]) for name in names if name.startswith("http_")),
            on_error="error" in names,
            on_timeout="timeout" in names,
            non_idempotent="non_idempotent" in names,
            on_invalid_header="invalid_header" in names,
        )

    def moves_on(self, method: str, failure: Failure) -> bool:
        """Whether ``failure`` of a ``method`` request should be retried on the next target."""
        kind = failure.kind
        if kind == "status":
            matches = failure.status in self.statuses
        elif kind in ("connect_error", "error"):
            matches = self.on_error
        elif kind in ("connect_timeout", "timeout"):
            matches = self.on_timeout
        else:
            matches = self.on_invalid_header
        if not matches:
            return False
        # A connect-phase failure never sent anything, whatever the caller says.
        sent = failure.sent and kind not in ("connect_error", "connect_timeout")
        return not sent or self.non_idempotent or method in IDEMPOTENT_METHODS

    def would_fail_over_post(self) -> bool:
        """Whether anything after a POST was sent (a 429, a 5xx, a read timeout) moves it on.

        False means a POST route fails over only on connect failures: what
        ``aigw check`` warns about when the criteria list statuses.
        """
        return self.non_idempotent and bool(
            self.statuses or self.on_error or self.on_timeout or self.on_invalid_header
        )
