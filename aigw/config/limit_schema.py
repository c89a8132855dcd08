"""The ``ai-rate-limiting-advanced`` plugin's config: token quotas per window, counted in
this process or in Redis.

Kong's fields, checked strictly (see `aigw.config.plugins_schema` for the plugin list). Kong
settings aigw does not implement are named with the reason; ``sync_rate`` is accepted only as
``0`` or ``-1``, which is what aigw does (every request is counted at once).

SECURITY: ``redis.password`` is read as a secret (never echoed, see `aigw.config.checker`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Literal, TypeVar, get_args

from aigw.config.checker import Checker
from aigw.config.keypath import child, item
from aigw.config.model import (
    LimitIdentifier,
    ProviderLimit,
    RedisConfig,
    TokenLimitConfig,
    TokensCountStrategy,
    WindowType,
)

__all__ = ["COUNT_STRATEGIES", "IDENTIFIERS", "STRATEGIES", "WINDOW_TYPES", "token_limit"]

IDENTIFIERS: tuple[LimitIdentifier, ...] = get_args(LimitIdentifier)
WINDOW_TYPES: tuple[WindowType, ...] = get_args(WindowType)
COUNT_STRATEGIES: tuple[TokensCountStrategy, ...] = get_args(TokensCountStrategy)
Strategy = Literal["local", "redis"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

_T = TypeVar("_T", bound=str)

_MAX_TIMEOUT_MS = 2**31 - 1

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]+\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"[^\s\x00-\x1f\x7f/?#@]+\Z")

_LIMIT_KEYS = (
    "llm_providers",
    "identifier",
    "header_name",
    "strategy",
    "window_type",
    "tokens_count_strategy",
    "redis",
    "namespace",
    "fail_closed",
    "estimate_prompt",
    "hide_client_headers",
    "error_message",
    "sync_rate",
)
_KONG_LIMIT = dict.fromkeys(
    ("path", "llm_format", "consumer_groups", "enforce_consumer_groups"), ""
)
_KONG_LIMIT |= {
    "policies": "is not supported: limits are set per window in `llm_providers`",
    "dictionary_name": "is not supported: `strategy: local` keeps counters in aigw's own memory",
    "retry_after_jitter_max": "is not supported: `retry-after` is exactly the time until "
    "enough of the window frees",
    "disable_penalty": "is not supported: a refused request is never counted",
    "decrease_by_fractions_in_redis": "is not supported: counters are whole tokens",
    "request_prompt_count_function": "is not supported: set `estimate_prompt: true` to count "
    "an estimate of the prompt at admission",
    "custom_cost_count_function": "is not supported: aigw counts tokens, set "
    "`tokens_count_strategy`",
    "error_code": "is not supported: aigw answers 429, with `retry-after`, which the openai "
    "SDK's own retry honours",
    "error_hide_providers": "is not supported: aigw's 429 message is `error_message`",
}
_PROVIDER_KEYS = ("name", "limit", "window_size")
_REDIS_KEYS = ("host", "port", "database", "username", "password", "timeout", "ssl", "ssl_verify")
_ONE_TIMEOUT = "is not supported: aigw has one `timeout` for connecting and each round trip"
_KONG_REDIS = dict.fromkeys(("connect_timeout", "send_timeout", "read_timeout"), _ONE_TIMEOUT)
_KONG_REDIS |= dict.fromkeys(
    (
        "sentinel_master",
        "sentinel_role",
        "sentinel_addresses",
        "sentinel_nodes",
        "sentinel_username",
        "sentinel_password",
        "cluster_addresses",
        "cluster_nodes",
        "cluster_max_redirections",
        "keepalive_pool_size",
        "keepalive_backlog",
        "connection_is_proxied",
        "server_name",
    ),
    "",
)
_KONG_IDENTIFIERS = {
    "service": "`service` is not supported: limit a route with `namespace`, or use `consumer`",
    "path": "`path` is not supported: a route's plugin already counts for that route alone",
    "consumer-group": "`consumer-group` is not supported: consumer groups are not implemented",
}
_KONG_STRATEGIES = {
    "cluster": "`cluster` is not supported (it needs Kong's database); use `redis` to share "
    "counters between aigw processes",
}
_KONG_COUNT_STRATEGIES = {"cost": "`cost` is not supported: aigw counts tokens, not cost"}


def token_limit(c: Checker, entry: Mapping[str, object], entry_path: str) -> TokenLimitConfig:
    """Read the ``config`` of an ``ai-rate-limiting-advanced`` plugin entry.

    Args:
        c: The checker collecting issues.
        entry: The plugin entry (``name``, ``config``).
        entry_path: Its key path, e.g. ``plugins[2]``.

    Returns:
        The config; meaningful only if *c* recorded no issue.
    """
    m = c.section(entry, entry_path, "config", _LIMIT_KEYS, _KONG_LIMIT, required=True)
    path = child(entry_path, "config")
    if m is None:
        return TokenLimitConfig(llm_providers=())
    identifier = _kong_choice(c, m, path, "identifier", IDENTIFIERS, "consumer", _KONG_IDENTIFIERS)
    strategy = _kong_choice(c, m, path, "strategy", STRATEGIES, "local", _KONG_STRATEGIES)
    count = _kong_choice(
        c,
        m,
        path,
        "tokens_count_strategy",
        COUNT_STRATEGIES,
        "total_tokens",
        _KONG_COUNT_STRATEGIES,
    )
    _sync_rate(c, m, path)
    header_name = c.text(m, path, "header_name", check=_check_header_name)
    if identifier == "header" and m.get("header_name") is None:
        c.missing(path, "header_name", "required with `identifier: header`")
    elif identifier != "header" and header_name is not None:
        c.report(child(path, "header_name"), "only used with `identifier: header`")
    redis: RedisConfig | None = None
    if m.get("redis") is not None and strategy != "redis":
        c.report(child(path, "redis"), "only used with `strategy: redis`", key=True)
    elif strategy == "redis":
        redis = _redis(c, m, path)
    config = TokenLimitConfig(
        llm_providers=_providers(c, m, path),
        identifier=identifier,
        header_name=header_name.lower() if header_name else None,
        strategy=strategy,
        window_type=c.choice(m, path, "window_type", WINDOW_TYPES, default="sliding"),
        tokens_count_strategy=count,
        redis=redis,
        namespace=c.text(m, path, "namespace", check=_check_namespace),
        fail_closed=c.boolean(m, path, "fail_closed", default=False),
        estimate_prompt=c.boolean(m, path, "estimate_prompt", default=False),
        hide_client_headers=c.boolean(m, path, "hide_client_headers", default=False),
    )
    message = c.text(m, path, "error_message", check=_check_no_control)
    return config if message is None else replace(config, error_message=message)


def _kong_choice(
    c: Checker,
    m: Mapping[str, object],
    path: str,
    key: str,
    choices: tuple[_T, ...],
    default: _T,
    kong: Mapping[str, str],
) -> _T:
    """`Checker.choice`, with Kong's values that aigw does not implement explained."""
    value = m.get(key)
    if isinstance(value, str) and value in kong:
        c.report(child(path, key), kong[value])
        return default
    return c.choice(m, path, key, choices, default=default)


def _sync_rate(c: Checker, m: Mapping[str, object], path: str) -> None:
    value = m.get("sync_rate")
    if value is None:
        return
    key_path = child(path, "sync_rate")
    if isinstance(value, bool) or not isinstance(value, int | float):
        c.wrong_type(key_path, value, "a number")
    elif value not in (0, -1):
        c.report(
            key_path,
            f"only `0` or `-1` is supported (what aigw does: every request is counted at "
            f"once); got {value}",
        )


def _providers(c: Checker, m: Mapping[str, object], path: str) -> tuple[ProviderLimit, ...]:
    value = m.get("llm_providers")
    if value is None:
        c.absent(m, path, "llm_providers")
        return ()
    list_path = child(path, "llm_providers")
    elements = c.sequence(value, list_path)
    if elements == []:
        c.report(
            list_path, "must hold one entry, `{name: azure, limit: [...], window_size: [...]}`"
        )
    providers: list[ProviderLimit] = []
    for index, element in enumerate(elements or ()):
        provider = _provider(c, element, item(list_path, index))
        if provider is None:
            continue
        if any(p.name == provider.name for p in providers):
            c.report(child(item(list_path, index), "name"), f"`{provider.name}` is listed twice")
            continue
        providers.append(provider)
    return tuple(providers)


def _provider(c: Checker, value: object, path: str) -> ProviderLimit | None:
    m = c.mapping(value, path, _PROVIDER_KEYS)
    if m is None:
        return None
    name = m.get("name")
    if isinstance(name, str) and name and name != "azure":
        reason = "unsupported provider; aigw's routes are all `azure`"
        c.report(child(path, "name"), reason + c.got(child(path, "name"), name))
    else:
        c.choice(m, path, "name", ("azure",), default="azure", required=True)
    limits = _positive_ints(c, m, path, "limit")
    windows = _positive_ints(c, m, path, "window_size")
    if limits is None or windows is None:
        return None
    if len(limits) != len(windows):
        c.report(
            child(path, "window_size"),
            f"must have as many entries as `limit` ({len(limits)}); got {len(windows)}",
        )
        return None
    for index, window in enumerate(windows):
        if window in windows[:index]:
            c.report(item(child(path, "window_size"), index), f"duplicate window size {window}")
            return None
    return ProviderLimit("azure", limits, windows)


def _positive_ints(
    c: Checker, m: Mapping[str, object], path: str, key: str
) -> tuple[int, ...] | None:
    value = m.get(key)
    if value is None:
        c.absent(m, path, key)
        return None
    list_path = child(path, key)
    elements = c.sequence(value, list_path)
    if elements is None:
        return None
    if not elements:
        c.report(list_path, "must list at least one value")
        return None
    numbers: list[int] = []
    for index, element in enumerate(elements):
        element_path = item(list_path, index)
        if isinstance(element, bool) or not isinstance(element, int):
            c.wrong_type(element_path, element, "an integer")
        elif element < 1:
            c.report(element_path, f"must be at least 1; got {element}")
        else:
            numbers.append(element)
    return tuple(numbers) if len(numbers) == len(elements) else None


def _redis(c: Checker, m: Mapping[str, object], path: str) -> RedisConfig | None:
    section = c.section(m, path, "redis", _REDIS_KEYS, _KONG_REDIS)
    redis_path = child(path, "redis")
    if section is None:
        return None
    if section.get("host") is None:
        at = redis_path if "redis" in m else path
        c.missing(redis_path, "host", "required with `strategy: redis`", at=at)
    defaults = RedisConfig()
    port = c.integer(section, redis_path, "port", low=1, high=65535)
    database = c.integer(section, redis_path, "database", low=0)
    timeout = c.integer(section, redis_path, "timeout", low=1, high=_MAX_TIMEOUT_MS)
    return RedisConfig(
        host=c.text(section, redis_path, "host", check=_check_host) or defaults.host,
        port=defaults.port if port is None else port,
        database=defaults.database if database is None else database,
        username=c.text(section, redis_path, "username", check=_check_no_control),
        password=c.text(section, redis_path, "password", secret=True, check=_check_no_control),
        timeout=defaults.timeout if timeout is None else timeout,
        ssl=c.boolean(section, redis_path, "ssl", default=False),
        ssl_verify=c.boolean(section, redis_path, "ssl_verify", default=True),
    )


# -- string checks: return a reason, or None --------------------------------------------------


def _check_header_name(value: str) -> str | None:
    if _HEADER_NAME.match(value):
        return None
    return "must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~"


def _check_namespace(value: str) -> str | None:
    if _NAMESPACE.match(value):
        return None
    return "must contain only letters, digits, `.`, `_` and `-`"


def _check_host(value: str) -> str | None:
    if _HOST.match(value):
        return None
    return "must be a host name or address: no whitespace, `/`, `?`, `#` or `@`"


def _check_no_control(value: str) -> str | None:
    if _CONTROL.search(value):
        return "contains a control character such as a line break (a trailing newline?)"
    return None
