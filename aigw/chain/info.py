"""What a chain knows about its route: the static facts logs and errors quote."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["UNMATCHED", "RouteInfo"]


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """Static facts about a route, bound into its chain at compile time.

    Attributes:
        name: ``route.name`` from the config file.
        source: The config file the route came from.
        provider: ``model.provider``.
        model: The configured ``model.name`` (None for pass-through, and when
            templated: each request's is on ``ex.resolved``).
        deployment: The Azure deployment id, when known at load (None when
            templated, as ``model``).
        route_type: ``llm/v1/chat`` and friends, or ``preserve``.
        log_statistics: Log token usage and model fields.
        log_payloads: Log request and response bodies (off unless configured).
    """

    name: str
    source: str
    provider: str | None
    model: str | None
    deployment: str | None
    route_type: str | None
    log_statistics: bool = True
    log_payloads: bool = False


UNMATCHED = RouteInfo(
    name="-",
    source="-",
    provider=None,
    model=None,
    deployment=None,
    route_type=None,
    log_statistics=False,  # nothing was forwarded: no model or tokens to report
)
"""The info for requests that matched no route."""
