"""A deployment: the model it serves, what that model can do, its response headers and
its per-minute rate-limit window."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

from .config import MockConfig
from .wire import JSON_CT, Operation

__all__ = ["HSTS", "Deployment", "operations_for"]

HSTS: Final = "max-age=31536000; includeSubDomains; preload"

_CHAT_OPS: Final[frozenset[Operation]] = frozenset({"chat", "responses"})


def operations_for(model: str) -> frozenset[Operation]:
    """What Azure lets a deployment of *model* do (anything else: ``OperationNotSupported``)."""
    lowered = model.lower()
    if "embedding" in lowered:
        return frozenset({"embeddings"})
    if "instruct" in lowered or lowered.startswith(("davinci", "babbage")):
        return frozenset({"completions"})
    if lowered.startswith("dall-e"):
        return frozenset({"images"})
    if lowered.startswith("gpt-image"):
        return frozenset({"images", "image_edits"})
    # Before the chat default: gpt-4o-mini-tts, gpt-4o-transcribe and gpt-4o-realtime
    # are gpt-4o by name only.
    if "tts" in lowered:
        return frozenset({"speech"})
    if lowered.startswith("whisper"):
        return frozenset({"transcriptions", "translations"})
    if "transcribe" in lowered:
        return frozenset({"transcriptions"})
    if "realtime" in lowered:
        return frozenset({"realtime"})
    return _CHAT_OPS


class Deployment:
    """A deployment's static response headers and its per-minute rate-limit window."""

    __slots__ = ("_requests", "_tokens", "_window", "headers", "model", "name", "operations")

    def __init__(self, name: str, model: str, config: MockConfig) -> None:
        self.name = name
        self.model = model
        self.operations = operations_for(model) if config.enforce_operations else None
        self.headers: Mapping[str, str] = {
            "Content-Type": JSON_CT,
            "Cache-Control": "no-cache, must-revalidate",
            "access-control-allow-origin": "*",
            "Strict-Transport-Security": HSTS,
            "x-content-type-options": "nosniff",
            "x-ms-region": config.region,
            "x-ms-deployment-name": name,
            "x-ms-rai-invoked": "true",
            "x-ratelimit-limit-requests": str(config.rate_limit_requests),
            "x-ratelimit-limit-tokens": str(config.rate_limit_tokens),
        }
        self._requests = config.rate_limit_requests
        self._tokens = config.rate_limit_tokens
        self._window = (0.0, 0, 0)

    def remaining(self, spend_tokens: int = 0, *, spend_request: bool = False) -> tuple[int, int]:
        """Remaining (requests, tokens) in the current minute, after spending the given amounts.

        Nothing is refused when a bucket runs dry: throttling is a fault tests ask for.
        """
        now = time.monotonic()
        start, requests, tokens = self._window
        if now - start >= 60.0:
            start, requests, tokens = now, 0, 0
        requests += spend_request
        tokens += spend_tokens
        self._window = (start, requests, tokens)
        return max(self._requests - requests, 0), max(self._tokens - tokens, 0)

    def spend(self, headers: dict[str, str], tokens: int) -> None:
        """Count one request of *tokens* and write the remaining budget into *headers*."""
        requests_left, tokens_left = self.remaining(tokens, spend_request=True)
        headers["x-ratelimit-remaining-requests"] = str(requests_left)
        headers["x-ratelimit-remaining-tokens"] = str(tokens_left)
