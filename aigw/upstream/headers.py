"""Which headers cross the gateway, in each direction.

SECURITY: both directions are built from an allowlist, never by copying and
then removing. aiohttp's client sends every header it is given (hop-by-hop
headers, the client's own ``api-key``, a header named in ``Connection``), so a
denylist forgets something the day a client invents a header. What is not
listed here does not cross; in particular the client's ``api-key`` and
``Authorization`` never reach Azure, and Azure's ``Set-Cookie`` never reaches
the client.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ANSWERED_RESPONSE_POLICY",
    "ANSWER_HEADER_NAMES",
    "REQUEST_POLICY",
    "RESPONSE_POLICY",
    "HeaderPolicy",
]


class HeaderPolicy:
    """Decides, per header name, whether it crosses the gateway.

    PERF: the decision for a name is computed once and cached; clients send
    the same few dozen header names over and over, so the per-request cost is
    one dict lookup per header.
    """

    __slots__ = ("_cache", "_except", "_names", "_prefixes")

    _CACHE_LIMIT = 4096

    def __init__(
        self, names: Iterable[str], prefixes: Iterable[str], except_names: Iterable[str] = ()
    ) -> None:
        self._names = frozenset(n.lower() for n in names)
        self._prefixes = tuple(p.lower() for p in prefixes)
        self._except = frozenset(n.lower() for n in except_names)
        self._cache: dict[str, bool] = {}

    def without(self, names: Iterable[str]) -> HeaderPolicy:
        """This policy, except *names* (with their own cache)."""
        return HeaderPolicy(self._names, self._prefixes, self._except | set(names))

    def allows(self, name: str) -> bool:
        """True if a header called *name* may cross."""
        allowed = self._cache.get(name)
        if allowed is None:
            lower = name.lower()
            allowed = (
                lower in self._names or lower.startswith(self._prefixes)
            ) and lower not in self._except
            # Bounded, so a client sending random header names cannot grow it.
            if len(self._cache) < self._CACHE_LIMIT:
                self._cache[name] = allowed
        return allowed

    def filter(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The allowed subset of *headers*, in order."""
        # PERF: a plain loop with the cache inlined into a list runs in a
        # third of the time of CIMultiDict(generator) (17 SDK headers).
        cache = self._cache
        kept: list[tuple[str, str]] = []
        add = kept.append
        for item in headers:
            allowed = cache.get(item[0])
            if allowed is None:
                allowed = self.allows(item[0])
            if allowed:
                add(item)
        return kept


REQUEST_POLICY = HeaderPolicy(
    names=(
        "accept",
        "accept-language",
        "content-type",
        "user-agent",
        "traceparent",
        "tracestate",
        "baggage",
        "openai-organization",
        "openai-project",
        "openai-beta",
    ),
    # x-stainless-*: the SDK's retry count and runtime, useful in Azure-side
    # diagnostics; x-ms-* and aoai-*: Azure's own request options.
    prefixes=("x-stainless-", "x-ms-", "aoai-"),
)
"""Client request headers forwarded to the upstream."""

RESPONSE_POLICY = HeaderPolicy(
    names=(
        "content-type",
        "content-encoding",
        "apim-request-id",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "azureml-model-session",
        "openai-processing-ms",
    ),
    prefixes=("x-ratelimit-", "x-ms-", "ms-azureml-model-error-"),
)
"""Upstream response headers relayed to the client."""

ANSWER_HEADER_NAMES = (
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)
"""The headers aigw may answer with itself (``Exchange.response_headers``: a token quota's
state), which then replace the upstream's own of the same name."""

ANSWERED_RESPONSE_POLICY = RESPONSE_POLICY.without(ANSWER_HEADER_NAMES)
"""`RESPONSE_POLICY` for an answer that carries aigw's own ``ANSWER_HEADER_NAMES``."""
