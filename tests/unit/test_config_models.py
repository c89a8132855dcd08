"""Model routes in config: ``route.models``, ``deployment_paths``, ``route_type: auto`` and
the rules a model route's targets keep."""

from __future__ import annotations

import pytest

from aigw.config.errors import ConfigError, ConfigIssue
from aigw.config.loader import parse_route_file
from aigw.config.model import RouteFile

ENV = {"KEY": "azure-key-123456"}
T = "plugins[0].config.targets[0]"

MODEL_ROUTE = """route:
  name: gpt-4o
  models: [gpt-4o]
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - auth: {header_name: api-key, header_value: "${KEY}"}
          model:
            provider: azure
            name: gpt-4o
            options: {azure_instance: res, azure_deployment_id: gpt-4o-dep}
"""


def edit(*replacements: tuple[str, str], text: str = MODEL_ROUTE) -> str:
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def parse(text: str) -> RouteFile:
    return parse_route_file("conf.d/gpt-4o.yaml", text.encode(), ENV)


def issues_of(text: str) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.issues


def the_issue(text: str) -> ConfigIssue:
    issues = issues_of(text)
    assert len(issues) == 1, [str(issue) for issue in issues]
    return issues[0]


def test_a_model_route_needs_no_paths_and_its_targets_default_to_auto() -> None:
    file = parse(MODEL_ROUTE)
    assert file.route.models == ("gpt-4o",)
    assert file.route.paths == ()
    assert file.route.deployment_paths is True
    assert file.proxy.targets[0].route_type == "auto"


def test_models_beside_paths_a_specific_route_type_and_deployment_paths_off() -> None:
    file = parse(
        edit(
            ("models: [gpt-4o]", "models: [gpt-4o, gpt-4o-2024-08-06]\n  paths: [/chat]"),
            ("models: [gpt-4o", "deployment_paths: false\n  models: [gpt-4o"),
            ("- auth", "- route_type: llm/v1/responses\n          auth"),
        )
    )
    assert file.route.models == ("gpt-4o", "gpt-4o-2024-08-06")
    assert file.route.paths == ("/chat",)
    assert file.route.deployment_paths is False
    assert file.proxy.targets[0].route_type == "llm/v1/responses"


def test_an_upstream_url_of_only_an_origin_is_fine_on_auto() -> None:
    origin = "upstream_url: 'http://127.0.0.1:9/'"
    file = parse(edit(("azure_instance: res, azure_deployment_id: gpt-4o-dep", origin)))
    assert file.proxy.targets[0].model.options.upstream_url == "http://127.0.0.1:9/"


def test_a_pool_of_auto_targets_is_a_model_route_pool() -> None:
    second = (
        '        - auth: {header_name: api-key, header_value: "${KEY}"}\n'
        "          model: {provider: azure, name: gpt-4o, "
        "options: {azure_instance: res2, azure_deployment_id: gpt-4o-dep}}\n"
    )
    file = parse(MODEL_ROUTE + second)
    assert [t.route_type for t in file.proxy.targets] == ["auto", "auto"]


_ERRORS = [
    # route.models
    ("models: [gpt-4o]", "models: []", "route.models", "must list at least one model name"),
    ("models: [gpt-4o]", "models: gpt-4o", "route.models", "expected a list; got a string"),
    (
        "models: [gpt-4o]",
        "models: [gpt-4o, gpt-4o]",
        "route.models[1]",
        "duplicate model `gpt-4o`",
    ),
    (
        "models: [gpt-4o]",
        "models: ['gpt 4o']",
        "route.models[0]",
        "must be a deployment name: 1-64 letters, digits, `.`, `_` or `-`, starting with a "
        'letter or digit; got "gpt 4o"',
    ),
    ("models: [gpt-4o]", "models: [..]", "route.models[0]", "must be a deployment name"),
    ("models: [gpt-4o]", "models: [a/b]", "route.models[0]", "must be a deployment name"),
    ("models: [gpt-4o]", f"models: [{'m' * 65}]", "route.models[0]", "1-64 letters"),
    ("models: [gpt-4o]", "models: [1]", "route.models[0]", "expected a string; got an integer"),
    # typos of the new keys
    ("models: [gpt-4o]", "model: [gpt-4o]", "route.model", "did you mean `models`?"),
    (
        "models: [gpt-4o]",
        "models: [gpt-4o]\n  deployment_path: false",
        "route.deployment_path",
        "unknown key `deployment_path`; did you mean `deployment_paths`?",
    ),
    # deployment_paths
    (
        "models: [gpt-4o]",
        "models: [gpt-4o]\n  deployment_paths: 1",
        "route.deployment_paths",
        "expected a boolean (true or false); got an integer",
    ),
    # route_type
    (
        "- auth",
        "- route_type: preserve\n          auth",
        f"{T}.route_type",
        "`preserve` cannot serve a model route",
    ),
    (
        "- auth",
        "- route_type: llm/v1/response\n          auth",
        f"{T}.route_type",
        'unknown route_type; got "llm/v1/response"; did you mean `llm/v1/responses`?',
    ),
    (
        "- auth",
        "- route_type: audio/v1/audio/transcription\n          auth",
        f"{T}.route_type",
        "did you mean `audio/v1/audio/transcriptions`?",
    ),
    # targets of a model route
    (
        "azure_deployment_id: gpt-4o-dep",
        "azure_deployment_id: '$(headers.x-deployment)'",
        f"{T}.model.options.azure_deployment_id",
        "`$(...)` variables are not supported on a model route",
    ),
    (
        "azure_instance: res, azure_deployment_id: gpt-4o-dep",
        "upstream_url: 'http://127.0.0.1:9/openai/deployments/x'",
        f"{T}.model.options.upstream_url",
        "must name only an origin (`https://host[:port]`, no path) on an `auto` target",
    ),
]


@pytest.mark.parametrize(("old", "new", "key_path", "reason"), _ERRORS)
def test_model_route_error(old: str, new: str, key_path: str, reason: str) -> None:
    issues = {issue.key_path: issue.reason for issue in issues_of(edit((old, new)))}
    assert reason in issues[key_path]
    if old != "models: [gpt-4o]" or new.startswith("models:"):
        assert len(issues) == 1, issues  # a misspelt `models` also leaves paths unset


def test_the_origin_rule_is_only_for_auto() -> None:
    url = "upstream_url: 'http://127.0.0.1:9/openai/deployments/x/chat/completions'"
    file = parse(
        edit(
            ("- auth", "- route_type: llm/v1/chat\n          auth"),
            ("azure_instance: res, azure_deployment_id: gpt-4o-dep", url),
        )
    )
    assert file.proxy.targets[0].route_type == "llm/v1/chat"


def test_a_path_route_still_needs_paths_and_a_route_type() -> None:
    text = edit(("models: [gpt-4o]", "methods: [POST]"))
    issues = {issue.key_path: issue.reason for issue in issues_of(text)}
    assert issues == {
        "route.paths": "missing required key `paths`; a route claims request paths, or "
        "models with `models` (the body's `model` then chooses the route)",
        f"{T}.route_type": "missing required key `route_type`",
    }


def test_auto_is_refused_without_models() -> None:
    text = edit(
        ("models: [gpt-4o]", "paths: [/chat]"), ("- auth", "- route_type: auto\n          auth")
    )
    issue = the_issue(text)
    assert issue.key_path == f"{T}.route_type"
    assert issue.reason == (
        "`auto` takes the operation from a model route's request path; set `route.models` "
        "or name a route_type"
    )


def test_deployment_paths_without_models_is_named() -> None:
    text = edit(
        ("models: [gpt-4o]", "paths: [/chat]\n  deployment_paths: true"),
        ("- auth", "- route_type: llm/v1/chat\n          auth"),
    )
    issue = the_issue(text)
    assert issue.key_path == "route.deployment_paths"
    assert "has no effect without `route.models`" in issue.reason


def test_a_pool_mixing_auto_by_default_and_a_specific_type_is_refused() -> None:
    second = (
        "        - route_type: llm/v1/chat\n"
        '          auth: {header_name: api-key, header_value: "${KEY}"}\n'
        "          model: {provider: azure, name: gpt-4o, "
        "options: {azure_instance: res2, azure_deployment_id: gpt-4o-dep}}\n"
    )
    issue = the_issue(MODEL_ROUTE + second)
    assert issue.key_path == "plugins[0].config.targets[1].route_type"
    assert "every target of a pool carries the same route type" in issue.reason


def test_a_bad_upstream_url_is_never_echoed() -> None:
    url = "upstream_url: 'http://127.0.0.1:9/secret-path?sig=abc'"
    issue = the_issue(edit(("azure_instance: res, azure_deployment_id: gpt-4o-dep", url)))
    assert "secret-path" not in issue.reason and "sig=abc" not in issue.reason
