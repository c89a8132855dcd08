"""The app-owned registry: one token source per distinct Entra identity."""

from __future__ import annotations

from aigw.config.model import AuthConfig

from .credentials import identity_of
from .tokens import TokenSource

__all__ = ["IdentityRegistry"]


class IdentityRegistry:
    """One ``TokenSource`` per distinct identity, shared by every route and kept across reloads.

    Created once by the server and handed to route compilation, like the quota
    registry: a reload that keeps a target's identity keeps its cached token.
    Sources are few (one per identity), so they are held until ``aclose``.
    Managed-identity variables (``IDENTITY_ENDPOINT``, ...) are read from the
    process environment, as azure-identity itself reads them.
    """

    def __init__(
        self,
        *,
        deadline_s: float = 10.0,
        backoff_s: float = 1.0,
    ) -> None:
        """
        Args:
            deadline_s: Passed to each ``TokenSource``.
            backoff_s: Passed to each ``TokenSource``.
        """
        self._deadline_s = deadline_s
        self._backoff_s = backoff_s
        self._sources: dict[tuple[str, ...], TokenSource] = {}

    def token_source(self, auth: AuthConfig) -> TokenSource:
        """The source of *auth*'s identity; the same object for every ``auth`` naming it.

        Raises:
            ValueError: *auth* names no Entra identity (or an incomplete one).
        """
        identity = identity_of(auth)
        source = self._sources.get(identity.key)
        if source is None:
            source = TokenSource(identity, deadline_s=self._deadline_s, backoff_s=self._backoff_s)
            self._sources[identity.key] = source
        return source

    async def aclose(self) -> None:
        """Closes every source's credential (and its HTTP session)."""
        sources = list(self._sources.values())
        self._sources.clear()
        for source in sources:
            await source.aclose()
