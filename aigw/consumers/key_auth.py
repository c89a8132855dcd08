"""Chain stage: ``key-auth`` (placeholder; being written)."""

from __future__ import annotations

from aigw.chain.exchange import Handler
from aigw.config.model import KeyAuthConfig

__all__ = ["key_auth"]


def key_auth(config: KeyAuthConfig, next_: Handler) -> Handler:
    """Builds the key-auth stage for one route."""
    raise NotImplementedError
