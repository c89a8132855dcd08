"""Configuration of the Azure OpenAI mock upstream."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["DEFAULT_API_KEY", "DEFAULT_DEPLOYMENTS", "MockConfig"]

DEFAULT_API_KEY = "mock-azure-key"

#: Deployment name -> model snapshot that Azure reports in the ``model`` field.
DEFAULT_DEPLOYMENTS: Mapping[str, str] = MappingProxyType(
    {
        "gpt-4o": "gpt-4o-2024-11-20",
        "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
        "text-embedding-3-small": "text-embedding-3-small",
        "gpt-35-turbo-instruct": "gpt-35-turbo-instruct-0914",
        "dall-e-3": "dall-e-3",
        "gpt-image-1": "gpt-image-1-2025-04-15",
        "tts": "tts-001",
        "whisper": "whisper-001",
        "gpt-4o-transcribe": "gpt-4o-transcribe-2025-03-20",
        "gpt-4o-realtime-preview": "gpt-4o-realtime-preview-2024-12-17",
    }
)


def _default_deployments() -> Mapping[str, str]:
    return DEFAULT_DEPLOYMENTS


@dataclass(frozen=True, slots=True, kw_only=True)
class MockConfig:
    """Everything that shapes the mock's behaviour; per-request changes go through faults.

    Attributes:
        api_key: The only ``api-key`` value accepted.
        bearer_token: Accepted ``Authorization: Bearer`` token when no ``api-key`` is sent.
            ``None`` rejects every bearer token with Azure's Entra 401 body (unless
            ``entra_secret`` accepts it).
        entra_secret: Also accept any bearer token that
            ``aigw.testing.entra.verify_token(token, entra_secret, now)`` finds valid:
            one issued with this secret by the local token endpoint and not expired.
            An expired or unknown token gets Azure's Entra 401 body.
        deployments: Deployment name -> model snapshot returned in ``model``.
        latency_ms: Delay before the response headers (non-stream) or first event (stream).
        token_delay_ms: Delay between two consecutive content chunks of a stream.
        tokens: Completion tokens generated when ``max_tokens`` does not cut earlier.
        embedding_dimensions: Vector length when the request has no ``dimensions``.
        region: Value of ``x-ms-region``.
        rate_limit_requests: Per-deployment ``x-ratelimit-limit-requests`` (per minute).
        rate_limit_tokens: Per-deployment ``x-ratelimit-limit-tokens`` (per minute).
        api_versions: Allow-list of ``api-version`` values; ``None`` accepts any
            ``YYYY-MM-DD`` or ``YYYY-MM-DD-preview``.
        enforce_operations: Refuse operations the model cannot do (chat on an embedding
            model, ...) with Azure's ``OperationNotSupported`` 400, as Azure does.
        record_limit: How many requests ``GET /_mock/requests`` keeps (oldest dropped);
            0 disables recording, e.g. for long benchmarks.
    """

    api_key: str = DEFAULT_API_KEY
    bearer_token: str | None = None
    entra_secret: str | None = None
    deployments: Mapping[str, str] = field(default_factory=_default_deployments)
    latency_ms: float = 0.0
    token_delay_ms: float = 0.0
    tokens: int = 8
    embedding_dimensions: int = 8
    region: str = "Sweden Central"
    rate_limit_requests: int = 4500
    rate_limit_tokens: int = 450_000
    api_versions: frozenset[str] | None = None
    enforce_operations: bool = True
    record_limit: int = 10_000

    def __post_init__(self) -> None:
        # A caller's dict must not be able to change a "frozen" config afterwards.
        object.__setattr__(self, "deployments", MappingProxyType(dict(self.deployments)))
        if not self.deployments:
            raise ValueError("at least one deployment is required")
        if self.tokens < 1:
            raise ValueError("tokens must be >= 1")
        if self.embedding_dimensions < 1:
            raise ValueError("embedding_dimensions must be >= 1")
        if self.latency_ms < 0 or self.token_delay_ms < 0:
            raise ValueError("latency_ms and token_delay_ms must be >= 0")
        if self.rate_limit_requests < 1 or self.rate_limit_tokens < 1:
            raise ValueError("rate limits must be >= 1")
        if self.record_limit < 0:
            raise ValueError("record_limit must be >= 0")
