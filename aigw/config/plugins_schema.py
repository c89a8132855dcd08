"""The access plugins: ``key-auth``, ``acl`` and ``ai-rate-limiting-advanced``, on a route or
in a global plugins file (``plugins:`` without ``route:``).

Kong's names and fields, checked as strictly as the route schema: unknown keys get a "did you
mean", Kong settings aigw does not implement are named as such with the reason, and a value aigw
would silently treat differently from Kong is refused rather than ignored.

SECURITY: ``redis.password`` is read as a secret (never echoed, see `aigw.config.checker`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar, get_args

from aigw.config.checker import Check, Checker, backticked
from aigw.config.errors import ConfigIssue
from aigw.config.keypath import ROOT, child, item
from aigw.config.model import (
    AccessPlugins,
    AclConfig,
    KeyAuthConfig,
    LimitIdentifier,
    ProviderLimit,
    RedisConfig,
    TokenLimitConfig,
    TokensCountStrategy,
    WindowType,
)
from aigw.config.yaml_strict import NodePosition
from aigw.upstream.headers import REQUEST_POLICY

__all__ = [
    "ACCESS_PLUGINS",
    "PluginEntry",
    "ValidatedPlugins",
    "access_plugins",
    "plugin_entries",
    "validate_global",
]

ACCESS_PLUGINS = ("key-auth", "acl", "ai-rate-limiting-advanced")
"""The plugins a route or a global plugins file may hold besides ``ai-proxy-advanced``."""

IDENTIFIERS: tuple[LimitIdentifier, ...] = get_args(LimitIdentifier)
WINDOW_TYPES: tuple[WindowType, ...] = get_args(WindowType)
COUNT_STRATEGIES: tuple[TokensCountStrategy, ...] = get_args(TokensCountStrategy)
STRATEGIES = ("local", "redis")

_T = TypeVar("_T", bound=str)
_DEFAULT_ERROR_MESSAGE = "token rate limit exceeded"  # TokenLimitConfig's default

_MAX_TIMEOUT_MS = 2**31 - 1
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]+\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"[^\s\x00-\x1f\x7f/?#@]+\Z")

_PLUGIN_KEYS = ("name", "config")
_GLOBAL_TOP_KEYS = ("plugins",)
_GLOBAL_KONG_PLUGIN = dict.fromkeys(
    ("enabled", "protocols", "instance_name", "ordering", "tags", "id", "consumer"), ""
) | dict.fromkeys(
    ("route", "service"),
    "is not supported in a global plugins file: its plugins apply to every route; "
    "put a plugin for one route in that route's file",
)
_KONG_TOP = dict.fromkeys(("_format_version", "_transform", "services", "routes"), "")

# Kong plugins people reach for, with what to use instead.
_INSTEAD = {
    "rate-limiting": "it counts requests; aigw limits tokens with `ai-rate-limiting-advanced`",
    "rate-limiting-advanced": "it counts requests; aigw limits tokens with "
    "`ai-rate-limiting-advanced`",
    "ai-rate-limiting": "the plugin is `ai-rate-limiting-advanced`",
    "basic-auth": "authenticate consumers with `key-auth`",
    "jwt": "authenticate consumers with `key-auth`",
    "hmac-auth": "authenticate consumers with `key-auth`",
    "oauth2": "authenticate consumers with `key-auth`",
    "openid-connect": "authenticate consumers with `key-auth`",
    "key-auth-enc": "`key-auth` already stores only key digests",
}

_KEY_AUTH_KEYS = ("key_names", "key_in_header", "key_in_query", "hide_credentials")
_KONG_KEY_AUTH = {
    "anonymous": "is not supported: every request on a key-auth route must carry a consumer's "
    "key; leave key-auth off a route that anyone may use",
    "key_in_body": "is not supported: the key is checked before the body is read, so a "
    "stranger costs no body read; send the key in a header",
    "run_on_preflight": "is not supported: aigw checks the key on every request, "
    "`OPTIONS` included",
    "realm": "is not supported: aigw answers 401 with an OpenAI-style JSON error, "
    "without a `WWW-Authenticate` challenge",
}
_ACL_KEYS = ("allow", "deny")
_KONG_ACL = {
    "hide_groups_header": "is not supported: aigw never sends the consumer's groups upstream",
    "include_consumer_groups": "is not supported: consumer groups are not implemented; "
    "list the groups in each consumer's `acls`",
    "always_use_authenticated_groups": "is not supported: the groups are always the "
    "authenticated consumer's `acls`",
}
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
    "service": "is not supported: limit a route with `namespace`, or use `consumer`",
    "path": "is not supported: a route's plugin already counts for that route alone",
    "consumer-group": "is not supported: consumer groups are not implemented",
}
_KONG_STRATEGIES = {
    "cluster": "`cluster` is not supported (it needs Kong's database); use `redis` to share "
    "counters between aigw processes",
}
_KONG_COUNT_STRATEGIES = {"cost": "`cost` is not supported: aigw counts tokens, not cost"}


@dataclass(frozen=True, slots=True)
class PluginEntry:
    """One readable entry of a ``plugins`` list.

    Attributes:
        name: The plugin name (a supported one).
        path: Its key path, e.g. ``plugins[1]``.
        entry: The entry mapping (``name``, ``config``).
    """

    name: str
    path: str
    entry: dict[str, object]


@dataclass(frozen=True, slots=True)
class ValidatedPlugins:
    """The result of `validate_global`: the plugins, or the issues (never both).

    Attributes:
        plugins: The plugins, if the data was valid.
        issues: Every problem found, in document order.
    """

    plugins: AccessPlugins | None
    issues: tuple[ConfigIssue, ...]


def validate_global(
    data: object,
    *,
    file: str,
    positions: Mapping[str, NodePosition],
    sources: Mapping[str, tuple[str, ...]],
    reported: frozenset[str] = frozenset(),
) -> ValidatedPlugins:
    """Validate a global plugins document: ``plugins:`` alone, access plugins only.

    Args:
        data: Interpolated plain data.
        file: The file name to put in issues.
        positions: Key path -> position in the file.
        sources: Key path -> environment variables the value came from (never echoed).
        reported: Key paths an earlier stage already reported as unreadable.

    Returns:
        The plugins, or every issue found.
    """
    c = Checker(file, positions, sources, reported)
    root = c.mapping(data, ROOT, _GLOBAL_TOP_KEYS, _KONG_TOP)
    if root is None:
        return ValidatedPlugins(None, tuple(c.issues))
    value = root.get("plugins")
    if value is None:
        c.absent(root, ROOT, "plugins")
        return ValidatedPlugins(None, tuple(c.issues))
    refused = dict.fromkeys(
        ("ai-proxy-advanced", "ai-proxy"),
        "belongs in a route file (with `route:`): it says where one route's requests go; "
        "a global plugins file holds only " + backticked(ACCESS_PLUGINS),
    )
    entries, _ = plugin_entries(c, value, "plugins", ACCESS_PLUGINS, _GLOBAL_KONG_PLUGIN, refused)
    if isinstance(value, list) and not value:
        c.report("plugins", f"must hold at least one of {backticked(ACCESS_PLUGINS)}")
    plugins = access_plugins(c, entries)
    if c.issues:
        return ValidatedPlugins(None, tuple(c.issues))
    return ValidatedPlugins(plugins, ())


def plugin_entries(
    c: Checker,
    value: object,
    path: str,
    names: tuple[str, ...],
    kong: Mapping[str, str],
    refused: Mapping[str, str],
) -> tuple[list[PluginEntry], bool]:
    """Read a ``plugins`` list: each entry a mapping with a supported ``name``, each name once.

    Args:
        c: The checker.
        value: The list.
        path: Its key path.
        names: The plugin names allowed here.
        kong: Kong's plugin-entry keys aigw does not support, with reasons.
        refused: Plugin names refused here with a specific reason.

    Returns:
        The readable entries, in order, and whether every entry was readable (so a missing
        plugin is worth reporting: a misspelt one has been already).
    """
    elements = c.sequence(value, path)
    seen: dict[str, str] = {}
    entries: list[PluginEntry] = []
    for index, element in enumerate(elements or ()):
        entry_path = item(path, index)
        m = c.mapping(element, entry_path, _PLUGIN_KEYS, kong)
        if m is None:
            continue
        raw = m.get("name")
        if isinstance(raw, str) and raw in refused:
            c.report(child(entry_path, "name"), f"`{raw}` {refused[raw]}")
            continue
        name = c.text(m, entry_path, "name", required=True, check=_name_check(names))
        if name is None:
            continue
        first = seen.setdefault(name, entry_path)
        if first != entry_path:
            c.report(entry_path, f"a second `{name}` plugin; the first is `{first}`")
            continue
        entries.append(PluginEntry(name, entry_path, m))
    return entries, elements is not None and len(entries) == len(elements)


def _name_check(names: tuple[str, ...]) -> Check:
    def check(value: str) -> str | None:
        if value in names:
            return None
        supported = f"supported plugins: {backticked(names)}"
        if value in _INSTEAD:
            return f"unsupported plugin: {_INSTEAD[value]}; {supported}"
        close = difflib.get_close_matches(value, names, n=1)
        if close:
            return f"unsupported plugin; did you mean `{close[0]}`? {supported}"
        return f"unsupported plugin; {supported}"

    return check


def access_plugins(c: Checker, entries: list[PluginEntry]) -> AccessPlugins:
    """Read the access plugins among *entries* (others are left to the caller)."""
    plugins = AccessPlugins()
    for entry in entries:
        if entry.name == "key-auth":
            plugins = AccessPlugins(_key_auth(c, entry), plugins.acl, plugins.token_limit)
        elif entry.name == "acl":
            plugins = AccessPlugins(plugins.key_auth, _acl(c, entry), plugins.token_limit)
        elif entry.name == "ai-rate-limiting-advanced":
            plugins = AccessPlugins(plugins.key_auth, plugins.acl, _token_limit(c, entry))
    return plugins


# -- key-auth -------------------------------------------------------------------------------


def _key_auth(c: Checker, entry: PluginEntry) -> KeyAuthConfig:
    m = c.section(entry.entry, entry.path, "config", _KEY_AUTH_KEYS, _KONG_KEY_AUTH)
    path = child(entry.path, "config")
    if not m:
        return KeyAuthConfig()
    if m.get("hide_credentials") is False:
        c.report(
            child(path, "hide_credentials"),
            "`false` is not supported: aigw never sends the client's key upstream "
            "(`true`, the only behaviour, may be written)",
        )
    else:
        c.boolean(m, path, "hide_credentials", default=True)
    in_header = c.boolean(m, path, "key_in_header", default=True)
    in_query = c.boolean(m, path, "key_in_query", default=False)
    if not in_header and not in_query:
        c.report(
            child(path, "key_in_header"),
            "no key could ever be found with both `key_in_header` and `key_in_query` false",
            at=child(path, "key_in_header") if "key_in_header" in m else path,
        )
    names = _key_names(c, m.get("key_names"), child(path, "key_names"))
    return KeyAuthConfig(key_names=names, key_in_header=in_header, key_in_query=in_query)


def _key_names(c: Checker, value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return KeyAuthConfig().key_names
    if isinstance(value, list) and not value:
        c.report(path, "must list at least one name, or be left out (default `[apikey]`)")
    names: list[str] = []
    for element_path, name in c.strings(value, path):
        reason = _check_key_name(name)
        if reason is not None:
            c.report(element_path, reason + c.got(element_path, name))
        elif name.lower() not in names:
            names.append(name.lower())
    return tuple(names)


def _check_key_name(name: str) -> str | None:
    if not _HEADER_NAME.match(name):
        return "must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~"
    if REQUEST_POLICY.allows(name):
        return "would be forwarded to Azure; choose a name aigw does not forward"
    if name.lower() == "api-version":
        return "is the Azure API version parameter, not a key; choose another name"
    return None


# -- acl ------------------------------------------------------------------------------------


def _acl(c: Checker, entry: PluginEntry) -> AclConfig:
    m = c.section(entry.entry, entry.path, "config", _ACL_KEYS, _KONG_ACL, required=True)
    path = child(entry.path, "config")
    if m is None:
        return AclConfig()
    given = [key for key in _ACL_KEYS if m.get(key) is not None]
    if not given:
        c.report(path, "must set `allow` or `deny` (a list of consumer groups)", key=True)
    elif len(given) == 2:
        c.report(child(path, "deny"), "set either `allow` or `deny`, not both (Kong's rule)")
    allow = _groups(c, m.get("allow"), child(path, "allow"))
    deny = _groups(c, m.get("deny"), child(path, "deny"))
    return AclConfig(allow=allow, deny=deny)


def _groups(c: Checker, value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list) and not value:
        c.report(path, "must list at least one group")
    groups: list[str] = []
    for element_path, group in c.strings(value, path):
        if _CONTROL.search(group):
            c.report(element_path, "contains a control character" + c.got(element_path, group))
        elif group not in groups:
            groups.append(group)
    return tuple(groups)


# -- ai-rate-limiting-advanced ----------------------------------------------------------------


def _token_limit(c: Checker, entry: PluginEntry) -> TokenLimitConfig:
    m = c.section(entry.entry, entry.path, "config", _LIMIT_KEYS, _KONG_LIMIT, required=True)
    path = child(entry.path, "config")
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
    return TokenLimitConfig(
        llm_providers=_providers(c, m, path),
        identifier=identifier,
        header_name=header_name.lower() if header_name else None,
        strategy="redis" if strategy == "redis" else "local",
        window_type=c.choice(m, path, "window_type", WINDOW_TYPES, default="sliding"),
        tokens_count_strategy=count,
        redis=redis,
        namespace=c.text(m, path, "namespace", check=_check_namespace),
        fail_closed=c.boolean(m, path, "fail_closed", default=False),
        estimate_prompt=c.boolean(m, path, "estimate_prompt", default=False),
        hide_client_headers=c.boolean(m, path, "hide_client_headers", default=False),
        error_message=c.text(m, path, "error_message", check=_check_no_control)
        or _DEFAULT_ERROR_MESSAGE,
    )


def _kong_choice(
    c: Checker,
    m: Mapping[str, object],
    path: str,
    key: str,
    choices: tuple[_T, ...],
    default: _T,
    kong: Mapping[str, str],
) -> _T:
    value = m.get(key)
    if isinstance(value, str) and value in kong:
        reason = kong[value]
        if not reason.startswith("`"):
            reason = f"`{value}` {reason}"
        c.report(child(path, key), reason)
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
