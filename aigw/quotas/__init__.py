"""Token quotas (Kong's ``ai-rate-limiting-advanced``) (placeholder; being written)."""

from __future__ import annotations

from aigw.chain.exchange import Handler
from aigw.chain.info import RouteInfo
from aigw.config.model import TokenLimitConfig

__all__ = ["QuotaRegistry"]


class QuotaRegistry:
    """The process's quota state and Redis clients; owned by the app, never by a table."""

    def stage(
        self, info: RouteInfo, config: TokenLimitConfig, namespace: str, next_: Handler
    ) -> Handler:
        """Builds the token-limit stage for one route."""
        raise NotImplementedError
