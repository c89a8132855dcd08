"""Issue 12's config language: a pool of targets, the `balancer` section, Entra ID auth, and
what `aigw check` prints and warns about them. Every rule with its file:line:col and key path;
secrets never shown."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from aigw.cli import main
from aigw.config import AuthConfig, ConfigError, ConfigIssue, RouteFile, parse_route_file
from aigw.config.model import BalancerConfig

# The issue's example, line for line, with `${VAR}` quoted: a plain `{` is not allowed
# inside a YAML flow mapping.
POOL = """\
route:
  name: pool
  paths: [/openai/v1/chat/completions]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:
      balancer:
        algorithm: round-robin
        retries: 3
        failover_criteria: [error, timeout, http_429, http_500, http_502, http_503, http_504, non_idempotent]
        max_fails: 3
        fail_timeout: 10000
        hash_on_header: x-session-id
        latency_strategy: tpot
        tokens_count_strategy: total-tokens
      targets:
        - weight: 100
          route_type: llm/v1/chat
          auth: {header_name: api-key, header_value: '${KEY_SWEDEN}'}
          model: {provider: azure, name: gpt-4o, options: {azure_instance: '${SWEDEN}', azure_deployment_id: gpt-4o}}
        - weight: 100
          route_type: llm/v1/chat
          auth: {header_name: api-key, header_value: '${KEY_EASTUS}'}
          model: {provider: azure, name: gpt-4o, options: {azure_instance: '${EASTUS}', azure_deployment_id: gpt-4o-east}}
"""  # noqa: E501 - the issue's lines
ENV = {"KEY_SWEDEN": "key-se-0123", "KEY_EASTUS": "key-us-4567", "SWEDEN": "se", "EASTUS": "us"}
B = "plugins[0].config.balancer"
TS = "plugins[0].config.targets"
SECOND_AUTH = "          auth: {header_name: api-key, header_value: '${KEY_EASTUS}'}\n"
BALANCER_BLOCK = POOL[POOL.index("      balancer:\n") : POOL.index("      targets:\n")]
SECRET = "Sup3r/Secret+client=value"
GUID = "0b5c7a1e-3f2d-4c8b-9a6e-1d2f3a4b5c6d"


def edit(*replacements: tuple[str, str], text: str = POOL) -> str:
    """Apply text replacements; each old text must occur exactly once."""
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def parse(text: str, env: Mapping[str, str] = ENV) -> RouteFile:
    return parse_route_file("p.yaml", text.encode(), env)


def issues_of(text: str, env: Mapping[str, str] = ENV) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    return caught.value.issues


def only_issue(text: str, env: Mapping[str, str] = ENV) -> ConfigIssue:
    issues = issues_of(text, env)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


def balancer_line(line: str) -> str:
    """The pool with its balancer holding only *line*."""
    return edit((BALANCER_BLOCK, f"      balancer:\n        {line}\n"))


def target(instance: str, deployment: str = "gpt-4o", *, extra: str = "", auth: str = "") -> str:
    """One target entry in flow style."""
    auth = auth or "{header_name: api-key, header_value: k}"
    options = f"{{azure_instance: {instance}, azure_deployment_id: {deployment}}}"
    return (
        f"        - route_type: llm/v1/chat\n          auth: {auth}\n{extra}"
        f"          model: {{provider: azure, name: gpt-4o, options: {options}}}\n"
    )


def route(*targets: str, balancer: str = "") -> str:
    """A route file with *targets* (from `target`) and an optional balancer block."""
    return (
        "route:\n  name: r\n  paths: [/openai/v1/chat/completions]\n"
        "  methods: [POST]\n"
        "plugins:\n  - name: ai-proxy-advanced\n    config:\n"
        f"{balancer}      targets:\n{''.join(targets)}"
    )


# -- a pool loads ---------------------------------------------------------------------------


def test_the_issue_example_loads_as_a_pool() -> None:
    loaded = parse(POOL)
    assert loaded.proxy.balancer == BalancerConfig(
        algorithm="round-robin",
        retries=3,
        failover_criteria=(
            "error",
            "timeout",
            "http_429",
            "http_500",
            "http_502",
            "http_503",
            "http_504",
            "non_idempotent",
        ),
        max_fails=3,
        fail_timeout=10_000,
        hash_on_header="x-session-id",
        latency_strategy="tpot",
        tokens_count_strategy="total-tokens",
    )
    first, second = loaded.proxy.targets
    assert (first.model.options.azure_instance, first.model.options.azure_deployment_id) == (
        "se",
        "gpt-4o",
    )
    assert (second.model.options.azure_instance, second.auth.header_value) == ("us", "key-us-4567")
    assert first.auth.header_value == "key-se-0123"


def test_several_targets_without_a_section_get_kongs_defaults() -> None:
    loaded = parse(edit((BALANCER_BLOCK, "")))
    assert loaded.proxy.balancer == BalancerConfig()
    assert BalancerConfig() == BalancerConfig(
        algorithm="round-robin",
        retries=5,
        failover_criteria=("error", "timeout"),
        max_fails=0,
        fail_timeout=10_000,
        hash_on_header="X-Kong-LLM-Request-ID",
        latency_strategy="tpot",
        tokens_count_strategy="total-tokens",
    )


def test_one_target_keeps_its_balancer_and_without_one_stays_as_today() -> None:
    one = route(target("se"), balancer="      balancer: {retries: 2}\n")
    assert parse(one).proxy.balancer == BalancerConfig(retries=2)
    assert parse(route(target("se"))).proxy.balancer is None
    assert parse(route(target("se"), balancer="      balancer: {}\n")).proxy.balancer == (
        BalancerConfig()
    )


def test_targets_may_name_different_models_and_keep_every_field() -> None:
    text = edit(
        ("name: gpt-4o, options: {azure_instance: '${EASTUS}'", "name: gpt-4o-mini, model_alias: "
         "[mini], options: {azure_instance: '${EASTUS}'"),
        ("        - weight: 100\n          route_type: llm/v1/chat\n          auth: {header_name: "
         "api-key, header_value: '${KEY_EASTUS}'}\n",
         "        - weight: 7\n          read_timeout: 5000\n          logging: {log_payloads: "
         "true}\n          route_type: llm/v1/chat\n          auth: {header_name: api-key, "
         "header_value: '${KEY_EASTUS}'}\n"),
    )  # fmt: skip
    second = parse(text).proxy.targets[1]
    assert (second.model.name, second.model.model_alias) == ("gpt-4o-mini", ("mini",))
    assert (second.weight, second.read_timeout, second.logging.log_payloads) == (7, 5000, True)


def test_failover_criteria_are_deduplicated_in_order_and_may_be_empty() -> None:
    text = balancer_line("failover_criteria: [http_429, error, http_429, error]")
    assert parse(text).proxy.balancer == BalancerConfig(failover_criteria=("http_429", "error"))
    assert parse(balancer_line("failover_criteria: []")).proxy.balancer == BalancerConfig(
        failover_criteria=()
    )


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("fail_timeout: 0", "fail_timeout", 0),
        ("fail_timeout: 2147483647", "fail_timeout", 2**31 - 1),
        ("retries: 0", "retries", 0),
        ("retries: 32767", "retries", 32767),
        ("max_fails: 0", "max_fails", 0),
        ("algorithm: consistent-hashing", "algorithm", "consistent-hashing"),
        ("algorithm: least-connections", "algorithm", "least-connections"),
        ("algorithm: priority", "algorithm", "priority"),
        ("latency_strategy: e2e", "latency_strategy", "e2e"),
        ("tokens_count_strategy: completion-tokens", "tokens_count_strategy", "completion-tokens"),
        ("hash_on_header: X-Session-Id", "hash_on_header", "X-Session-Id"),
    ],
)
def test_balancer_values_accepted(line: str, field: str, value: object) -> None:
    assert getattr(parse(balancer_line(line)).proxy.balancer, field) == value


def test_sixty_four_targets_are_allowed_and_sixty_five_are_not() -> None:
    many = [target(f"r{i}") for i in range(65)]
    assert len(parse(route(*many[:64])).proxy.targets) == 64
    issue = only_issue(route(*many))
    assert (issue.key_path, issue.line, issue.column) == (TS, 9, 9)
    assert issue.reason == "lists 65 targets; at most 64 are supported in one route"


# -- balancer errors ----------------------------------------------------------------------------

BALANCER_ERRORS = [
    ("algorithm: random", "algorithm", "expected one of `round-robin`, `priority`", 20),
    (
        "algorithm: semantic",
        "algorithm",
        "`semantic` is a Kong setting that aigw does not support: needs Kong's embeddings",
        20,
    ),
    ("algorithm: 3", "algorithm", "expected one of `round-robin`", 20),
    ("algoritm: priority", "algoritm", "unknown key `algoritm`; did you mean `algorithm`?", 9),
    ("retries: -1", "retries", "must be between 0 and 32767; got -1", 18),
    ("retries: 32768", "retries", "must be between 0 and 32767; got 32768", 18),
    ("retries: yes", "retries", "expected an integer; got a boolean", 18),
    ("failover_criteria: error", "failover_criteria", "expected a list; got a string", 28),
    (
        "failover_criteria: [error, http_418]",
        "failover_criteria[1]",
        "unknown failover criterion; expected one of `error`, `timeout`, `invalid_header`, "
        "`http_403`, `http_404`, `http_429`, `http_500`, `http_502`, `http_503`, `http_504`, "
        '`non_idempotent`; got "http_418"',
        36,
    ),
    ("failover_criteria: [error, 429]", "failover_criteria[1]", "expected a string", 36),
    ("max_fails: -1", "max_fails", "must be between 0 and 2147483647; got -1", 20),
    ("fail_timeout: -1", "fail_timeout", "must be between 0 and 2147483647", 23),
    ("fail_timeout: 2147483648", "fail_timeout", "must be between 0 and 2147483647", 23),
    ("hash_on_header: x session", "hash_on_header", "must be an HTTP header name", 25),
    ("latency_strategy: ttft", "latency_strategy", 'one of `tpot`, `e2e`; got "ttft"', 27),
    (
        "tokens_count_strategy: cost",
        "tokens_count_strategy",
        "`cost` is a Kong setting that aigw does not support: needs per-model prices",
        32,
    ),
    (
        "tokens_count_strategy: llm-accuracy",
        "tokens_count_strategy",
        "`llm-accuracy` is a Kong setting that aigw does not support",
        32,
    ),
    (
        "tokens_count_strategy: total_tokens",
        "tokens_count_strategy",
        "expected one of `total-tokens`, `prompt-tokens`, `completion-tokens`",
        32,
    ),
    (
        "slots: 10000",
        "slots",
        "`slots` is not supported: aigw's consistent-hashing needs no slot table; remove it",
        9,
    ),
    (
        "connect_timeout: 1000",
        "connect_timeout",
        "`connect_timeout` goes on each target in aigw (timeouts are per target), "
        "e.g. `targets[0].connect_timeout`",
        9,
    ),
    ("read_timeout: 1000", "read_timeout", "e.g. `targets[0].read_timeout`", 9),
    ("write_timeout: 1000", "write_timeout", "e.g. `targets[0].write_timeout`", 9),
]


@pytest.mark.parametrize(
    ("line", "key", "reason", "column"),
    BALANCER_ERRORS,
    ids=[case[0] for case in BALANCER_ERRORS],
)
def test_balancer_error(line: str, key: str, reason: str, column: int) -> None:
    """Each rule: one issue, at line 9 of the file, on the key path, with its reason."""
    issue = only_issue(balancer_line(line))
    assert issue.key_path == f"{B}.{key}"
    assert reason in issue.reason, issue.reason
    assert (issue.file, issue.line, issue.column) == ("p.yaml", 9, column)


def test_balancer_must_be_a_mapping() -> None:
    issue = only_issue(edit((BALANCER_BLOCK, "      balancer: [round-robin]\n")))
    assert (issue.key_path, issue.line, issue.column) == (B, 8, 17)
    assert issue.reason == "expected a mapping; got a list"


# -- pool rules --------------------------------------------------------------------------------


def test_every_target_of_a_pool_has_the_same_route_type() -> None:
    old = "          route_type: llm/v1/chat\n" + SECOND_AUTH
    issue = only_issue(edit((old, "          route_type: llm/v1/embeddings\n" + SECOND_AUTH)))
    assert str(issue) == (
        f"p.yaml:23:23: {TS}[1].route_type: is `llm/v1/embeddings` but "
        "`targets[0].route_type` is `llm/v1/chat`: every target of a pool carries the same "
        "route type"
    )


def test_an_invalid_route_type_is_reported_once_not_also_as_differing() -> None:
    old = "          route_type: llm/v1/chat\n" + SECOND_AUTH
    issue = only_issue(edit((old, "          route_type: llm/v9\n" + SECOND_AUTH)))
    assert issue.key_path == f"{TS}[1].route_type"
    assert issue.reason.startswith("expected one of")


@pytest.mark.parametrize(
    ("old", "new", "key_path", "line", "column"),
    [
        (
            "azure_deployment_id: gpt-4o-east",
            "azure_deployment_id: $(headers.x-deployment)",
            f"{TS}[1].model.options.azure_deployment_id",
            25,
            110,
        ),
        (
            "provider: azure, name: gpt-4o, options: {azure_instance: '${SWEDEN}'",
            "provider: azure, name: $(query_params.model), options: {azure_instance: '${SWEDEN}'",
            f"{TS}[0].model.name",
            21,
            42,
        ),
    ],
)
def test_templated_targets_are_refused_in_a_pool(
    old: str, new: str, key_path: str, line: int, column: int
) -> None:
    issue = only_issue(edit((old, new)))
    assert (issue.key_path, issue.line, issue.column) == (key_path, line, column)
    assert issue.reason.startswith(
        "`$(...)` variables are not supported in a pool of several targets"
    )


def test_a_templated_single_target_is_still_allowed() -> None:
    one = route(target("se", "$(headers.x-deployment)"))
    assert parse(one).proxy.targets[0].model.options.azure_deployment_id == (
        "$(headers.x-deployment)"
    )


def test_the_same_deployment_twice_is_refused() -> None:
    text = route(target("se"), target("us"), target("SE"))
    (issue,) = issues_of(text)
    assert str(issue) == (
        f"p.yaml:15:11: {TS}[2]: has the same upstream, deployment and credential as "
        "`targets[0]`: the same deployment twice; raise its weight instead"
    )


@pytest.mark.parametrize(
    "second",
    [
        target("se", "gpt-4o-mini"),
        target("us"),
        target("se", auth="{header_name: api-key, header_value: other-key}"),
        target("se", auth="{azure_use_managed_identity: true}"),
    ],
    ids=["other-deployment", "other-instance", "other-key", "entra"],
)
def test_a_target_differing_in_deployment_or_credential_is_not_a_duplicate(second: str) -> None:
    assert len(parse(route(target("se"), second)).proxy.targets) == 2


def test_duplicate_check_never_shows_the_shared_key() -> None:
    env = {**ENV, "KEY_EASTUS": SECRET, "KEY_SWEDEN": SECRET, "EASTUS": "se"}
    text = edit(("azure_deployment_id: gpt-4o-east", "azure_deployment_id: gpt-4o"))
    (issue,) = issues_of(text, env)
    assert "the same deployment twice" in issue.reason
    assert "Sup3r" not in str(issue)


# -- Microsoft Entra ID ------------------------------------------------------------------------


def entra(auth: str) -> str:
    """A one-target route whose auth is *auth* (a flow mapping)."""
    return route(target("se", auth=auth))


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ("{azure_use_managed_identity: true}", AuthConfig(azure_use_managed_identity=True)),
        (
            f"{{azure_use_managed_identity: true, azure_client_id: {GUID}}}",
            AuthConfig(azure_use_managed_identity=True, azure_client_id=GUID),
        ),
        (
            f"{{azure_use_managed_identity: true, azure_client_id: {GUID}, "
            f"azure_client_secret: '{SECRET}', azure_tenant_id: contoso.onmicrosoft.com}}",
            AuthConfig(
                azure_use_managed_identity=True,
                azure_client_id=GUID,
                azure_client_secret=SECRET,
                azure_tenant_id="contoso.onmicrosoft.com",
            ),
        ),
        (
            f"{{azure_use_managed_identity: true, azure_client_id: {GUID}, "
            f"azure_client_secret: s, azure_tenant_id: {GUID.upper()}}}",
            AuthConfig(
                azure_use_managed_identity=True,
                azure_client_id=GUID,
                azure_client_secret="s",
                azure_tenant_id=GUID.upper(),
            ),
        ),
        ("{azure_use_managed_identity: false}", AuthConfig()),
    ],
    ids=["system-assigned", "user-assigned", "client-secret-domain", "client-secret-guid", "off"],
)
def test_entra_auth_loads(auth: str, expected: AuthConfig) -> None:
    loaded = parse(entra(auth)).proxy.targets[0].auth
    assert loaded == expected
    assert SECRET not in repr(loaded)


ENTRA_ERRORS = [
    (
        "{azure_use_managed_identity: true, header_name: api-key, header_value: k}",
        ["header_name", "header_value"],
        "cannot be combined with `azure_use_managed_identity: true`: a target has one "
        "credential, a key or Microsoft Entra ID; remove one of them",
    ),
    (
        "{azure_use_managed_identity: true, param_name: k, param_value: v, param_location: query}",
        ["param_name", "param_value", "param_location"],
        "cannot be combined with `azure_use_managed_identity: true`",
    ),
    (
        f"{{azure_use_managed_identity: true, azure_client_secret: '{SECRET}'}}",
        ["azure_client_id", "azure_tenant_id"],
        "required with `azure_client_secret`: the client-secret flow signs in as app "
        "`azure_client_id` of tenant `azure_tenant_id`",
    ),
    (
        f"{{azure_client_id: {GUID}, azure_client_secret: '{SECRET}', azure_tenant_id: {GUID}}}",
        ["azure_client_id", "azure_client_secret", "azure_tenant_id"],
        "has no effect without `azure_use_managed_identity: true`, which turns Microsoft "
        "Entra ID on for this target (Kong's shape)",
    ),
    (
        f"{{azure_use_managed_identity: false, azure_client_id: {GUID}}}",
        ["azure_client_id"],
        "has no effect without `azure_use_managed_identity: true`",
    ),
    (
        "{azure_use_managed_identity: true, azure_client_id: my-app}",
        ["azure_client_id"],
        "must be a client (application) id, a GUID such as "
        '`00000000-0000-0000-0000-000000000000`; got "my-app"',
    ),
    (
        f"{{azure_use_managed_identity: true, azure_client_id: {GUID}, "
        f"azure_client_secret: s, azure_tenant_id: contoso}}",
        ["azure_tenant_id"],
        "must be a tenant id, a GUID such as `00000000-0000-0000-0000-000000000000`, or a "
        'tenant domain such as `contoso.onmicrosoft.com`; got "contoso"',
    ),
    (
        "{azure_use_managed_identity: yes please}",
        ["azure_use_managed_identity"],
        "expected a boolean (true or false); got a string",
    ),
    (
        "{azure_use_managed_identity: true, gcp_use_service_account: true}",
        ["gcp_use_service_account"],
        "`gcp_use_service_account` is a Kong setting that aigw does not support",
    ),
    (
        "{aws_access_key_id: x}",
        ["aws_access_key_id"],
        "`aws_access_key_id` is a Kong setting that aigw does not support",
    ),
]


@pytest.mark.parametrize(
    ("auth", "keys", "reason"),
    ENTRA_ERRORS,
    ids=[f"{case[1][0]}:{case[2][:24]}" for case in ENTRA_ERRORS],
)
def test_entra_error(auth: str, keys: list[str], reason: str) -> None:
    issues = issues_of(entra(auth))
    assert [i.key_path for i in issues] == [f"{TS}[0].auth.{key}" for key in keys]
    for issue in issues:
        assert reason in issue.reason, issue.reason
        assert issue.line == 10 and issue.column is not None
        assert "Sup3r" not in str(issue)


@pytest.mark.parametrize(
    "auth",
    [
        f"{{azure_use_managed_identity: true, azure_client_id: {GUID}, "
        f"azure_client_secret: ' {SECRET}', azure_tenant_id: {GUID}}}",
        f"{{azure_use_managed_identity: true, azure_client_id: {GUID}, "
        "azure_client_secret: ${CLIENT_SECRET}, azure_tenant_id: " + GUID + "}",
        f"{{azure_use_managed_identity: true, azure_client_id: {GUID}, "
        f"azure_client_secret: 1234, azure_tenant_id: {GUID}}}",
        f"{{azure_use_managed_identity: true, azure_client_id: {GUID}, "
        f"azure_client_secre: '{SECRET}', azure_tenant_id: {GUID}}}",
        f"{{azure_client_secret: '{SECRET}'}}",
    ],
    ids=["leading-space", "newline-from-env", "not-a-string", "misspelt-key", "no-switch"],
)
def test_a_client_secret_is_never_shown(auth: str) -> None:
    env = {**ENV, "CLIENT_SECRET": SECRET + "\n"}
    issues = issues_of(entra(auth).replace("1234", "12345678"), env)
    rendered = "\n".join(map(str, issues)) + repr(issues)
    assert "Sup3r" not in rendered and "12345678" not in rendered


def test_a_client_id_from_the_environment_is_named_not_shown() -> None:
    text = entra("{azure_use_managed_identity: true, azure_client_id: '${CLIENT_ID}'}")
    issue = only_issue(text, {**ENV, "CLIENT_ID": "not-a-guid"})
    assert issue.reason.endswith("; value from `${CLIENT_ID}`")
    assert "not-a-guid" not in str(issue)


# -- aigw check ----------------------------------------------------------------------------------


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> tuple[int, str, str]:
    """Run ``aigw check`` in-process on one route file; (status, stdout, stderr)."""
    (tmp_path / "route.yaml").write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        # `aigw check` configures logging for the process (structlog caches loggers
        # on first use): in-process, that would hide later tests' log lines from
        # their capture_logs.
        patch.setattr("aigw.cli.configure_logging", lambda *args, **kwargs: None)
        status = main(["check", "--conf-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    return status, out, err


def test_check_prints_each_target_and_the_balancer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = edit(
        ("        - weight: 100\n          route_type: llm/v1/chat\n" + SECOND_AUTH,
         "        - weight: 40\n          route_type: llm/v1/chat\n" + SECOND_AUTH),
    )  # fmt: skip
    status, out, err = check(tmp_path, capsys, text)
    assert status == 0
    # The issue's example sets hash_on_header with round-robin: worth a warning.
    assert err == (
        f"warning: route pool ({tmp_path / 'route.yaml'}): hash_on_header is set but algorithm "
        "is round-robin: only consistent-hashing reads it\n"
    )
    assert (
        "    -> se  weight 100  deployment gpt-4o  "
        "https://se.openai.azure.com/openai/deployments/gpt-4o/chat/completions  "
        "api-version: client's, else 2024-10-21"
    ) in out.splitlines()
    assert any(
        line.startswith("    -> us  weight 40  deployment gpt-4o-east  https://us.openai")
        for line in out.splitlines()
    )
    assert (
        "    balancer: round-robin; retries 3; failover on error, timeout, http_429, http_500, "
        "http_502, http_503, http_504, non_idempotent; circuit breaker: 3 failure(s) within "
        "10000 ms eject for 10000 ms"
    ) in out.splitlines()
    assert "key-se-0123" not in out and "key-us-4567" not in out


def test_check_names_targets_by_host_and_makes_names_unique(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def upstream(deployment: str) -> str:
        url = f"https://gw.example.com/openai/deployments/{deployment}/chat/completions"
        return (
            "        - route_type: llm/v1/chat\n"
            f"          model: {{provider: azure, name: m, options: {{upstream_url: '{url}'}}}}\n"
        )

    status, out, err = check(tmp_path, capsys, route(upstream("a"), upstream("b")))
    assert status == 0, err
    lines = [line for line in out.splitlines() if line.startswith("    -> ")]
    assert [line.split()[1] for line in lines] == ["gw.example.com", "gw.example.com#2"]
    assert (
        "    balancer: round-robin; retries 5; failover on error, timeout; circuit breaker off"
        in (out.splitlines())
    )


def test_check_keeps_the_one_target_line_as_today(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = check(tmp_path, capsys, route(target("se")))
    assert status == 0
    assert (
        "    -> https://se.openai.azure.com/openai/deployments/gpt-4o/chat/completions  "
        "api-version: client's, else 2024-10-21"
    ) in out.splitlines()
    assert "balancer:" not in out


POST_WARNING = (
    "failover_criteria has http_429 but not non_idempotent: 429/5xx answers never fail over "
    "on POST without non_idempotent, as nginx and Kong do"
)


@pytest.mark.parametrize(
    ("balancer", "methods", "warning"),
    [
        ("{failover_criteria: [error, http_429]}", "[POST]", POST_WARNING),
        ("{failover_criteria: [error, http_429]}", "[GET, POST]", POST_WARNING),
        ("{failover_criteria: [error, http_429]}", None, POST_WARNING),
        ("{failover_criteria: [error, http_429]}", "[GET]", None),
        ("{failover_criteria: [error, http_429, non_idempotent]}", "[POST]", None),
        ("{failover_criteria: [error, timeout]}", "[POST]", None),
        (
            "{max_fails: 3, fail_timeout: 0}",
            "[POST]",
            "max_fails: 3 with fail_timeout: 0: the circuit breaker is off (fail_timeout 0 "
            "turns it off)",
        ),
        ("{max_fails: 3, fail_timeout: 1}", "[POST]", None),
        ("{max_fails: 0, fail_timeout: 0}", "[POST]", None),
        (
            "{hash_on_header: x-session-id}",
            "[POST]",
            "hash_on_header is set but algorithm is round-robin: only consistent-hashing reads it",
        ),
        ("{hash_on_header: x-session-id, algorithm: consistent-hashing}", "[POST]", None),
    ],
)
def test_check_warnings(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    balancer: str,
    methods: str | None,
    warning: str | None,
) -> None:
    """Each warning goes to stderr and leaves the exit status 0; valid pools warn nothing."""
    text = route(target("se"), target("us"), balancer=f"      balancer: {balancer}\n")
    text = text.replace("  methods: [POST]\n", f"  methods: {methods}\n" if methods else "")
    status, _, err = check(tmp_path, capsys, text)
    assert status == 0
    if warning is None:
        assert err == ""
    else:
        assert err.splitlines() == [f"warning: route r ({tmp_path / 'route.yaml'}): {warning}"]
