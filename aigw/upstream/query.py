"""Which query parameters of a client's request cross the gateway on a pass-through route.

SECURITY: an allowlist, like the headers' (``aigw.upstream.headers``). A query
string can carry a key (``?api-key=``, a consumer's ``?apikey=``); only the
listing and retrieval options of Azure's pass-through APIs (files, batches,
stored responses and chat completions, vector stores, fine-tuning) cross.
``api-version`` is the relay's own business and is never taken from here.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["PASSTHROUGH_QUERY", "passthrough_query"]

PASSTHROUGH_QUERY = frozenset(
    {
        "after",
        "before",
        "limit",
        "order",
        "purpose",
        "filter",
        "include",
        "include[]",
        "include_obfuscation",
        "stream",
        "starting_after",
        "metadata",
        "model",
    }
)
"""Query parameter names a pass-through route forwards."""


def passthrough_query(query: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The allowed (name, value) pairs of a client's parsed query, in order."""
    return tuple((name, value) for name, value in query if name in PASSTHROUGH_QUERY)
