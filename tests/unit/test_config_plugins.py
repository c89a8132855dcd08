"""The access plugins (key-auth, acl, ai-rate-limiting-advanced) on a route and in a global
plugins file: every rule, every message (file:line:col and key path), secrets never shown."""

from __future__ import annotations

import pytest

from aigw.config import (
    AccessPlugins,
    AclConfig,
    ConfigError,
    ConfigIssue,
    GlobalPluginsFile,
    KeyAuthConfig,
    ProviderLimit,
    RedisConfig,
    RouteFile,
    TokenLimitConfig,
    parse_conf_file,
    parse_route_file,
)

ROUTE = """\
route:
  name: r
  paths: [/openai/deployments/gpt-4o/chat/completions]
plugins:
{plugins}  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: llm/v1/chat
          auth: {{header_name: api-key, header_value: k}}
          model:
            provider: azure
            name: gpt-4o
            options: {{azure_instance: res, azure_deployment_id: gpt-4o}}
"""
LIMIT = "{name: azure, limit: [100], window_size: [60]}"
SECRET = "hunter2-secret"  # a password that must never appear in a message


def route(*plugins: str) -> str:
    """A valid route file with *plugins* (flow mappings) before its ai-proxy-advanced."""
    return ROUTE.format(plugins="".join(f"  - {p}\n" for p in plugins))


def global_file(*plugins: str) -> str:
    return "plugins:\n" + "".join(f"  - {p}\n" for p in plugins)


def limit(extra: str = "", providers: str = f"[{LIMIT}]") -> str:
    """An ai-rate-limiting-advanced entry with *extra* config fields."""
    fields = f"llm_providers: {providers}" + (f", {extra}" if extra else "")
    return f"{{name: ai-rate-limiting-advanced, config: {{{fields}}}}}"


def parse(text: str, env: dict[str, str] | None = None) -> object:
    return parse_conf_file("p.yaml", text.encode(), env or {})


def plugins_of(text: str) -> AccessPlugins:
    loaded = parse(text)
    assert isinstance(loaded, GlobalPluginsFile | RouteFile)
    return loaded.plugins


def issues_of(text: str, env: dict[str, str] | None = None) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    return caught.value.issues


def only_issue(text: str) -> ConfigIssue:
    (issue,) = issues_of(text)
    return issue


# -- route files ------------------------------------------------------------------------------


def test_a_route_reads_its_access_plugins() -> None:
    """key-auth, acl and the token limit land in RouteFile.plugins, in any order."""
    text = route(
        "{name: acl, config: {allow: [chat]}}",
        limit(),
        "{name: key-auth, config: {key_names: [api-key, authorization]}}",
    )
    loaded = parse_route_file("p.yaml", text.encode(), {})
    assert loaded.plugins == AccessPlugins(
        key_auth=KeyAuthConfig(key_names=("api-key", "authorization")),
        acl=AclConfig(allow=("chat",)),
        token_limit=TokenLimitConfig(llm_providers=(ProviderLimit("azure", (100,), (60,)),)),
    )
    assert loaded.proxy.targets[0].model.name == "gpt-4o"


def test_a_route_without_access_plugins_has_none() -> None:
    assert parse_route_file("p.yaml", route().encode(), {}).plugins == AccessPlugins()


@pytest.mark.parametrize(
    ("plugins", "expected"),
    [
        (
            ("{name: key-auth}", "{name: key-auth}"),
            "p.yaml:6:5: plugins[1]: a second `key-auth` plugin; the first is `plugins[0]`",
        ),
        (
            ("{name: acl, config: {allow: [a]}}", "{name: key-auth}", "{name: acl}"),
            "p.yaml:7:5: plugins[2]: a second `acl` plugin; the first is `plugins[0]`",
        ),
        (
            (limit(), limit()),
            "p.yaml:6:5: plugins[1]: a second `ai-rate-limiting-advanced` plugin; "
            "the first is `plugins[0]`",
        ),
        (
            ("{name: ai-proxy-advanced, config: {targets: []}}",),
            "p.yaml:6:5: plugins[1]: a second `ai-proxy-advanced` plugin; "
            "the first is `plugins[0]`",
        ),
        (
            ("{name: key-auht}",),
            "p.yaml:5:12: plugins[0].name: unsupported plugin; did you mean `key-auth`? "
            "supported plugins: `ai-proxy-advanced`, `key-auth`, `acl`, "
            '`ai-rate-limiting-advanced`; got "key-auht"',
        ),
        (
            ("{name: rate-limiting}",),
            "p.yaml:5:12: plugins[0].name: unsupported plugin: it counts requests; aigw limits "
            "tokens with `ai-rate-limiting-advanced`; supported plugins: `ai-proxy-advanced`, "
            '`key-auth`, `acl`, `ai-rate-limiting-advanced`; got "rate-limiting"',
        ),
        (
            ("{name: basic-auth}",),
            "p.yaml:5:12: plugins[0].name: unsupported plugin: authenticate consumers with "
            "`key-auth`; supported plugins: `ai-proxy-advanced`, `key-auth`, `acl`, "
            '`ai-rate-limiting-advanced`; got "basic-auth"',
        ),
        (
            ("{name: acl, config: {allow: [a]}, route: x}",),
            "p.yaml:5:39: plugins[0].route: `route` is not needed: the plugin applies to this "
            "file's route",
        ),
    ],
)
def test_route_plugin_list_rules(plugins: tuple[str, ...], expected: str) -> None:
    """Each plugin at most once (naming the first), unknown names with did-you-mean."""
    # The duplicate ai-proxy-advanced's own config errors are not what this test is about.
    issues = [str(i) for i in issues_of(route(*plugins)) if ".config" not in i.key_path]
    assert issues == [expected]


def test_a_route_needs_its_ai_proxy_advanced() -> None:
    """A route with only access plugins says what is missing."""
    text = "route: {name: r, paths: [/x]}\nplugins:\n  - {name: key-auth}\n"
    assert str(only_issue(text)) == (
        "p.yaml:3:3: plugins: must hold exactly one plugin named `ai-proxy-advanced`, "
        "and at most one each of `key-auth`, `acl`, `ai-rate-limiting-advanced`"
    )


def test_a_misspelt_proxy_is_reported_once() -> None:
    """A misspelt plugin name is the error; 'missing ai-proxy-advanced' is not added."""
    text = route().replace("name: ai-proxy-advanced", "name: ai-proxy-advancd")
    (issue,) = issues_of(text)
    assert issue.key_path == "plugins[0].name"
    assert "did you mean `ai-proxy-advanced`?" in issue.reason


def test_parse_route_file_refuses_other_kinds() -> None:
    """The route-only entry point says clearly what the file is instead."""
    with pytest.raises(ConfigError) as caught:
        parse_route_file("g.yaml", global_file("{name: key-auth}").encode(), {})
    assert str(caught.value) == (
        "g.yaml: not a route file: this is a global plugins file (it has no `route`)"
    )


# -- global plugins files -----------------------------------------------------------------------


def test_global_plugins_file_loads() -> None:
    text = global_file("{name: key-auth}", "{name: acl, config: {deny: [banned]}}")
    loaded = parse(text)
    assert isinstance(loaded, GlobalPluginsFile)
    assert (loaded.source, loaded.plugins) == (
        "p.yaml",
        AccessPlugins(key_auth=KeyAuthConfig(), acl=AclConfig(deny=("banned",))),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            global_file("{name: key-auth}", "{name: ai-proxy-advanced, config: {}}"),
            "p.yaml:3:12: plugins[1].name: `ai-proxy-advanced` belongs in a route file (with "
            "`route:`): it says where one route's requests go; a global plugins file holds "
            "only `key-auth`, `acl`, `ai-rate-limiting-advanced`",
        ),
        (
            "plugins: []\n",
            "p.yaml:1:10: plugins: must hold at least one of `key-auth`, `acl`, "
            "`ai-rate-limiting-advanced`",
        ),
        (
            global_file("{name: key-auth, service: s}"),
            "p.yaml:2:22: plugins[0].service: `service` is not supported in a global plugins "
            "file: its plugins apply to every route; put a plugin for one route in that "
            "route's file",
        ),
        (
            global_file("{name: kee-auth}"),
            "p.yaml:2:12: plugins[0].name: unsupported plugin; did you mean `key-auth`? "
            'supported plugins: `key-auth`, `acl`, `ai-rate-limiting-advanced`; got "kee-auth"',
        ),
        (
            global_file("{name: key-auth}") + "rout: {name: r}\n",
            "p.yaml:3:1: rout: unknown key `rout`; did you mean `route`?",
        ),
        (
            "plugins: {name: key-auth}\n",
            "p.yaml:1:10: plugins: expected a list; got a mapping",
        ),
    ],
)
def test_global_file_rules(text: str, expected: str) -> None:
    """Only access plugins, each once; ai-proxy-advanced belongs to a route."""
    assert [str(i) for i in issues_of(text)] == [expected]


# -- key-auth ---------------------------------------------------------------------------------


def key_auth(config: str) -> str:
    return global_file(f"{{name: key-auth, config: {{{config}}}}}")


def test_key_auth_defaults() -> None:
    """Kong's `[apikey]`, header only: aigw leaves key_in_query off (query strings are logged
    by other proxies)."""
    assert plugins_of(global_file("{name: key-auth}")).key_auth == KeyAuthConfig(
        key_names=("apikey",), key_in_header=True, key_in_query=False
    )
    assert KeyAuthConfig() == KeyAuthConfig(("apikey",), True, False)


def test_key_auth_fields_are_read_lower_cased_and_de_duplicated() -> None:
    config = "key_names: [Api-Key, authorization, API-KEY], key_in_query: true, "
    config += "key_in_header: false, hide_credentials: true, run_on_preflight: true"
    assert plugins_of(key_auth(config)).key_auth == KeyAuthConfig(
        key_names=("api-key", "authorization"), key_in_header=False, key_in_query=True
    )


KEY_AUTH_ERRORS = [
    ("key_names: []", "key_names", "must list at least one name, or be left out"),
    ("key_names: apikey", "key_names", "expected a list; got a string"),
    ("key_names: ['']", "key_names[0]", "must not be empty"),
    ("key_names: ['api key']", "key_names[0]", "HTTP header name: letters, digits and !#$%&"),
    (
        "key_names: [api-key, Accept]",
        "key_names[1]",
        'would be forwarded to Azure; choose a name aigw does not forward; got "Accept"',
    ),
    ("key_names: [x-ms-key]", "key_names[0]", "would be forwarded to Azure"),
    ("key_names: [x-stainless-key]", "key_names[0]", "would be forwarded to Azure"),
    ("key_names: [api-version]", "key_names[0]", "is the Azure API version parameter"),
    ("key_name: [x]", "key_name", "unknown key `key_name`; did you mean `key_names`?"),
    ("hide_credentials: false", "hide_credentials", "`false` is not supported: aigw never sends"),
    ("hide_credentials: 1", "hide_credentials", "expected a boolean"),
    ("key_in_query: 'yes'", "key_in_query", "expected a boolean (true or false); got a string"),
    (
        "key_in_header: false",
        "key_in_header",
        "no key could ever be found with both `key_in_header` and `key_in_query` false",
    ),
    ("anonymous: x", "anonymous", "`anonymous` is not supported: every request on a key-auth"),
    ("key_in_body: true", "key_in_body", "is checked before the body is read"),
    ("run_on_preflight: false", "run_on_preflight", "`OPTIONS` included"),
    ("run_on_preflight: 'no'", "run_on_preflight", "expected a boolean"),
    ("realm: aigw", "realm", 'always `WWW-Authenticate: Key realm="aigw"`'),
]


@pytest.mark.parametrize(("config", "key", "reason"), KEY_AUTH_ERRORS)
def test_key_auth_errors(config: str, key: str, reason: str) -> None:
    issue = only_issue(key_auth(config))
    assert (issue.key_path, issue.line) == (f"plugins[0].config.{key}", 2)
    assert issue.column is not None and reason in issue.reason


# -- acl --------------------------------------------------------------------------------------


def acl(config: str) -> str:
    return global_file(f"{{name: acl, config: {{{config}}}}}")


def test_acl_allow_or_deny() -> None:
    assert plugins_of(acl("allow: [chat, embed, chat]")).acl == AclConfig(allow=("chat", "embed"))
    assert plugins_of(acl("deny: [banned]")).acl == AclConfig(deny=("banned",))


ACL_ERRORS = [
    ("allow: [a], deny: [b]", "deny", "set either `allow` or `deny`, not both (Kong's rule)"),
    ("", "", "must set `allow` or `deny` (a list of consumer groups)"),
    ("allow: []", "allow", "must list at least one group"),
    ("deny: [ok, '']", "deny[1]", "must not be empty"),
    ('allow: ["a\\tb"]', "allow[0]", "contains a control character"),
    ("allow: [1]", "allow[0]", "expected a string; got an integer"),
    ("allow: chat", "allow", "expected a list; got a string"),
    ("alow: [a]", "alow", "did you mean `allow`?"),
    ("allow: [a], hide_groups_header: true", "hide_groups_header", "never sends the consumer's"),
    ("allow: [a], include_consumer_groups: true", "include_consumer_groups", "not implemented"),
    (
        "allow: [a], always_use_authenticated_groups: true",
        "always_use_authenticated_groups",
        "always the authenticated consumer's `acls`",
    ),
]


@pytest.mark.parametrize(("config", "key", "reason"), ACL_ERRORS)
def test_acl_errors(config: str, key: str, reason: str) -> None:
    issues = [i for i in issues_of(acl(config)) if reason in i.reason]
    assert len(issues) == 1, issues_of(acl(config))
    (issue,) = issues
    assert issue.key_path == "plugins[0].config" + (f".{key}" if key else "")
    assert issue.line == 2 and issue.column is not None


def test_acl_needs_a_config() -> None:
    assert str(only_issue(global_file("{name: acl}"))) == (
        "p.yaml:2:5: plugins[0].config: missing required key `config`"
    )


# -- ai-rate-limiting-advanced ----------------------------------------------------------------


def test_token_limit_defaults() -> None:
    assert plugins_of(global_file(limit())).token_limit == TokenLimitConfig(
        llm_providers=(ProviderLimit("azure", (100,), (60,)),),
        identifier="consumer",
        header_name=None,
        strategy="local",
        window_type="sliding",
        tokens_count_strategy="total_tokens",
        redis=None,
        namespace=None,
        fail_closed=False,
        estimate_prompt=False,
        hide_client_headers=False,
        error_message="token rate limit exceeded",
    )


def test_every_token_limit_field_is_read() -> None:
    text = global_file(
        limit(
            "identifier: header, header_name: X-Team, strategy: redis, window_type: fixed, "
            "tokens_count_strategy: completion_tokens, namespace: team.a_1-b, fail_closed: true, "
            "estimate_prompt: true, hide_client_headers: true, error_message: slow down, "
            "sync_rate: -1, redis: {host: redis.internal, port: 6380, database: 2, "
            f"username: aigw, password: {SECRET}, timeout: 50, ssl: true, ssl_verify: false}}",
            providers="[{name: azure, limit: [20000, 1000000], window_size: [60, 86400]}]",
        )
    )
    assert plugins_of(text).token_limit == TokenLimitConfig(
        llm_providers=(ProviderLimit("azure", (20000, 1_000_000), (60, 86400)),),
        identifier="header",
        header_name="x-team",
        strategy="redis",
        window_type="fixed",
        tokens_count_strategy="completion_tokens",
        redis=RedisConfig("redis.internal", 6380, 2, "aigw", SECRET, 50, True, False),
        namespace="team.a_1-b",
        fail_closed=True,
        estimate_prompt=True,
        hide_client_headers=True,
        error_message="slow down",
    )
    assert SECRET not in repr(plugins_of(text))


def test_redis_defaults_and_sync_rate_zero() -> None:
    text = global_file(limit("strategy: redis, sync_rate: 0, redis: {host: h}"))
    config = plugins_of(text).token_limit
    assert config is not None and config.redis == RedisConfig(host="h")
    assert (config.redis.port, config.redis.timeout, config.redis.ssl_verify) == (6379, 2000, True)


LIMIT_ERRORS = [
    # identifier and header_name
    ("identifier: header", "header_name", "required with `identifier: header`"),
    ("header_name: x-team", "header_name", "only used with `identifier: header`"),
    ("identifier: header, header_name: 'x team'", "header_name", "an HTTP header name"),
    ("identifier: service", "identifier", "`service` is not supported: limit a route with"),
    ("identifier: path", "identifier", "`path` is not supported"),
    ("identifier: consumer-group", "identifier", "consumer groups are not implemented"),
    ("identifier: user", "identifier", "expected one of `consumer`, `credential`, `ip`, `header`"),
    # strategy and redis
    ("strategy: redis", "redis.host", "required with `strategy: redis`"),
    ("strategy: redis, redis: {port: 6379}", "redis.host", "required with `strategy: redis`"),
    ("redis: {host: h}", "redis", "only used with `strategy: redis`"),
    ("strategy: local, redis: {host: h}", "redis", "only used with `strategy: redis`"),
    ("strategy: cluster", "strategy", "`cluster` is not supported (it needs Kong's database)"),
    ("strategy: cluster", "strategy", "use `redis` to share counters between aigw processes"),
    ("strategy: shared", "strategy", "expected one of `local`, `redis`"),
    ("strategy: redis, redis: {host: 'a b'}", "redis.host", "must be a host name or address"),
    ("strategy: redis, redis: {host: h, port: 0}", "redis.port", "between 1 and 65535; got 0"),
    ("strategy: redis, redis: {host: h, port: 65536}", "redis.port", "between 1 and 65535"),
    ("strategy: redis, redis: {host: h, database: -1}", "redis.database", "at least 0; got -1"),
    ("strategy: redis, redis: {host: h, timeout: 0}", "redis.timeout", "between 1 and 2147483647"),
    (
        "strategy: redis, redis: {host: h, timeout: 2147483648}",
        "redis.timeout",
        "between 1 and 2147483647",
    ),
    ("strategy: redis, redis: {host: h, ssl: 'on'}", "redis.ssl", "expected a boolean"),
    ("strategy: redis, redis: {host: h, ssl_verify: 0}", "redis.ssl_verify", "expected a boolean"),
    ("strategy: redis, redis: {host: h, username: ''}", "redis.username", "must not be empty"),
    ("strategy: redis, redis: {host: h, hots: x}", "redis.hots", "did you mean `host`?"),
    (
        "strategy: redis, redis: {host: h, read_timeout: 5}",
        "redis.read_timeout",
        "aigw has one `timeout` for connecting and each round trip",
    ),
    (
        "strategy: redis, redis: {host: h, sentinel_master: m}",
        "redis.sentinel_master",
        "is a Kong setting that aigw does not support",
    ),
    ("strategy: redis, redis: h", "redis", "expected a mapping; got a string"),
    # counting
    ("tokens_count_strategy: cost", "tokens_count_strategy", "aigw counts tokens, not cost"),
    ("tokens_count_strategy: all", "tokens_count_strategy", "expected one of `total_tokens`"),
    ("window_type: rolling", "window_type", "expected one of `sliding`, `fixed`"),
    ("sync_rate: 1", "sync_rate", "only `0` or `-1` is supported (what aigw does: every request"),
    ("sync_rate: 0.5", "sync_rate", "got 0.5"),
    ("sync_rate: now", "sync_rate", "expected a number; got a string"),
    # plain fields
    ("namespace: 'a b'", "namespace", 'only letters, digits, `.`, `_` and `-`; got "a b"'),
    ("namespace: ''", "namespace", "must not be empty"),
    ("error_message: ''", "error_message", "must not be empty"),
    ("error_message: 5", "error_message", "expected a string; got an integer"),
    ('error_message: "a\\nb"', "error_message", "contains a control character"),
    ("fail_closed: 1", "fail_closed", "expected a boolean"),
    ("estimate_prompt: 'true'", "estimate_prompt", "expected a boolean"),
    ("hide_client_headers: null_", "hide_client_headers", "expected a boolean"),
    ("windw_type: fixed", "windw_type", "did you mean `window_type`?"),
    # Kong settings aigw does not implement
    ("policies: []", "policies", "limits are set per window in `llm_providers`"),
    ("dictionary_name: d", "dictionary_name", "keeps counters in aigw's own memory"),
    ("retry_after_jitter_max: 1", "retry_after_jitter_max", "`retry-after` is exactly the time"),
    ("disable_penalty: true", "disable_penalty", "a refused request is never counted"),
    ("decrease_by_fractions_in_redis: true", "decrease_by_fractions_in_redis", "whole tokens"),
    (
        "request_prompt_count_function: f",
        "request_prompt_count_function",
        "`estimate_prompt: true`",
    ),
    ("custom_cost_count_function: f", "custom_cost_count_function", "aigw counts tokens"),
    ("error_code: 429", "error_code", "aigw answers 429"),
    ("llm_format: openai", "llm_format", "is a Kong setting that aigw does not support"),
]


@pytest.mark.parametrize(("config", "key", "reason"), LIMIT_ERRORS)
def test_token_limit_errors(config: str, key: str, reason: str) -> None:
    issue = only_issue(global_file(limit(config)))
    assert (issue.key_path, issue.line) == (f"plugins[0].config.{key}", 2)
    assert issue.column is not None and reason in issue.reason, issue.reason


PROVIDER_ERRORS = [
    ("[]", "llm_providers", "must hold one entry"),
    ("azure", "llm_providers", "expected a list; got a string"),
    ("[{name: openai, limit: [1], window_size: [1]}]", "llm_providers[0].name", "all `azure`"),
    ("[{limit: [1], window_size: [1]}]", "llm_providers[0].name", "missing required key `name`"),
    (f"[{LIMIT}, {LIMIT}]", "llm_providers[1].name", "`azure` is listed twice"),
    ("[{name: azure, limit: [1, 2], window_size: [60]}]", "llm_providers[0].window_size", "(2)"),
    ("[{name: azure, limit: [], window_size: [1]}]", "llm_providers[0].limit", "at least one"),
    ("[{name: azure, limit: [0], window_size: [60]}]", "llm_providers[0].limit[0]", "at least 1"),
    ("[{name: azure, limit: [1], window_size: [-5]}]", "llm_providers[0].window_size[0]", "1"),
    ("[{name: azure, limit: [1.5], window_size: [6]}]", "llm_providers[0].limit[0]", "integer"),
    ("[{name: azure, limit: [true], window_size: [6]}]", "llm_providers[0].limit[0]", "integer"),
    ("[{name: azure, limit: 100, window_size: [6]}]", "llm_providers[0].limit", "a list"),
    ("[{name: azure, limit: [1]}]", "llm_providers[0].window_size", "missing required key"),
    (
        "[{name: azure, limit: [1, 2], window_size: [60, 60]}]",
        "llm_providers[0].window_size[1]",
        "duplicate window size 60",
    ),
    ("[{name: azure, limits: [1], window_size: [1]}]", "llm_providers[0].limits", "`limit`?"),
]


@pytest.mark.parametrize(("providers", "key", "reason"), PROVIDER_ERRORS)
def test_llm_providers_errors(providers: str, key: str, reason: str) -> None:
    issues = issues_of(global_file(limit(providers=providers)))
    assert [i.key_path for i in issues if reason in i.reason] == [f"plugins[0].config.{key}"]
    assert all(i.line == 2 for i in issues)


def test_token_limit_needs_llm_providers() -> None:
    text = global_file("{name: ai-rate-limiting-advanced, config: {strategy: local}}")
    assert str(only_issue(text)) == (
        "p.yaml:2:39: plugins[0].config.llm_providers: missing required key `llm_providers`"
    )


def test_one_message_per_rule_with_its_position() -> None:
    """Block style, as people write it: positions point at the offending line."""
    text = """\
plugins:
  - name: ai-rate-limiting-advanced
    config:
      strategy: redis
      identifier: header
      llm_providers:
        - name: azure
          limit: [100]
          window_size: [60, 3600]
"""
    assert [str(i) for i in issues_of(text)] == [
        "p.yaml:3:5: plugins[0].config.header_name: required with `identifier: header`",
        "p.yaml:3:5: plugins[0].config.redis.host: required with `strategy: redis`",
        "p.yaml:9:24: plugins[0].config.llm_providers[0].window_size: "
        "must have as many entries as `limit` (1); got 2",
    ]


# -- secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "redis",
    [
        f'{{host: h, password: "{SECRET}\\n"}}',
        f"{{host: h, password: [{SECRET}]}}",
        f"{{host: h, pasword: {SECRET}}}",
        "{host: h, password: ${REDIS_PASSWORD}, port: ${REDIS_PASSWORD}}",
        '{host: h, password: "${REDIS_PASSWORD}\\u0001"}',
    ],
)
def test_redis_password_is_never_in_a_message(redis: str) -> None:
    text = global_file(limit(f"strategy: redis, redis: {redis}"))
    issues = issues_of(text, {"REDIS_PASSWORD": SECRET})
    assert issues
    for issue in issues:
        assert SECRET not in str(issue) and "hunter2" not in str(issue)


def test_a_password_from_the_environment_is_named_by_its_variable() -> None:
    text = global_file(limit('strategy: redis, redis: {host: h, password: "${P}\\u0001"}'))
    issue = only_issue_env(text, {"P": SECRET})
    assert issue.key_path == "plugins[0].config.redis.password"
    assert issue.reason.endswith("; value from `${P}`")


def only_issue_env(text: str, env: dict[str, str]) -> ConfigIssue:
    (issue,) = issues_of(text, env)
    return issue
