"""The route-file schema: plain data -> `RouteConfig` + `AiProxyAdvancedConfig`, or issues.

Kong's field names and ranges, checked strictly: unknown keys (with a "did you mean"), wrong
types (a boolean is not an integer; an integer is a number), missing fields, enums, ranges and
the mutually-required groups. Kong settings aigw does not implement are named as such rather
than called unknown, so a ported Kong config gets a useful message.

Deliberate limits, each reported in plain words:

- exactly one ``ai-proxy-advanced`` plugin (plain ``ai-proxy`` nests differently), plus at
  most one each of the access plugins of `aigw.config.plugins_schema`;
- at most 64 targets; several make a pool (`aigw.config.balancer_schema` holds the pool's
  rules and the ``balancer`` section);
- only the ``azure`` provider; a target authenticates with a key or with Microsoft Entra ID
  (one target's fields are read by `aigw.config.target_schema`).

`file_kind` tells a route file from a consumer file (`aigw.config.consumer_schema`) and a
global plugins file (`aigw.config.plugins_schema`) by the root keys.

Null means "not set" for optional fields (Kong/decK behave the same), so ``auth:`` with nothing
under it is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, get_args

from aigw.config.balancer_schema import balancer, check_pool
from aigw.config.checker import Checker, backticked
from aigw.config.errors import ConfigIssue
from aigw.config.keypath import ROOT, child, item
from aigw.config.model import (
    AccessPlugins,
    AiProxyAdvancedConfig,
    BalancerConfig,
    RouteConfig,
    StreamingMode,
    TargetConfig,
)
from aigw.config.model_route_schema import check_model_targets, route_models
from aigw.config.plugins_schema import ACCESS_PLUGINS, access_plugins, plugin_entries
from aigw.config.target_schema import PARAM_LOCATIONS, PROVIDERS, ROUTE_TYPES, validate_target
from aigw.config.yaml_strict import NodePosition

__all__ = [
    "HTTP_METHODS",
    "PARAM_LOCATIONS",
    "PLUGINS",
    "PROVIDERS",
    "ROUTE_TYPES",
    "STREAMING_MODES",
    "FileKind",
    "Validated",
    "file_kind",
    "validate",
]

STREAMING_MODES: tuple[StreamingMode, ...] = get_args(StreamingMode)
PLUGINS = ("ai-proxy-advanced", *ACCESS_PLUGINS)
FileKind = Literal["route", "consumer", "plugins"]
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")

_TOP_KEYS = ("route", "plugins")
_ROUTE_KEYS = ("name", "paths", "methods", "models", "deployment_paths")
_CONFIG_KEYS = (
    "targets",
    "balancer",
    "max_request_body_size",
    "response_streaming",
    "model_name_header",
    "ignore_body_model",
)

# Kong settings people will paste in; "" means the generic "Kong setting aigw does not support".
_KONG_TOP = dict.fromkeys(("_format_version", "_transform", "services", "routes"), "")
_KONG_ROUTE = dict.fromkeys(
    (
        "hosts",
        "headers",
        "protocols",
        "strip_path",
        "preserve_host",
        "regex_priority",
        "path_handling",
        "https_redirect_status_code",
        "request_buffering",
        "response_buffering",
        "snis",
        "sources",
        "destinations",
        "expression",
        "priority",
        "tags",
        "id",
    ),
    "",
) | {"service": "is not needed: aigw derives the upstream from the plugin's target"}
_KONG_PLUGIN = dict.fromkeys(
    ("enabled", "protocols", "instance_name", "ordering", "tags", "id", "consumer"), ""
) | dict.fromkeys(("route", "service"), "is not needed: the plugin applies to this file's route")
_KONG_CONFIG = dict.fromkeys(("embeddings", "vectordb", "llm_format", "genai_category", "acls"), "")
_PATHS_OR_MODELS = (
    "missing required key `paths`; a route claims request paths, or models with `models` "
    "(the body's `model` then chooses the route)"
)
_ROUTE_NAME = re.compile(r"[A-Za-z0-9._-]+\Z")


_NO_PLUGINS = AccessPlugins()


@dataclass(frozen=True, slots=True)
class Validated:
    """The result of `validate`: either both configs, or the issues (never both).

    Attributes:
        route: The route, if the data was valid.
        proxy: The plugin config, if the data was valid.
        issues: Every problem found, in document order.
        plugins: The route's access plugins, if the data was valid.
    """

    route: RouteConfig | None
    proxy: AiProxyAdvancedConfig | None
    issues: tuple[ConfigIssue, ...]
    plugins: AccessPlugins = _NO_PLUGINS


def file_kind(data: object) -> FileKind:
    """What a conf.d document holds, from its root keys.

    ``consumer`` or ``consumers`` make a consumer file (which then refuses ``route`` and
    ``plugins``); ``plugins`` without ``route`` a global plugins file; anything else is
    read as a route file, whose messages then say what is missing.
    """
    if isinstance(data, dict):
        if "consumer" in data or "consumers" in data:
            return "consumer"
        if "plugins" in data and "route" not in data:
            return "plugins"
    return "route"


def validate(
    data: object,
    *,
    file: str,
    positions: Mapping[str, NodePosition],
    sources: Mapping[str, tuple[str, ...]],
    reported: frozenset[str] = frozenset(),
) -> Validated:
    """Validate one route document.

    Args:
        data: Interpolated plain data.
        file: The file name to put in issues.
        positions: Key path -> position in the file.
        sources: Key path -> environment variables the value came from (never echoed).
        reported: Key paths an earlier stage already reported as unreadable; value problems
            at or under them are not reported again (unknown keys still are).

    Returns:
        The configs, or every issue found.
    """
    c = Checker(file, positions, sources, reported)
    root = c.mapping(
        data, ROOT, _TOP_KEYS, _KONG_TOP, expected="a mapping with keys `route` and `plugins`"
    )
    if root is None:
        return Validated(None, None, tuple(c.issues))
    route = _route(c, root)
    proxy, plugins = _plugins(c, root, model_route=_is_model_route(root))
    c.check_captures(route.paths)
    if c.issues:
        return Validated(None, None, tuple(c.issues))
    return Validated(route, proxy, (), plugins)


# -- route ----------------------------------------------------------------------------------


def _route(c: Checker, root: Mapping[str, object]) -> RouteConfig:
    m = c.section(root, ROOT, "route", _ROUTE_KEYS, _KONG_ROUTE, required=True)
    if m is None:
        return RouteConfig("", ())
    name = c.text(m, "route", "name", required=True, check=_check_route_name)
    models = route_models(c, m.get("models"))
    paths: list[str] = []
    if m.get("paths") is None:
        if "paths" in m:
            c.report("route.paths", "must have a value; got null")
        elif m.get("models") is None:
            c.missing("route", "paths", _PATHS_OR_MODELS)
    else:
        for path, value in c.strings(m["paths"], "route.paths"):
            if value[0] not in "/~":
                c.report(path, "must start with `/` (a literal path) or `~` (a regex)")
            elif value in paths:
                c.report(path, "duplicate path")
            else:
                paths.append(value)
        if isinstance(m["paths"], list) and not m["paths"]:
            c.report("route.paths", "must list at least one path")
    deployment_paths = c.boolean(m, "route", "deployment_paths", default=True)
    if "deployment_paths" in m and m.get("models") is None:
        c.report(
            "route.deployment_paths",
            "has no effect without `route.models`: it adds each model's "
            "/openai/deployments/{model}/... paths",
            key=True,
        )
    return RouteConfig(
        name or "",
        tuple(paths),
        _methods(c, m.get("methods")),
        models=models,
        deployment_paths=deployment_paths,
    )


def _methods(c: Checker, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list) and not value:
        c.report("route.methods", "must not be empty; leave `methods` out to allow any method")
    methods: list[str] = []
    for path, method in c.strings(value, "route.methods"):
        upper = method.upper()
        if upper not in HTTP_METHODS:
            reason = f"unknown HTTP method; expected one of {backticked(HTTP_METHODS)}"
            c.report(path, reason + c.got(path, method))
        elif upper in methods:
            c.report(path, f"duplicate method `{upper}`")
        else:
            methods.append(upper)
    return tuple(methods)


# -- plugin ---------------------------------------------------------------------------------


_AI_PROXY = (
    "is not supported; write `ai-proxy-advanced` and move `route_type`, "
    "`auth`, `model` and `logging` into `config.targets[0]`"
)
_ONE_PROXY = (
    f"must hold exactly one plugin named `ai-proxy-advanced`, and at most one each of "
    f"{backticked(ACCESS_PLUGINS)}"
)


def _is_model_route(root: Mapping[str, object]) -> bool:
    """The file claims models (``route.models`` written, valid or not): its targets then
    default to ``auto`` and follow a model route's rules."""
    route = root.get("route")
    return isinstance(route, dict) and route.get("models") is not None


def _plugins(
    c: Checker, root: Mapping[str, object], *, model_route: bool
) -> tuple[AiProxyAdvancedConfig, AccessPlugins]:
    config = AiProxyAdvancedConfig(targets=())
    if root.get("plugins") is None:
        c.absent(root, ROOT, "plugins")
        return config, AccessPlugins()
    value = root["plugins"]
    entries, complete = plugin_entries(
        c, value, "plugins", PLUGINS, _KONG_PLUGIN, {"ai-proxy": _AI_PROXY}
    )
    proxies = [entry for entry in entries if entry.name == "ai-proxy-advanced"]
    if value == [] or (complete and not proxies):
        c.report("plugins", _ONE_PROXY)
    for entry in proxies:
        config = _proxy(c, entry.entry, entry.path, model_route=model_route)
    return config, access_plugins(c, entries)


def _proxy(
    c: Checker, plugin: Mapping[str, object], plugin_path: str, *, model_route: bool
) -> AiProxyAdvancedConfig:
    m = c.section(plugin, plugin_path, "config", _CONFIG_KEYS, _KONG_CONFIG, required=True)
    path = child(plugin_path, "config")
    if m is None:
        return AiProxyAdvancedConfig(targets=())
    max_body = c.integer(m, path, "max_request_body_size", low=0)
    targets = _targets(c, m, path, model_route=model_route)
    pool = balancer(c, m, path)
    if pool is None and len(targets) > 1:
        pool = BalancerConfig()  # Kong's defaults; one target without a section stays as today
    config = AiProxyAdvancedConfig(
        targets=targets,
        balancer=pool,
        response_streaming=c.choice(
            m, path, "response_streaming", STREAMING_MODES, default="allow"
        ),
        model_name_header=c.boolean(m, path, "model_name_header", default=True),
        ignore_body_model=c.boolean(m, path, "ignore_body_model", default=False),
    )
    return config if max_body is None else replace(config, max_request_body_size=max_body)


def _targets(
    c: Checker, config: Mapping[str, object], config_path: str, *, model_route: bool
) -> tuple[TargetConfig, ...]:
    if config.get("targets") is None:
        c.absent(config, config_path, "targets")
        return ()
    path = child(config_path, "targets")
    entries = c.sequence(config["targets"], path)
    if entries == []:
        c.report(path, "must hold at least one target")
    targets: list[tuple[int, TargetConfig]] = []
    route_types: dict[int, str] = {}
    for index, entry in enumerate(entries or ()):
        target = validate_target(c, entry, item(path, index), model_route=model_route)
        if target is not None:
            targets.append((index, target))
            written = entry.get("route_type") if isinstance(entry, dict) else None
            # On a model route a target without route_type is `auto`: it must match the others.
            if written in ROUTE_TYPES or (model_route and written is None):
                route_types[index] = target.route_type
    check_pool(c, path, len(entries or ()), targets, route_types)
    if model_route:
        check_model_targets(c, path, targets)
    return tuple(target for _, target in targets)


# -- string checks: return a reason, or None --------------------------------------------------


def _check_route_name(value: str) -> str | None:
    if _ROUTE_NAME.match(value):
        return None
    return "must contain only letters, digits, `.`, `_` and `-`"
