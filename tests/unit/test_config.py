"""The route-file language: the canonical example, every schema rule, secrets, message format."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path

import pytest

import aigw.config
from aigw.config import (
    AiProxyAdvancedConfig,
    AuthConfig,
    ConfigError,
    ConfigIssue,
    LoggingConfig,
    ModelConfig,
    ModelOptions,
    RouteConfig,
    RouteFile,
    TargetConfig,
    load_file,
    parse_route_file,
)

REPO = Path(__file__).resolve().parents[2]

CANONICAL = """\
route:
  name: azure-gpt-4o
  paths: [/openai/deployments/gpt-4o/chat/completions]
  methods: [POST]            # optional; default: any method
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: llm/v1/chat
          auth:
            header_name: api-key
            header_value: ${AZURE_OPENAI_KEY}
          model:
            provider: azure
            name: gpt-4o
            options:
              azure_instance: ${AZURE_INSTANCE}
              azure_deployment_id: gpt-4o
"""

ENV = {"AZURE_OPENAI_KEY": "test-key-0123", "AZURE_INSTANCE": "myresource"}
T = "plugins[0].config.targets[0]"
OPTIONS = f"{T}.model.options"


def edit(*replacements: tuple[str, str], text: str = CANONICAL) -> str:
    """Apply text replacements to the canonical file; each old text must occur exactly once."""
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def parse(text: str, env: Mapping[str, str] = ENV) -> RouteFile:
    return parse_route_file("t.yaml", text.encode(), env)


def issues_of(text: str, env: Mapping[str, str] = ENV) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    return caught.value.issues


def expected_target(**changes: object) -> TargetConfig:
    target = TargetConfig(
        route_type="llm/v1/chat",
        auth=AuthConfig(header_name="api-key", header_value="test-key-0123"),
        model=ModelConfig(
            provider="azure",
            name="gpt-4o",
            options=ModelOptions(azure_instance="myresource", azure_deployment_id="gpt-4o"),
        ),
        logging=LoggingConfig(),
    )
    return dataclasses.replace(target, **changes)  # type: ignore[arg-type]


# -- the canonical example ------------------------------------------------------------------


def test_canonical_example_loads_to_the_expected_dataclasses() -> None:
    """Every field of the canonical example lands where other modules expect it."""
    loaded = parse(CANONICAL)
    assert loaded == RouteFile(
        source="t.yaml",
        digest=hashlib.sha256(CANONICAL.encode()).hexdigest(),
        route=RouteConfig(
            name="azure-gpt-4o",
            paths=("/openai/deployments/gpt-4o/chat/completions",),
            methods=("POST",),
        ),
        proxy=AiProxyAdvancedConfig(targets=(expected_target(),)),
    )


def test_defaults_match_the_documented_values() -> None:
    """Unset fields take aigw's defaults (some deliberately differ from Kong's)."""
    proxy = parse(CANONICAL).proxy
    target = proxy.targets[0]
    assert (proxy.max_request_body_size, proxy.response_streaming, proxy.model_name_header) == (
        8 * 1024 * 1024,
        "allow",
        True,
    )
    assert (target.weight, target.connect_timeout, target.write_timeout) == (100, 10_000, 60_000)
    assert target.read_timeout == 600_000
    assert target.logging == LoggingConfig(log_statistics=True, log_payloads=False)
    assert target.auth.allow_override is False
    assert target.model.options.azure_api_version is None


def test_every_supported_field_is_read() -> None:
    """A file setting every field yields exactly those values (ints accepted for floats)."""
    text = """\
route:
  name: all.fields_1
  paths: ["/a/{d}", "~/openai/deployments/(?<d>[^/]+)/embeddings$"]
  methods: [post, Get]
plugins:
  - name: ai-proxy-advanced
    config:
      max_request_body_size: 0
      response_streaming: always
      model_name_header: false
      targets:
        - route_type: llm/v1/embeddings
          description: ""
          weight: 65535
          connect_timeout: 1
          write_timeout: 2
          read_timeout: 3
          auth:
            header_name: Authorization
            header_value: "Bearer ${AZURE_OPENAI_KEY}"
            param_name: subscription-key
            param_value: ${AZURE_OPENAI_KEY}
            param_location: query
            allow_override: yes
          logging:
            log_statistics: off
            log_payloads: true
          model:
            provider: azure
            name: "$(uri_captures.d)"
            options:
              azure_instance: ${AZURE_INSTANCE}
              azure_deployment_id: "$(uri_captures.d)"
              azure_api_version: "2024-10-21"
              upstream_url: http://127.0.0.1:8081/openai/deployments/x/embeddings?a=b
              upstream_path: /openai/deployments/x/embeddings
              max_tokens: 1
              temperature: 5
              top_p: 0
"""
    loaded = parse(text)
    assert loaded.route == RouteConfig(
        name="all.fields_1",
        paths=("/a/{d}", "~/openai/deployments/(?<d>[^/]+)/embeddings$"),
        methods=("POST", "GET"),
    )
    proxy = loaded.proxy
    assert (proxy.max_request_body_size, proxy.response_streaming, proxy.model_name_header) == (
        0,
        "always",
        False,
    )
    assert proxy.targets == (
        TargetConfig(
            route_type="llm/v1/embeddings",
            description="",
            weight=65535,
            connect_timeout=1,
            write_timeout=2,
            read_timeout=3,
            auth=AuthConfig(
                header_name="Authorization",
                header_value="Bearer test-key-0123",
                param_name="subscription-key",
                param_value="test-key-0123",
                param_location="query",
                allow_override=True,
            ),
            logging=LoggingConfig(log_statistics=False, log_payloads=True),
            model=ModelConfig(
                provider="azure",
                name="$(uri_captures.d)",
                options=ModelOptions(
                    azure_instance="myresource",
                    azure_deployment_id="$(uri_captures.d)",
                    azure_api_version="2024-10-21",
                    upstream_url="http://127.0.0.1:8081/openai/deployments/x/embeddings?a=b",
                    upstream_path="/openai/deployments/x/embeddings",
                    max_tokens=1,
                    temperature=5.0,
                    top_p=0.0,
                ),
            ),
        ),
    )
    assert isinstance(proxy.targets[0].model.options.temperature, float)


@pytest.mark.parametrize(
    ("edits", "check"),
    [
        pytest.param(
            [("            name: gpt-4o\n", ""), ("llm/v1/chat", "preserve")],
            lambda f: f.proxy.targets[0].model.name is None,
            id="preserve-without-model-name",
        ),
        pytest.param(
            [
                ("  methods: [POST]            # optional; default: any method\n", ""),
            ],
            lambda f: f.route.methods is None,
            id="methods-omitted-means-any",
        ),
        pytest.param(
            [("  methods: [POST]", "  methods:")],
            lambda f: f.route.methods is None,
            id="null-is-unset",
        ),
        pytest.param(
            [
                ("              azure_instance: ${AZURE_INSTANCE}\n", ""),
                (
                    "              azure_deployment_id: gpt-4o\n",
                    "              upstream_url: http://mock:8080/openai/deployments/gpt-4o\n",
                ),
            ],
            lambda f: (
                f.proxy.targets[0].model.options.upstream_url
                == "http://mock:8080/openai/deployments/gpt-4o"
            ),
            id="upstream-url-replaces-azure-instance-and-deployment",
        ),
        pytest.param(
            [
                (
                    "          auth:\n            header_name: api-key\n"
                    "            header_value: ${AZURE_OPENAI_KEY}\n",
                    "          auth:\n",
                )
            ],
            lambda f: f.proxy.targets[0].auth == AuthConfig(),
            id="empty-auth-section",
        ),
        pytest.param(
            [("${AZURE_INSTANCE}", "${UNSET_INSTANCE:-fallback}")],
            lambda f: f.proxy.targets[0].model.options.azure_instance == "fallback",
            id="env-default",
        ),
        pytest.param(
            [("paths: [/openai", "paths: [~/openai")],
            lambda f: f.route.paths[0].startswith("~"),
            id="regex-path",
        ),
    ],
)
def test_accepted_variants(edits: list[tuple[str, str]], check: object) -> None:
    """Optional parts may be left out or replaced, as documented."""
    assert callable(check)
    assert check(parse(edit(*edits)))


# -- schema errors -----------------------------------------------------------------------------

SCHEMA_ERRORS = [
    # unknown keys, with suggestions
    ("header_value:", "header_vaule:", f"{T}.auth.header_vaule", "did you mean `header_value`?"),
    (
        "azure_instance:",
        "zure_instance:",
        f"{OPTIONS}.zure_instance",
        "did you mean `azure_instance`?",
    ),
    ("  methods:", "  xyzzy: 1\n  methods:", "route.xyzzy", "expected one of `name`, `paths`"),
    (
        "    config:\n",
        "    config:\n      balancer: {slots: 10000}\n",
        "plugins[0].config.balancer.slots",
        "not supported",
    ),
    ("route:\n", "_format_version: '3.0'\nroute:\n", "_format_version", "Kong setting"),
    ("  name: azure-gpt-4o\n", "  name: azure-gpt-4o\n  hosts: [x]\n", "route.hosts", "Kong"),
    ("  - name: ai", "  - route: x\n    name: ai", "plugins[0].route", "not needed"),
    # route
    ("  name: azure-gpt-4o\n", "", "route.name", "missing required key `name`"),
    ("name: azure-gpt-4o", "name: azure gpt", "route.name", '`-`; got "azure gpt"'),
    ("name: azure-gpt-4o", "name: ''", "route.name", "must not be empty"),
    ("name: azure-gpt-4o", "name: 42", "route.name", "expected a string; got an integer"),
    ("paths: [/openai/deployments/gpt-4o/chat/completions]", "paths: []", "route.paths", "one"),
    ("paths: [/openai", "paths: [openai", "route.paths[0]", "must start with `/`"),
    ("paths: [/openai/deployments/gpt-4o/chat/completions]", "paths: /x", "route.paths", "list"),
    ("methods: [POST]", "methods: [FETCH]", "route.methods[0]", "unknown HTTP method"),
    ("methods: [POST]", "methods: []", "route.methods", "leave `methods` out"),
    ("methods: [POST]", "methods: [POST, post]", "route.methods[1]", "duplicate method `POST`"),
    # plugins
    ("plugins:\n  - name", "plugins: []\nx:\n  - name", "plugins", "exactly one plugin"),
    ("ai-proxy-advanced", "rate-limiting", "plugins[0].name", "`ai-proxy-advanced`"),
    ("ai-proxy-advanced", "ai-proxy", "plugins[0].name", "move `route_type`, `auth`"),
    ("      targets:\n", "      targets: []\n      x:\n", f"{T[:-3]}", "at least one target"),
    (
        "          auth:\n",
        "          auth: {}\n        - route_type: llm/v1/embeddings\n          auth:\n",
        "plugins[0].config.targets[1].route_type",
        "every target of a pool carries the same route type",
    ),
    # target
    ("route_type: llm/v1/chat", "route_type: llm/v2/chat", f"{T}.route_type", "`llm/v1/chat`"),
    ("- route_type: llm/v1/chat\n          auth", "- auth", f"{T}.route_type", "missing"),
    ("          auth:\n", "          weight: 0\n          auth:\n", f"{T}.weight", "1 and 65535"),
    ("          auth:\n", "          weight: 65536\n          auth:\n", f"{T}.weight", "65535"),
    ("          auth:\n", "          weight: true\n          auth:\n", f"{T}.weight", "boolean"),
    ("          auth:\n", "          read_timeout: 0\n          auth:\n", f"{T}.read_timeout", ""),
    (
        "          auth:\n",
        "          connect_timeout: 1.5\n          auth:\n",
        f"{T}.connect_timeout",
        "expected an integer; got a number",
    ),
    (
        "          auth:\n",
        "          logging: {log_payloads: 1}\n          auth:\n",
        f"{T}.logging.log_payloads",
        "expected a boolean",
    ),
    # auth
    (
        "            header_value: ${AZURE_OPENAI_KEY}\n",
        "",
        f"{T}.auth.header_value",
        "required when `header_name` is set",
    ),
    ("            header_name: api-key\n", "", f"{T}.auth.header_name", "`header_value` is set"),
    (
        "            header_name: api-key\n",
        "            header_name: api-key\n            param_name: k\n",
        f"{T}.auth.param_location",
        "required when `param_name` is set",
    ),
    ("header_name: api-key", "header_name: api key", f"{T}.auth.header_name", "header name"),
    (
        "            header_name: api-key\n",
        "            header_name: api-key\n            param_location: header\n",
        f"{T}.auth.param_location",
        "expected one of `query`, `body`",
    ),
    # model
    ("provider: azure", "provider: openai", f"{T}.model.provider", "supported providers: `azure`"),
    ("            provider: azure\n", "", f"{T}.model.provider", "missing required key"),
    ("          model:\n", "          modle:\n", f"{T}.model", "missing required key `model`"),
    (
        "              azure_instance: ${AZURE_INSTANCE}\n",
        "",
        f"{OPTIONS}.azure_instance",
        "required for provider `azure` unless `upstream_url` is set",
    ),
    (
        "              azure_deployment_id: gpt-4o\n",
        "",
        f"{OPTIONS}.azure_deployment_id",
        "unless `upstream_url` is set",
    ),
    ("${AZURE_INSTANCE}", "my_resource", f"{OPTIONS}.azure_instance", "DNS label"),
    ("${AZURE_INSTANCE}", "-bad", f"{OPTIONS}.azure_instance", "DNS label"),
    ("${AZURE_INSTANCE}", "x.openai.azure.com", f"{OPTIONS}.azure_instance", "resource name"),
    ("deployment_id: gpt-4o", "deployment_id: a/b", f"{OPTIONS}.azure_deployment_id", "segment"),
    ("deployment_id: gpt-4o", "deployment_id: ..", f"{OPTIONS}.azure_deployment_id", "segment"),
]
_OPTION_ERRORS = [
    ("azure_api_version: 2024-10-21", "azure_api_version", "got a date"),
    ("azure_api_version: 2024 10", "azure_api_version", "only letters, digits"),
    ("upstream_url: ftp://x/y", "upstream_url", "absolute http:// or https:// URL"),
    ("upstream_url: /relative", "upstream_url", "absolute http:// or https:// URL"),
    ("upstream_url: https://u:p@x/y", "upstream_url", "must not contain credentials"),
    ("upstream_url: https://x/y#frag", "upstream_url", "must not contain a `#fragment`"),
    ("upstream_url: 'https://x:99999/'", "upstream_url", "valid host and port"),
    ("upstream_path: openai/x", "upstream_path", "must start with `/`"),
    ("max_tokens: 0", "max_tokens", "at least 1; got 0"),
    ("max_tokens: yes", "max_tokens", "expected an integer; got a boolean"),
    ("temperature: 5.5", "temperature", "between 0 and 5; got 5.5"),
    ("temperature: -1", "temperature", "between 0 and 5"),
    ("temperature: hot", "temperature", "expected a number; got a string"),
    ("top_p: 1.01", "top_p", "between 0 and 1"),
    ("top_p: .nan", "top_p", "between 0 and 1"),
    ("max_tokenz: 5", "max_tokenz", "did you mean `max_tokens`?"),
    ("top_k: 5", "top_k", "Kong setting that aigw does not support"),
]
SCHEMA_ERRORS += [
    (
        "              azure_deployment_id: gpt-4o\n",
        f"              azure_deployment_id: gpt-4o\n              {line}\n",
        f"{OPTIONS}.{key}",
        reason,
    )
    for line, key, reason in _OPTION_ERRORS
]
_CONFIG_ERRORS = [
    ("response_streaming: no", "response_streaming", "expected one of `allow`, `deny`, `always`"),
    ("response_streaming: sometimes", "response_streaming", '`always`; got "sometimes"'),
    ("max_request_body_size: -1", "max_request_body_size", "at least 0; got -1"),
    ("model_name_header: 'true'", "model_name_header", "expected a boolean"),
]
SCHEMA_ERRORS += [
    (
        "    config:\n",
        f"    config:\n      {line}\n",
        f"plugins[0].config.{key}",
        reason,
    )
    for line, key, reason in _CONFIG_ERRORS
]


@pytest.mark.parametrize(
    ("old", "new", "key_path", "reason"),
    SCHEMA_ERRORS,
    ids=[f"{case[2]}:{case[3][:30]}" for case in SCHEMA_ERRORS],
)
def test_schema_error(old: str, new: str, key_path: str, reason: str) -> None:
    """Each rule reports at the right key path with an actionable reason."""
    issues = issues_of(edit((old, new)))
    matching = [i for i in issues if i.key_path.startswith(key_path) and reason in i.reason]
    assert matching, "\n".join(map(str, issues))
    assert all(i.line is not None for i in issues), "every issue carries a position"


def test_response_streaming_no_is_explained() -> None:
    """`no` is YAML 1.1 for false; the message says so instead of accepting or mangling it."""
    (issue,) = issues_of(edit(("    config:\n", "    config:\n      response_streaming: no\n")))
    assert issue.key_path == "plugins[0].config.response_streaming"
    assert issue.reason == (
        "expected one of `allow`, `deny`, `always`; got a boolean "
        "(YAML reads the unquoted `no` as a boolean)"
    )
    assert (issue.line, issue.column) == (8, 27)


def test_unknown_key_reports_its_own_line_and_column() -> None:
    """The typo from Kong's own docs is found, with the line an editor can jump to."""
    issues = issues_of(edit(("header_value:", "header_vaule:")))
    assert [str(i) for i in issues] == [
        "t.yaml:10:11: plugins[0].config.targets[0].auth.header_value: "
        "required when `header_name` is set",
        "t.yaml:12:13: plugins[0].config.targets[0].auth.header_vaule: "
        "unknown key `header_vaule`; did you mean `header_value`?",
    ]


def test_every_issue_in_a_file_is_reported() -> None:
    """Validation does not stop at the first problem."""
    text = edit(
        ("name: azure-gpt-4o", "name: bad name"),
        ("provider: azure", "provider: openai"),
        ("    config:\n", "    config:\n      response_streaming: no\n"),
        ("header_value:", "header_vaule:"),
        ("${AZURE_INSTANCE}", "${NOT_SET}"),
    )
    paths = [i.key_path for i in issues_of(text)]
    assert paths == [
        "route.name",
        "plugins[0].config.response_streaming",
        f"{T}.auth.header_value",
        f"{T}.auth.header_vaule",
        f"{T}.model.provider",
        f"{OPTIONS}.azure_instance",
    ]


def test_unset_variable_is_not_reported_twice() -> None:
    """An unset ${VAR} is one issue, not also "not a DNS label" for the text left behind."""
    (issue,) = issues_of(edit(("${AZURE_INSTANCE}", "${NOT_SET}")))
    assert issue.key_path == f"{OPTIONS}.azure_instance"
    assert issue.reason.startswith("environment variable `NOT_SET` is not set")
    assert (issue.line, issue.column) == (17, 31)


def test_missing_env_variables_name_the_variable_and_key_path() -> None:
    """With no environment at all, both shipped variables are named at their keys."""
    issues = issues_of(CANONICAL, env={})
    assert [(i.key_path, i.reason.split(" is not set")[0]) for i in issues] == [
        (f"{T}.auth.header_value", "environment variable `AZURE_OPENAI_KEY`"),
        (f"{OPTIONS}.azure_instance", "environment variable `AZURE_INSTANCE`"),
    ]


# -- secrets -------------------------------------------------------------------------------

SECRET = "sk-Sup3r/Secret+value="  # base64-style: invalid in every non-secret field


@pytest.mark.parametrize(
    ("env_extra", "edits"),
    [
        pytest.param(
            {"AZURE_OPENAI_KEY": SECRET + "\n"}, [], id="trailing-newline-in-header-value"
        ),
        pytest.param({"AZURE_OPENAI_KEY": " " + SECRET}, [], id="leading-space-in-header-value"),
        pytest.param({"AZURE_OPENAI_KEY": ""}, [], id="empty-header-value"),
        pytest.param({}, [("${AZURE_INSTANCE}", "${AZURE_OPENAI_KEY}")], id="secret-as-instance"),
        pytest.param({}, [("name: azure-gpt-4o", "name: ${AZURE_OPENAI_KEY}")], id="route-name"),
        pytest.param({}, [("methods: [POST]", 'methods: ["${AZURE_OPENAI_KEY}"]')], id="method"),
        pytest.param({}, [("llm/v1/chat", "${AZURE_OPENAI_KEY}")], id="enum"),
        pytest.param({}, [("provider: azure", "provider: ${AZURE_OPENAI_KEY}")], id="provider"),
        pytest.param(
            {}, [("deployment_id: gpt-4o", "deployment_id: x/${AZURE_OPENAI_KEY}")], id="segment"
        ),
        pytest.param(
            {},
            [("azure_deployment_id: gpt-4o", "upstream_url: ftp://${AZURE_OPENAI_KEY}")],
            id="upstream-url",
        ),
        pytest.param(
            {}, [("header_name: api-key", "header_name: ${AZURE_OPENAI_KEY}=")], id="header-name"
        ),
        pytest.param(
            {}, [("header_value: ${AZURE_OPENAI_KEY}", f"header_value: {SECRET}\n  x")], id="yaml"
        ),
        pytest.param(
            {}, [("header_value: ${AZURE_OPENAI_KEY}", "header_value: 20240101")], id="int-literal"
        ),
        pytest.param(
            {}, [("header_value: ${AZURE_OPENAI_KEY}", "header_value: 2024-02-30")], id="bad-date"
        ),
        pytest.param(
            {}, [("header_value: ${AZURE_OPENAI_KEY}", f"header_vaule: {SECRET}")], id="unknown"
        ),
        pytest.param(
            {},
            [("header_value: ${AZURE_OPENAI_KEY}", f"header_value: '{SECRET}\\x${{'")],
            id="unterminated-reference",
        ),
    ],
)
def test_no_message_contains_a_secret(
    env_extra: dict[str, str], edits: list[tuple[str, str]]
) -> None:
    """Neither a resolved variable nor a literal credential is ever echoed back."""
    env = {**ENV, "AZURE_OPENAI_KEY": SECRET, **env_extra}
    with pytest.raises(ConfigError) as caught:
        parse(edit(*edits), env)
    rendered = str(caught.value) + repr(caught.value.issues)
    assert "Sup3r" not in rendered
    assert "20240101" not in rendered


def test_value_from_environment_is_named_not_shown() -> None:
    """A bad value that came from ${VAR} names the variable so the operator knows where to look."""
    env = {**ENV, "AZURE_OPENAI_KEY": SECRET}
    (issue,) = issues_of(edit(("${AZURE_INSTANCE}", "${AZURE_OPENAI_KEY}")), env)
    assert issue.reason.endswith("; value from `${AZURE_OPENAI_KEY}`")


def test_repr_never_shows_credentials() -> None:
    """Loaded objects can be logged: secrets are excluded from repr."""
    loaded = parse(
        edit(
            (
                "            header_value: ${AZURE_OPENAI_KEY}\n",
                "            header_value: ${AZURE_OPENAI_KEY}\n            param_name: k\n"
                "            param_value: ${AZURE_OPENAI_KEY}\n            param_location: body\n",
            )
        )
    )
    assert loaded.proxy.targets[0].auth.param_value == ENV["AZURE_OPENAI_KEY"]
    assert ENV["AZURE_OPENAI_KEY"] not in repr(loaded)


# -- the model -----------------------------------------------------------------------------


def test_config_objects_are_frozen_slotted_and_use_tuples() -> None:
    """Shared by every request, so immutable all the way down."""
    loaded = parse(CANONICAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.route.name = "x"  # type: ignore[misc]
    for obj in (loaded, loaded.route, loaded.proxy, loaded.proxy.targets[0]):
        assert not hasattr(obj, "__dict__")
    assert isinstance(loaded.route.paths, tuple) and isinstance(loaded.proxy.targets, tuple)
    assert isinstance(loaded.route.methods, tuple)


# -- error format --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issue", "text"),
    [
        (ConfigIssue("a.yaml", "route.name", "bad", 3, 9), "a.yaml:3:9: route.name: bad"),
        (ConfigIssue("a.yaml", "route.name", "bad"), "a.yaml: route.name: bad"),
        (ConfigIssue("a.yaml", "", "file is empty"), "a.yaml: file is empty"),
        (ConfigIssue("a.yaml", "", "invalid YAML", 2, 1), "a.yaml:2:1: invalid YAML"),
    ],
)
def test_issue_format(issue: ConfigIssue, text: str) -> None:
    """Issues print compiler-style: file:line:col: key.path: reason."""
    assert str(issue) == text


def test_config_error_lists_every_issue_one_per_line() -> None:
    """str(ConfigError) is what `aigw check` and the reload log print."""
    first = ConfigIssue("a.yaml", "route.name", "bad", 1, 2)
    second = ConfigIssue("a.yaml", "plugins", "worse", 5, 1)
    error = ConfigError((first, second))
    assert str(error) == "a.yaml:1:2: route.name: bad\na.yaml:5:1: plugins: worse"
    assert error.issues == (first, second) and error.source == "a.yaml"
    with pytest.raises(ValueError, match="at least one"):
        ConfigError(())


def test_public_names_are_exported_and_sorted() -> None:
    """`aigw.config` re-exports its public API; every name resolves."""
    names = aigw.config.__all__
    assert list(names) == sorted(names)
    for name in names:
        assert getattr(aigw.config, name) is not None


# -- the files the project ships ------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "name", "deployment"),
    [
        ("gpt-4o.yaml", "azure-gpt-4o", "gpt-4o"),
        ("gpt-4.1-mini.yaml", "azure-gpt-4-1-mini", "gpt-4.1-mini"),
    ],
)
def test_shipped_example_files_load(file: str, name: str, deployment: str) -> None:
    """conf.d's chat examples are the seed's two routes, as model routes (their classic
    paths include the seed's), and load with the two documented variables."""
    loaded = load_file(REPO / "conf.d" / file, ENV)
    assert loaded.route == RouteConfig(name=name, paths=(), models=(deployment,))
    (target,) = loaded.proxy.targets
    assert target == expected_target(
        route_type="auto",
        model=ModelConfig(
            provider="azure",
            name=deployment,
            options=ModelOptions(azure_instance="myresource", azure_deployment_id=deployment),
        ),
    )


def test_unknown_key_is_reported_even_when_its_value_is_unreadable() -> None:
    """An unset ${VAR} under a misspelt key does not hide the misspelling."""
    issues = issues_of(edit(("header_value: ${AZURE_OPENAI_KEY}", "header_vaule: ${NOPE}")))
    assert [(i.key_path.rsplit(".", 1)[-1], i.reason.split(" (")[0]) for i in issues] == [
        ("header_value", "required when `header_name` is set"),
        ("header_vaule", "unknown key `header_vaule`; did you mean `header_value`?"),
        ("header_vaule", "environment variable `NOPE` is not set"),
    ]


@pytest.mark.parametrize(
    ("old", "new", "key_path"),
    [
        ("route:\n  name", "route:\nx:\n  name", "route"),
        ("plugins:\n  - name", "plugins:\nx:\n  - name", "plugins"),
        ("  name: azure-gpt-4o", "  name:", "route.name"),
        ("      targets:\n", "      targets:\n      x:\n", "plugins[0].config.targets"),
    ],
)
def test_required_key_without_a_value(old: str, new: str, key_path: str) -> None:
    """`key:` with nothing after it is null, and reported as such rather than as missing."""
    issues = issues_of(edit((old, new)))
    assert any(i.key_path == key_path and i.reason == "must have a value; got null" for i in issues)


# -- model aliases and the body-model switch ---------------------------------------------------

MODEL_NAME = "            name: gpt-4o\n"


def test_model_alias_is_one_name_as_in_kong_or_a_list() -> None:
    one = parse(edit((MODEL_NAME, MODEL_NAME + "            model_alias: gpt-4o-2024-11-20\n")))
    assert one.proxy.targets[0].model.model_alias == ("gpt-4o-2024-11-20",)
    many = parse(
        edit((MODEL_NAME, MODEL_NAME + "            model_alias: [a, gpt-4o-2024-11-20, a]\n"))
    )
    assert many.proxy.targets[0].model.model_alias == ("a", "gpt-4o-2024-11-20")
    assert parse(CANONICAL).proxy.targets[0].model.model_alias == ()


def test_ignore_body_model_is_a_plugin_config_switch() -> None:
    assert parse(CANONICAL).proxy.ignore_body_model is False
    text = edit(("    config:\n", "    config:\n      ignore_body_model: true\n"))
    assert parse(text).proxy.ignore_body_model is True


@pytest.mark.parametrize(
    ("old", "new", "key_path", "reason"),
    [
        (
            MODEL_NAME,
            MODEL_NAME + "            model_alias: []\n",
            f"{T}.model.model_alias",
            "must list at least one name",
        ),
        (
            MODEL_NAME,
            MODEL_NAME + "            model_alias: [a, 3]\n",
            f"{T}.model.model_alias[1]",
            "a string",
        ),
        (
            MODEL_NAME,
            MODEL_NAME + "            model_alias: 3\n",
            f"{T}.model.model_alias",
            "expected",
        ),
        (
            MODEL_NAME,
            MODEL_NAME + "            model_alais: x\n",
            f"{T}.model.model_alais",
            "did you mean `model_alias`?",
        ),
        (
            "    config:\n",
            "    config:\n      ignore_body_modle: true\n",
            "plugins[0].config.ignore_body_modle",
            "did you mean `ignore_body_model`?",
        ),
        (
            "    config:\n",
            "    config:\n      ignore_body_model: yes please\n",
            "plugins[0].config.ignore_body_model",
            "boolean",
        ),
    ],
)
def test_model_alias_and_ignore_body_model_errors(
    old: str, new: str, key_path: str, reason: str
) -> None:
    (issue,) = issues_of(edit((old, new)))
    assert issue.key_path == key_path
    assert reason in issue.reason
    assert issue.line is not None and issue.line > 0
