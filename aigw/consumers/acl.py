"""Chain stage: ``acl`` (placeholder; being written)."""

from __future__ import annotations

from aigw.chain.exchange import Handler
from aigw.config.model import AclConfig

__all__ = ["acl"]


def acl(route: str, config: AclConfig, next_: Handler) -> Handler:
    """Builds the ACL stage for one route."""
    raise NotImplementedError
