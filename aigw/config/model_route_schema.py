"""The rules of a model route (``route.models``): model names, route types, targets.

A model route is chosen by the body's ``model`` on the model-in-body APIs
(``/openai/v1/…``, ``/openai/responses``, realtime's query) and, unless
``deployment_paths: false``, also serves ``/openai/deployments/{model}/…``
(`aigw.table`, `aigw.apis.dispatch`). Its operation comes from each request's
path (``route_type: auto``, the default there) or is fixed by a specific
``route_type``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from aigw.config.checker import Checker
from aigw.config.keypath import child, is_under, item
from aigw.config.model import RouteType, TargetConfig

__all__ = ["check_model_targets", "route_models", "route_type"]

# Azure's deployment-name rules, and one canonical path segment (no "." or ".." alone).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def route_models(c: Checker, value: object) -> tuple[str, ...]:
    """``route.models``: the body ``model`` names the route serves, each once (absent: ``()``)."""
    if value is None:
        return ()
    if isinstance(value, list) and not value:
        c.report("route.models", "must list at least one model name, or be left out")
    models: list[str] = []
    for path, model in c.strings(value, "route.models"):
        if not _MODEL_NAME.match(model):
            reason = (
                "must be a deployment name: 1-64 letters, digits, `.`, `_` or `-`, "
                "starting with a letter or digit"
            )
            c.report(path, reason + c.got(path, model))
        elif model in models:
            c.report(path, f"duplicate model `{model}`")
        else:
            models.append(model)
    return tuple(models)


_AUTO_WITHOUT_MODELS = (
    "`auto` takes the operation from a model route's request path; set `route.models` "
    "or name a route_type"
)
_PRESERVE_WITH_MODELS = (
    "`preserve` cannot serve a model route: the model-in-body APIs need the operation "
    "aigw reads from the request path; use `auto` (the default with `route.models`) or a "
    "specific route_type, or give the pass-through its own route with `paths`"
)


def route_type(
    c: Checker,
    m: Mapping[str, object],
    path: str,
    route_types: tuple[RouteType, ...],
    *,
    model_route: bool,
) -> RouteType:
    """A target's ``route_type``: required on a path route, ``auto`` by default on a model
    route; ``auto`` only on a model route and ``preserve`` never on one; a near miss is
    answered with the name it resembles."""
    value = m.get("route_type")
    key = child(path, "route_type")
    if isinstance(value, str) and value not in route_types:
        close = difflib.get_close_matches(value, route_types, n=1)
        if close:
            c.report(key, f"unknown route_type{c.got(key, value)}; did you mean `{close[0]}`?")
            return "auto" if model_route else "preserve"
    if model_route:
        chosen = c.choice(m, path, "route_type", route_types, default="auto")
        if chosen == "preserve":
            c.report(key, _PRESERVE_WITH_MODELS)
        return chosen
    chosen = c.choice(m, path, "route_type", route_types, default="preserve", required=True)
    if chosen == "auto":
        c.report(key, _AUTO_WITHOUT_MODELS)
    return chosen


def check_model_targets(
    c: Checker, targets_path: str, targets: Sequence[tuple[int, TargetConfig]]
) -> None:
    """Report what a model route's targets may not hold.

    Its requests come by operations and paths aigw chooses (``/openai/v1/…``,
    ``/openai/deployments/{model}/…``), so nothing per request may be templated, and an
    ``auto`` target's ``upstream_url`` names only where to send: the path comes from the
    operation.

    Args:
        c: The file's checker (its templates read so far include the targets').
        targets_path: The key path of ``config.targets``.
        targets: The targets that could be read, with their index.
    """
    for path, _ in c.templates:
        if is_under(path, targets_path):
            c.report(
                path,
                "`$(...)` variables are not supported on a model route (`route.models`): "
                "its paths capture nothing; name the deployment in the target",
            )
    for index, target in targets:
        url = target.model.options.upstream_url
        if target.route_type != "auto" or url is None or "$(" in url:
            continue
        if urlsplit(url).path not in ("", "/"):
            path = child(
                child(child(item(targets_path, index), "model"), "options"), "upstream_url"
            )
            # The URL itself is never echoed (it may carry a signed query).
            c.report(
                path,
                "must name only an origin (`https://host[:port]`, no path) on an `auto` "
                "target: the path comes from each request's operation",
            )
