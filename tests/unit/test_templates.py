"""Kong's template variables: parsing, value checks and check-time errors (aigw.templates)."""

from __future__ import annotations

import pytest

from aigw.config import ConfigError
from aigw.config.loader import parse_route_file
from aigw.metrics import METRICS
from aigw.routing import parse_template
from aigw.templates import (
    Template,
    TemplateSyntaxError,
    Variable,
    is_templated,
    parse,
    path_captures,
    value_problem,
)
from aigw.templates.resolve import (
    MAX_MODEL_LABELS,
    OTHER_MODEL_LABEL,
    TargetResolver,
    compile_resolver,
)
from tests.unit.test_chain import exchange

KONG_PATH = "~/openai/deployments/(?<azure_deployment>[^#?/]+)/chat/completions$"


def test_parse_splits_literals_and_variables_once() -> None:
    template = parse("pre-$(uri_captures.dep)-$(headers.X-Model)$(query_params.v)")
    assert template == Template(
        (
            "pre-",
            Variable("uri_captures", "dep"),
            "-",
            Variable("headers", "x-model"),  # header names are case-insensitive
            Variable("query_params", "v"),
        )
    )
    values = {v: "a" for v in template.variables}
    assert template.render(values) == "pre-a-aa"
    assert parse("gpt-4o") == Template(("gpt-4o",))
    assert is_templated("$(headers.x)") and not is_templated("gpt-4o") and not is_templated(None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("$(uri_capture.x)", "did you mean `uri_captures`?"),
        ("$(headers)", "names no headers field"),
        ("$(headers.)", "names no headers field"),
        ("$(cookies.x)", "unknown template variable kind `cookies`"),
        ("$(uri_captures.x-y)", "not a valid uri_captures name"),
        ("a$(headers.x", "unterminated"),
        ("$(headers.x)$(", "unterminated"),
    ],
)
def test_parse_errors_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=None) as info:
        parse(text)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "value",
    ["..", ".", "a/b", "a%2Fb", "a@b", "a#b", "a?b", "a\r\nb", "a b", "a:b", "é", "", "x" * 65],
)
def test_values_that_could_steer_the_upstream_are_refused(value: str) -> None:
    assert value_problem(value, "azure_deployment_id") is not None
    assert value_problem(value, "azure_instance") is not None


def test_allowed_values() -> None:
    for value in ("gpt-4o", "gpt-4.1-mini", "my_deployment", "x" * 64, "2024-10-21"):
        assert value_problem(value, "azure_deployment_id") is None
    assert value_problem("my-resource", "azure_instance") is None
    # A host label takes no dots: "evil.com" would move the host.
    assert value_problem("evil.com", "azure_instance") is not None
    assert value_problem("-a", "azure_instance") is not None


def test_kong_regex_with_hash_and_query_excluded_is_a_route_path() -> None:
    assert path_captures((KONG_PATH,)) == frozenset({"azure_deployment"})
    assert parse_template(KONG_PATH) == parse_template(
        "/openai/deployments/{azure_deployment}/chat/completions"
    )
    # Every path must provide the capture.
    assert path_captures(("/a/{x}/b", "/c/{x}/{y}")) == frozenset({"x"})


def _route(name: str, deployment: str, *, path: str = KONG_PATH, extra: str = "") -> str:
    return f"""route:
  name: t
  paths: ["{path}"]
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: llm/v1/chat
          model:
            provider: azure
            name: "{name}"
            options:
              azure_instance: my-resource
              azure_deployment_id: "{deployment}"{extra}
"""


def _issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_route_file("conf.d/t.yaml", text.encode(), {})
    return [str(issue) for issue in info.value.issues]


def test_kong_example_loads() -> None:
    var = "$(uri_captures.azure_deployment)"
    file = parse_route_file("t.yaml", _route(var, var).encode(), {})
    assert file.proxy.targets[0].model.options.azure_deployment_id == var


def test_a_capture_no_path_provides_is_an_error_with_file_line_and_key() -> None:
    issues = _issues(_route("$(uri_captures.azure_deploymnet)", "$(uri_captures.deployment)"))
    assert issues == [
        "conf.d/t.yaml:11:19: plugins[0].config.targets[0].model.name: "
        "`$(uri_captures.azure_deploymnet)` names a capture that not every path of "
        "`route.paths` has; did you mean `$(uri_captures.azure_deployment)`?",
        "conf.d/t.yaml:14:36: plugins[0].config.targets[0].model.options.azure_deployment_id: "
        "`$(uri_captures.deployment)` names a capture that not every path of `route.paths` has; "
        "did you mean `$(uri_captures.azure_deployment)`?",
    ]


def test_a_literal_path_provides_no_capture() -> None:
    issues = _issues(_route("gpt-4o", "$(uri_captures.d)", path="/openai/x/chat/completions"))
    assert len(issues) == 1
    assert "model.options.azure_deployment_id" in issues[0]
    assert "capture it with a named group" in issues[0]


def test_unknown_kind_and_missing_field_are_errors_at_their_key() -> None:
    issues = _issues(_route("$(uri_capture.azure_deployment)", "$(headers)"))
    assert len(issues) == 2
    assert issues[0].startswith("conf.d/t.yaml:11:19: plugins[0].config.targets[0].model.name: ")
    assert "unknown template variable kind `uri_capture`" in issues[0]
    assert "model.options.azure_deployment_id: `$(headers)` names no headers field" in issues[1]


def test_the_text_around_variables_is_still_checked() -> None:
    # A literal '/' in a deployment id stays an error even next to a variable.
    issues = _issues(_route("m", "a/$(headers.x)"))
    assert len(issues) == 1 and "must be one URL path segment" in issues[0]
    instance = _issues(
        _route("m", "d").replace("azure_instance: my-resource", 'azure_instance: "$(headers.i).x"')
    )
    assert len(instance) == 1 and "azure_instance" in instance[0]


def test_templates_in_every_documented_field_load() -> None:
    extra = """
              azure_api_version: "$(query_params.v)"
              upstream_path: "/openai/deployments/$(headers.x-deployment)/chat/completions\""""
    text = _route("$(headers.x-model)", "$(headers.x-deployment)", extra=extra).replace(
        "azure_instance: my-resource", 'azure_instance: "$(headers.x-instance)"'
    )
    options = parse_route_file("t.yaml", text.encode(), {}).proxy.targets[0].model.options
    assert options.azure_instance == "$(headers.x-instance)"
    url = _route(
        "m", "d", extra='\n              upstream_url: "https://$(headers.h).example.com/v1"'
    )
    assert parse_route_file("t.yaml", url.encode(), {}).proxy.targets[0].model.options.upstream_url


def test_templates_are_not_read_in_other_fields() -> None:
    # A secret holding "$(" is a secret, not a template.
    text = _route("m", "d").replace(
        "          model:",
        '          auth: {header_name: api-key, header_value: "k$(headers.x)"}\n          model:',
    )
    file = parse_route_file("t.yaml", text.encode(), {})
    assert file.proxy.targets[0].auth.header_value == "k$(headers.x)"


def _resolver(deployment: str) -> TargetResolver:
    text = _route("$(headers.x-deployment)", deployment, path="/r/{azure_deployment}")
    target = parse_route_file("t.yaml", text.encode(), {}).proxy.targets[0]
    resolver = compile_resolver("templated-unit", target, "http://127.0.0.1:1")
    assert resolver is not None
    return resolver


def test_metric_labels_of_a_templated_route_are_capped() -> None:
    resolver = _resolver("$(headers.x-deployment)")
    models = set()
    for index in range(MAX_MODEL_LABELS + 8):
        name = f"deployment-{index}"
        resolved = resolver(exchange(headers={"x-deployment": name}))
        assert resolved.target.model == name
        assert resolved.target.fixed_path == f"/openai/deployments/{name}/chat/completions"
        models.add(resolved.metrics)
    # One RouteMetrics per label: the first MAX_MODEL_LABELS models, then one shared rest.
    assert len(models) == MAX_MODEL_LABELS + 1
    labels = {key[1] for key in METRICS.tokens if key[0] == "templated-unit"}
    assert OTHER_MODEL_LABEL in labels and len(labels) == MAX_MODEL_LABELS + 1


def test_a_resolved_target_is_reused_not_rebuilt() -> None:
    resolver = _resolver("$(uri_captures.azure_deployment)")
    first = exchange(headers={"x-deployment": "gpt-4o"})
    first.params = {"azure_deployment": "gpt-4o"}
    again = exchange(headers={"x-deployment": "gpt-4o"})
    again.params = {"azure_deployment": "gpt-4o"}
    assert resolver(first) is resolver(again)


def test_a_non_templated_route_gets_no_resolver() -> None:
    target = parse_route_file("t.yaml", _route("gpt-4o", "gpt-4o").encode(), {}).proxy.targets[0]
    assert compile_resolver("static", target, None) is None
