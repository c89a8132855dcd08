"""The validated configuration of one route file: frozen, slotted, tuples instead of lists.

Field names are Kong's (``ai-proxy-advanced``) so a Kong config ports by copy and paste. These
objects are shared by every request on a route and never mutated; build request-local copies
instead (Kong's 3.9 "corrupted plugin config" bug came from doing otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "AiProxyAdvancedConfig",
    "AuthConfig",
    "LoggingConfig",
    "ModelConfig",
    "ModelOptions",
    "ParamLocation",
    "RouteConfig",
    "RouteFile",
    "RouteType",
    "StreamingMode",
    "TargetConfig",
]

RouteType = Literal["llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings", "preserve"]
StreamingMode = Literal["allow", "deny", "always"]
ParamLocation = Literal["query", "body"]


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Credentials injected upstream (``targets[].auth``).

    Attributes:
        header_name: Header to set, e.g. ``api-key``; set together with ``header_value``.
        header_value: The secret; excluded from ``repr``.
        param_name: Query or body parameter to set; set with the other two ``param_*`` fields.
        param_value: The secret; excluded from ``repr``.
        param_location: ``query`` or ``body``.
        allow_override: Keep a credential the client sent instead of replacing it.
    """

    header_name: str | None = None
    header_value: str | None = field(default=None, repr=False)  # secret: never in repr
    param_name: str | None = None
    param_value: str | None = field(default=None, repr=False)  # secret
    param_location: ParamLocation | None = None
    allow_override: bool = False


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """``targets[].model.options``.

    Attributes:
        azure_instance: Azure OpenAI resource name, the ``{name}`` in ``{name}.openai.azure.com``.
        azure_deployment_id: Deployment name in ``/openai/deployments/{id}/...``.
        azure_api_version: Fallback ``api-version``; a client-sent one wins.
        upstream_url: Full upstream URL replacing scheme, host, port and path.
        upstream_path: Path override (deprecated in Kong).
        max_tokens: Value forced into the request body.
        temperature: Value forced into the request body (0-5).
        top_p: Value forced into the request body (0-1).
    """

    azure_instance: str | None = None
    azure_deployment_id: str | None = None
    azure_api_version: str | None = None
    upstream_url: str | None = None
    upstream_path: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """``targets[].model``.

    Attributes:
        provider: Only ``azure``.
        name: The model name clients must use; ``None`` takes it from the request.
        options: Provider options.
        model_alias: Other body ``model`` values accepted as this model (Kong 3.14's
            ``model_alias``, one name or a list): e.g. the snapshot name LangChain sends.
    """

    provider: Literal["azure"]
    name: str | None
    options: ModelOptions
    model_alias: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``targets[].logging``.

    Attributes:
        log_statistics: Put token counts and latency in the access log.
        log_payloads: Put request and response bodies in the access log.
    """

    # NOTE: Kong defaults false; aigw's access log always carries tokens unless turned off.
    log_statistics: bool = True
    log_payloads: bool = False


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One entry of ``config.targets``.

    Attributes:
        route_type: What the route carries; ``preserve`` passes body and path through.
        auth: Credentials to inject.
        model: Provider, model name and options.
        logging: What to log.
        weight: Balancer weight (1-65535); kept for Kong compatibility, one target per route.
        connect_timeout: Milliseconds to connect upstream.
        write_timeout: Milliseconds to send the request.
        read_timeout: Milliseconds between reads of the response.
        description: Free text.
    """

    route_type: RouteType
    auth: AuthConfig
    model: ModelConfig
    logging: LoggingConfig
    weight: int = 100
    connect_timeout: int = 10_000  # ms
    write_timeout: int = 60_000  # ms
    # ms; = the openai SDK's own default read timeout, so the gateway never gives up before the
    # client does.
    read_timeout: int = 600_000
    description: str | None = None


@dataclass(frozen=True, slots=True)
class AiProxyAdvancedConfig:
    """The ``config`` of the ``ai-proxy-advanced`` plugin.

    Attributes:
        targets: Exactly one target for now.
        max_request_body_size: Bytes; 0 means unlimited (Kong semantics).
        response_streaming: ``allow`` (client decides), ``deny`` or ``always``.
        model_name_header: Send ``X-Kong-LLM-Model: {provider}/{model}`` on responses.
        ignore_body_model: Accept any body ``model`` (Azure itself ignores it on a
            deployment path); off by default, as in Kong.
    """

    targets: tuple[TargetConfig, ...]
    max_request_body_size: int = 8 * 1024 * 1024  # bytes; 0 = unlimited (Kong semantics)
    response_streaming: StreamingMode = "allow"
    model_name_header: bool = True
    ignore_body_model: bool = False


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """The ``route`` section.

    Attributes:
        name: ``[A-Za-z0-9._-]+``, unique across conf.d.
        paths: Path templates; ``/literal`` or ``~regex``. Checked in depth by the router.
        methods: Upper-cased HTTP methods; ``None`` matches any method.
    """

    name: str
    paths: tuple[str, ...]
    # None = any; upper-cased, validated against known HTTP methods.
    methods: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class RouteFile:
    """One validated file from conf.d.

    Attributes:
        source: The file path as given (for messages).
        digest: sha256 hex of the raw file bytes; hot reload skips files whose digest is unchanged.
        route: The route.
        proxy: The ``ai-proxy-advanced`` plugin config.
    """

    source: str  # the file path as given (for messages)
    digest: str  # sha256 hex of the raw file bytes (hot reload uses it to skip unchanged files)
    route: RouteConfig
    proxy: AiProxyAdvancedConfig
