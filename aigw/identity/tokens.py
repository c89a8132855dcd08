"""One identity's access token: cached, refreshed before expiry, one fetch at a time.

A token's life, with ``margin = min(5 min, 10 % of its lifetime)``, but at least
1 s (a request under load can take that long to reach Azure with the token) and
at most half the lifetime (short tokens, as in tests, are still used):

* until ``expires_on - margin`` it is fresh: ``token()`` returns it at once;
* then, until ``expires_on - margin / 2``, it is still handed out while one
  fetch runs in the background;
* after that (and when there is none) callers wait for the fetch, all of them
  for the same one, under a deadline. An expired token is never returned:
  Kong's enterprise plugin reused expired managed-identity tokens and Azure
  answered 401.

A failed fetch starts a back-off (doubling from ``backoff_s``): callers that
need a token during it get ``TokenUnavailable`` at once instead of each
knocking on a token endpoint that just failed.

azure-identity credentials keep their own token cache, which knows nothing of a
token the upstream refused or of aigw's refresh margin: when a fetch gets back
the very token it was meant to replace, the credential is swapped for a new one
(empty cache) and asked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Final

from azure.core.credentials_async import AsyncSupportsTokenInfo
from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError

from aigw.logs import get_logger

from .credentials import SCOPE, Identity

__all__ = ["TokenSource", "TokenUnavailable"]

_log = get_logger("aigw.identity")

_MAX_MARGIN_S: Final = 300.0
_MARGIN_FRACTION: Final = 0.1
_MIN_MARGIN_S: Final = 1.0
_MAX_BACKOFF_FACTOR: Final = 16


class TokenUnavailable(Exception):
    """No usable token: the token endpoint failed, hung past the deadline, or is backing off.

    Attributes:
        endpoint: The token endpoint (URL without secrets), for the 502 message.
        reason: Short machine-readable cause (``timeout``, ``connect_error``, ...).
    """

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"Microsoft Entra token endpoint {endpoint} unavailable ({reason})")
        self.endpoint = endpoint
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)  # SECURITY: never in a repr or log
    expires_on: float  # epoch seconds
    refresh_at: float  # epoch seconds: fetch in the background from here
    stale_at: float  # epoch seconds: no longer handed out from here


class TokenSource:
    """Bearer tokens of one identity for scope ``https://cognitiveservices.azure.com/.default``.

    Shared by every target that uses the identity; created by ``IdentityRegistry``.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        deadline_s: float = 10.0,
        backoff_s: float = 1.0,
    ) -> None:
        """
        Args:
            identity: Whose tokens.
            deadline_s: A fetch that has not finished by then fails (``timeout``).
            backoff_s: Wait after a first failure before fetching again; doubles
                with each further failure, up to 16 times this, and resets on success.
        """
        self.identity = identity
        self._deadline_s = deadline_s
        self._backoff_s = backoff_s
        self._credential: AsyncSupportsTokenInfo | None = None
        self._cached: _Token | None = None
        self._refused: str | None = None  # the last token invalidated; a fetch must not return it
        self._fetch: asyncio.Task[_Token] | None = None
        self._failures = 0
        self._backoff_until = 0.0  # monotonic
        self._last_reason = ""
        self._closed = False

    def __repr__(self) -> str:
        return f"TokenSource({self.identity.kind}, client_id={self.identity.client_id!r})"

    async def token(self) -> str:
        """A token valid for a while yet; waits for a fetch only when there is none.

        Raises:
            TokenUnavailable: The fetch failed or timed out, or one just did (back-off).
        """
        cached = self._cached
        # PERF: the common case is one clock read and one comparison.
        now = time.time()
        if cached is not None and now < cached.refresh_at:
            return cached.value
        return await self._renewed(cached, now)

    def invalidate(self, token: str) -> None:
        """Drops *token* (the upstream refused it) if it is still the cached one."""
        cached = self._cached
        if cached is not None and cached.value == token:
            self._cached = None
            self._refused = token

    async def aclose(self) -> None:
        """Cancels a fetch in flight and closes the credential's HTTP session."""
        self._closed = True
        fetch, self._fetch = self._fetch, None
        if fetch is not None:
            fetch.cancel()
            with contextlib.suppress(BaseException):
                await fetch
        credential, self._credential = self._credential, None
        if credential is not None:
            await credential.close()
        self._cached = None

    async def _renewed(self, cached: _Token | None, now: float) -> str:
        usable = cached is not None and now < cached.stale_at
        backing_off = time.monotonic() < self._backoff_until
        if cached is not None and usable:
            if self._fetch is None and not backing_off:
                self._start_fetch().add_done_callback(_retrieve)
            return cached.value
        if self._fetch is None:
            if backing_off:
                raise TokenUnavailable(self.identity.endpoint, self._last_reason)
            self._start_fetch()
        assert self._fetch is not None
        try:
            # shield: a caller that gives up (client gone) must not cancel the
            # fetch every other caller is waiting for.
            fresh = await asyncio.shield(self._fetch)
        except TokenUnavailable as exc:
            # A new exception per caller: one instance raised in many tasks
            # would collect all their tracebacks.
            raise TokenUnavailable(exc.endpoint, exc.reason) from None
        return fresh.value

    def _start_fetch(self) -> asyncio.Task[_Token]:
        if self._closed:
            raise TokenUnavailable(self.identity.endpoint, "closed")
        replacing = self._cached.value if self._cached is not None else self._refused
        task = asyncio.get_running_loop().create_task(self._run_fetch(replacing))
        self._fetch = task
        return task

    async def _run_fetch(self, replacing: str | None) -> _Token:
        started = time.monotonic()
        try:  # every failure, whatever its type, becomes TokenUnavailable
            async with asyncio.timeout(self._deadline_s):
                fresh = await self._fetch_once(replacing)
        except Exception as exc:
            raise self._failed(exc, started) from None
        finally:
            self._fetch = None
        self._cached, self._refused = fresh, None
        self._failures, self._backoff_until = 0, 0.0
        _log.info(
            "entra_token_fetched",
            identity=self.identity.kind,
            client_id=self.identity.client_id,
            endpoint=self.identity.endpoint_host,
            expires_in=round(fresh.expires_on - time.time(), 1),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return fresh

    async def _fetch_once(self, replacing: str | None) -> _Token:
        fetched_at = time.time()
        info = await self._credential_now().get_token_info(SCOPE)
        if replacing is not None and info.token == replacing:
            # The credential's own cache answered with the token being replaced.
            await self._drop_credential()
            info = await self._credential_now().get_token_info(SCOPE)
        expires_on = float(info.expires_on)
        lifetime = expires_on - fetched_at
        if lifetime <= 0:
            raise _ExpiredOnArrival
        margin = min(_MAX_MARGIN_S, lifetime / 2, max(_MARGIN_FRACTION * lifetime, _MIN_MARGIN_S))
        return _Token(info.token, expires_on, expires_on - margin, expires_on - margin / 2)

    def _credential_now(self) -> AsyncSupportsTokenInfo:
        if self._credential is None:
            self._credential = self.identity.build(self._deadline_s)
        return self._credential

    async def _drop_credential(self) -> None:
        credential, self._credential = self._credential, None
        if credential is not None:
            await credential.close()

    def _failed(self, exc: Exception, started: float) -> TokenUnavailable:
        reason = _reason(exc)
        self._failures += 1
        factor = min(2 ** (self._failures - 1), _MAX_BACKOFF_FACTOR)
        self._backoff_until = time.monotonic() + self._backoff_s * factor
        self._last_reason = reason
        _log.warning(
            "entra_token_failed",
            identity=self.identity.kind,
            client_id=self.identity.client_id,
            endpoint=self.identity.endpoint_host,
            reason=reason,
            failures=self._failures,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return TokenUnavailable(self.identity.endpoint, reason)


class _ExpiredOnArrival(Exception):
    """The endpoint answered a token that had already expired (clock skew or a bad endpoint)."""


def _reason(exc: BaseException) -> str:
    # Only the class names: azure-identity's messages can quote the endpoint's
    # answer, which is not ours to log.
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, _ExpiredOnArrival):
        return "token_expired_on_arrival"
    if isinstance(exc, CredentialUnavailableError):
        return "credential_unavailable"
    if isinstance(exc, ServiceRequestError):
        return "connect_error"
    if isinstance(exc, ServiceResponseError):
        return "response_error"
    if isinstance(exc, ClientAuthenticationError):
        status = exc.status_code
        return f"http_{status}" if status else "authentication_failed"
    return type(exc).__name__


def _retrieve(task: asyncio.Task[_Token]) -> None:
    # A background refresh's failure is logged and backs off in _failed; this
    # only keeps asyncio from reporting it as never retrieved.
    if not task.cancelled():
        task.exception()
