"""The validated configuration of one route file: frozen, slotted, tuples instead of lists.

Field names are Kong's (``ai-proxy-advanced``) so a Kong config ports by copy and paste. These
objects are shared by every request on a route and never mutated; build request-local copies
instead (Kong's 3.9 "corrupted plugin config" bug came from doing otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "AccessPlugins",
    "AclConfig",
    "AiProxyAdvancedConfig",
    "AuthConfig",
    "BalancerAlgorithm",
    "BalancerConfig",
    "ConfFile",
    "ConsumerConfig",
    "ConsumerFile",
    "FailoverCriterion",
    "GlobalPluginsFile",
    "KeyAuthConfig",
    "KeyCredential",
    "LimitIdentifier",
    "LoggingConfig",
    "ModelConfig",
    "ModelOptions",
    "ParamLocation",
    "ProviderLimit",
    "RedisConfig",
    "RouteConfig",
    "RouteFile",
    "RouteType",
    "StreamingMode",
    "TargetConfig",
    "TokenLimitConfig",
    "TokensCountStrategy",
    "WindowType",
]

RouteType = Literal[
    "llm/v1/chat",
    "llm/v1/completions",
    "llm/v1/embeddings",
    "llm/v1/responses",
    "image/v1/images/generations",
    "image/v1/images/edits",
    "audio/v1/audio/speech",
    "audio/v1/audio/transcriptions",
    "audio/v1/audio/translations",
    "realtime/v1/realtime",
    "preserve",
    "auto",
]
"""Kong's route types (``aigw.apis.operations`` holds what each means), ``preserve``
(pass-through) and ``auto`` (a model route: the operation comes from the request path)."""
StreamingMode = Literal["allow", "deny", "always"]
ParamLocation = Literal["query", "body"]
LimitIdentifier = Literal["consumer", "credential", "ip", "header"]
WindowType = Literal["sliding", "fixed"]
TokensCountStrategy = Literal["total_tokens", "prompt_tokens", "completion_tokens"]


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
        azure_use_managed_identity: Authenticate with Microsoft Entra ID instead of a key:
            ``Authorization: Bearer <token>`` for scope
            ``https://cognitiveservices.azure.com/.default``. With only this set: the
            system-assigned managed identity (or workload identity, where its environment
            is present).
        azure_client_id: With managed identity alone, the user-assigned identity's client
            id; with ``azure_client_secret`` and ``azure_tenant_id``, the app registration.
        azure_client_secret: The app registration's secret; excluded from ``repr``.
        azure_tenant_id: The app registration's tenant.
    """

    header_name: str | None = None
    header_value: str | None = field(default=None, repr=False)  # secret: never in repr
    param_name: str | None = None
    param_value: str | None = field(default=None, repr=False)  # secret
    param_location: ParamLocation | None = None
    allow_override: bool = False
    azure_use_managed_identity: bool = False
    azure_client_id: str | None = None
    azure_client_secret: str | None = field(default=None, repr=False)  # secret
    azure_tenant_id: str | None = None


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
        weight: Balancer weight (1-65535): a share of round-robin traffic; in ``priority``,
            the targets of the highest weight are tried first.
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


BalancerAlgorithm = Literal[
    "round-robin",
    "priority",
    "lowest-latency",
    "lowest-usage",
    "least-connections",
    "consistent-hashing",
]
FailoverCriterion = Literal[
    "error",
    "timeout",
    "invalid_header",
    "http_403",
    "http_404",
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "non_idempotent",
]


@dataclass(frozen=True, slots=True)
class BalancerConfig:
    """``config.balancer``: how a route picks among its targets and when it tries the next.

    Field names, defaults and meanings are Kong's (ai-proxy-advanced).

    Attributes:
        algorithm: How a target is picked.
        retries: Further attempts after the first.
        failover_criteria: What moves a request to the next target (nginx's
            ``proxy_next_upstream``): without ``non_idempotent``, a POST moves on only when
            it was never sent (connect error or timeout).
        max_fails: Failures within ``fail_timeout`` that eject a target (0: never).
        fail_timeout: Milliseconds: the failure window and how long an ejection lasts.
        hash_on_header: The header whose value ``consistent-hashing`` hashes.
        latency_strategy: ``lowest-latency``'s measure: time per output token or end to end.
        tokens_count_strategy: ``lowest-usage``'s measure.
    """

    algorithm: BalancerAlgorithm = "round-robin"
    retries: int = 5
    failover_criteria: tuple[FailoverCriterion, ...] = ("error", "timeout")
    max_fails: int = 0
    fail_timeout: int = 10_000  # ms
    hash_on_header: str = "X-Kong-LLM-Request-ID"
    latency_strategy: Literal["tpot", "e2e"] = "tpot"
    tokens_count_strategy: Literal["total-tokens", "prompt-tokens", "completion-tokens"] = (
        "total-tokens"
    )


@dataclass(frozen=True, slots=True)
class AiProxyAdvancedConfig:
    """The ``config`` of the ``ai-proxy-advanced`` plugin.

    Attributes:
        targets: The deployments the route forwards to; several make a pool.
        balancer: How the pool is used; None with one target (exactly today's behaviour).
        max_request_body_size: Bytes; 0 means unlimited (Kong semantics).
        response_streaming: ``allow`` (client decides), ``deny`` or ``always``.
        model_name_header: Send ``X-Kong-LLM-Model: {provider}/{model}`` on responses.
        ignore_body_model: Accept any body ``model`` (Azure itself ignores it on a
            deployment path); off by default, as in Kong.
    """

    targets: tuple[TargetConfig, ...]
    balancer: BalancerConfig | None = None
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
            May be empty on a model route.
        methods: Upper-cased HTTP methods; ``None`` matches any method.
        models: The model names this route serves on the model-in-body APIs
            (``/openai/v1/…``, ``/openai/responses``, realtime's ``deployment``/``model``
            query): the body's ``model`` picks the route (``aigw.apis.dispatch``).
        deployment_paths: On a model route, also serve the classic
            ``/openai/deployments/{model}/…`` paths of each model (the default), so one
            file covers both SDK styles.
    """

    name: str
    paths: tuple[str, ...]
    # None = any; upper-cased, validated against known HTTP methods.
    methods: tuple[str, ...] | None = None
    models: tuple[str, ...] = ()
    deployment_paths: bool = True


@dataclass(frozen=True, slots=True)
class KeyAuthConfig:
    """The ``key-auth`` plugin: who is calling, from a consumer key.

    Attributes:
        key_names: Header (and query parameter) names that may carry the key, tried in
            order. ``authorization`` takes ``Bearer <key>``; any other name the bare key.
        key_in_header: Look for the key in the request headers.
        key_in_query: Look for the key in the query string (off by default: query strings
            end up in other proxies' logs).
    """

    key_names: tuple[str, ...] = ("apikey",)
    key_in_header: bool = True
    key_in_query: bool = False


@dataclass(frozen=True, slots=True)
class AclConfig:
    """The ``acl`` plugin: which consumer groups may use the route.

    Exactly one of ``allow`` and ``deny`` is set (Kong's rule).

    Attributes:
        allow: Groups allowed; a consumer in none of them is refused.
        deny: Groups refused; every other authenticated consumer is allowed.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``ai-rate-limiting-advanced``'s ``config.redis``: where shared counters live.

    Attributes:
        host: Redis host.
        port: Redis port.
        database: Database number.
        username: ACL user name (Redis 6+).
        password: The password; excluded from ``repr``.
        timeout: Milliseconds for connecting and for each round trip (Kong's default 2000).
        ssl: Speak TLS to Redis.
        ssl_verify: Verify the server certificate (with ``ssl``).
    """

    host: str = "127.0.0.1"
    port: int = 6379
    database: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # secret
    timeout: int = 2000  # ms
    ssl: bool = False
    ssl_verify: bool = True


@dataclass(frozen=True, slots=True)
class ProviderLimit:
    """One entry of ``llm_providers``: token limits per window for one provider.

    Attributes:
        name: The provider (``azure``).
        limit: Tokens allowed per window, one per ``window_size``.
        window_size: Window lengths in seconds, as many as ``limit``.
    """

    name: str
    limit: tuple[int, ...]
    window_size: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TokenLimitConfig:
    """The ``ai-rate-limiting-advanced`` plugin: token quotas per window.

    Attributes:
        llm_providers: Limits per provider; aigw's routes are all ``azure``.
        identifier: Whose tokens are counted: the consumer, the credential (key), the
            client IP, or a header's value.
        header_name: The header, for ``identifier: header``.
        strategy: ``local`` (in this process) or ``redis`` (shared by every process
            on the same Redis).
        window_type: ``sliding`` (Kong's weighted two-window estimate) or ``fixed``.
        tokens_count_strategy: Which usage field is charged.
        redis: Where the counters live, for ``strategy: redis``.
        namespace: Counters with the same namespace are shared; by default a route's
            plugin counts for that route alone and a global plugin across all routes.
        fail_closed: Answer 503 when Redis cannot be reached, instead of counting locally.
        estimate_prompt: Admission also counts an estimate of the prompt plus the
            request's ``max_tokens``, settled against the real usage afterwards.
        hide_client_headers: Leave out the ``x-ratelimit-*`` headers.
        error_message: The message of the 429 answer.
    """

    llm_providers: tuple[ProviderLimit, ...]
    identifier: LimitIdentifier = "consumer"
    header_name: str | None = None
    strategy: Literal["local", "redis"] = "local"
    window_type: WindowType = "sliding"
    tokens_count_strategy: TokensCountStrategy = "total_tokens"
    redis: RedisConfig | None = None
    namespace: str | None = None
    fail_closed: bool = False
    estimate_prompt: bool = False
    hide_client_headers: bool = False
    error_message: str = "token rate limit exceeded"


@dataclass(frozen=True, slots=True)
class AccessPlugins:
    """The plugins that decide who may spend what, on one route or globally.

    Attributes:
        key_auth: ``key-auth``, or None.
        acl: ``acl``, or None.
        token_limit: ``ai-rate-limiting-advanced``, or None.
    """

    key_auth: KeyAuthConfig | None = None
    acl: AclConfig | None = None
    token_limit: TokenLimitConfig | None = None

    def over(self, defaults: AccessPlugins) -> AccessPlugins:
        """These plugins, each falling back to *defaults*' of the same name (Kong's rule
        for a route's plugin over a global one)."""
        return AccessPlugins(
            key_auth=self.key_auth or defaults.key_auth,
            acl=self.acl or defaults.acl,
            token_limit=self.token_limit or defaults.token_limit,
        )


@dataclass(frozen=True, slots=True)
class KeyCredential:
    """One ``keyauth_credentials`` entry, kept only as a digest.

    Attributes:
        digest: sha256 of the key (from ``key``, hashed at load, or ``key_hash``).
        id: A stable, non-reversible id for logs and per-credential quotas.
    """

    digest: bytes = field(repr=False)
    id: str


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """The ``consumer`` section of a consumer file.

    Attributes:
        username: Unique across conf.d; logged and used as a metrics label.
        custom_id: Free identifier of the caller's own (Kong's ``custom_id``).
        keyauth_credentials: The keys that authenticate as this consumer.
        acls: The groups the consumer belongs to.
    """

    username: str
    keyauth_credentials: tuple[KeyCredential, ...]
    acls: tuple[str, ...] = ()
    custom_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConsumerFile:
    """One validated consumer file from conf.d: ``consumer:`` (one) or ``consumers:`` (a list,
    as decK writes them, for teams that keep thousands in one file).

    Attributes:
        source: The file path as given.
        digest: sha256 hex of the raw file bytes.
        consumers: The consumers, in file order.
    """

    source: str
    digest: str
    consumers: tuple[ConsumerConfig, ...]


@dataclass(frozen=True, slots=True)
class GlobalPluginsFile:
    """A conf.d file with ``plugins`` and no ``route``: plugins for every route.

    Attributes:
        source: The file path as given.
        digest: sha256 hex of the raw file bytes.
        plugins: The plugins.
    """

    source: str
    digest: str
    plugins: AccessPlugins


@dataclass(frozen=True, slots=True)
class RouteFile:
    """One validated file from conf.d.

    Attributes:
        source: The file path as given (for messages).
        digest: sha256 hex of the raw file bytes; hot reload skips files whose digest is unchanged.
        route: The route.
        proxy: The ``ai-proxy-advanced`` plugin config.
        plugins: The route's own access plugins (global ones are merged at compile time).
    """

    source: str  # the file path as given (for messages)
    digest: str  # sha256 hex of the raw file bytes (hot reload uses it to skip unchanged files)
    route: RouteConfig
    proxy: AiProxyAdvancedConfig
    plugins: AccessPlugins = AccessPlugins()


ConfFile = RouteFile | ConsumerFile | GlobalPluginsFile
"""Any file conf.d holds."""
