"""The per-route resolver: a chain stage that resolves a templated target.

Built once per route at load. Per request it looks each distinct variable up
once (a capture from the route match, a header, a query parameter), checks it
(`aigw.templates.values`), joins the pre-split template parts, and finds the
resolved target in a small bounded cache keyed by the resolved strings, so the
URL is built (`compile_target`) once per distinct deployment, not per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from aiohttp import web

from aigw.chain.body_reader import drop_unread_body
from aigw.chain.exchange import Exchange, Handler
from aigw.config.model import TargetConfig
from aigw.errors import BadRequest
from aigw.metrics import METRICS, RouteMetrics
from aigw.templates.parse import Template, Variable, is_templated, parse
from aigw.templates.values import value_problem
from aigw.upstream.target import UpstreamTarget, compile_target, valid_api_version

__all__ = [
    "MAX_MODEL_LABELS",
    "OTHER_MODEL_LABEL",
    "TEMPLATED_FIELDS",
    "Resolved",
    "TargetResolver",
    "compile_resolver",
    "resolve_stage",
]

TEMPLATED_FIELDS = (
    "name",
    "azure_instance",
    "azure_deployment_id",
    "azure_api_version",
    "upstream_url",
    "upstream_path",
)
"""The target fields that may hold variables: ``model.name`` and ``model.options.*``."""

MAX_MODEL_LABELS = 32
"""Distinct resolved models a templated route labels its metrics with; the
rest share `OTHER_MODEL_LABEL` (clients choose the values: bound the series)."""

OTHER_MODEL_LABEL = "_other"

_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Resolved:
    """A templated route's target for one request.

    Attributes:
        target: The upstream target with every variable substituted
            (``target.model`` and ``target.deployment`` are the resolved names).
        metrics: The route's series labelled with the resolved model.
    """

    target: UpstreamTarget
    metrics: RouteMetrics


def _config_path(field: str) -> str:
    return "model.name" if field == "name" else f"model.options.{field}"


def _field_text(target: TargetConfig, field: str) -> str | None:
    if field == "name":
        return target.model.name
    value = getattr(target.model.options, field)
    return value if isinstance(value, str) else None


class TargetResolver:
    """Resolves one templated route's target per request (see the module doc).

    Args:
        route: ``route.name``, for the metric labels.
        target: The route's target config, templates still as text.
        azure_base_url: The serve-time upstream override, as for `compile_target`.
    """

    __slots__ = ("_azure_base_url", "_cache", "_config", "_fields", "_metrics", "_route", "_vars")

    def __init__(self, route: str, target: TargetConfig, azure_base_url: str | None) -> None:
        self._route = route
        self._config = target
        self._azure_base_url = azure_base_url
        fields: list[tuple[str, Template]] = []
        used_in: dict[Variable, list[str]] = {}
        for field in TEMPLATED_FIELDS:
            text = _field_text(target, field)
            if text is not None and is_templated(text):
                template = parse(text)
                fields.append((field, template))
                for variable in template.variables:
                    used_in.setdefault(variable, []).append(field)
        self._fields = tuple(fields)
        self._vars = tuple((v, tuple(dict.fromkeys(f))) for v, f in used_in.items())
        self._cache: dict[tuple[str, ...], Resolved] = {}
        self._metrics: dict[str, RouteMetrics] = {}

    def __call__(self, ex: Exchange) -> Resolved:
        """The request's resolved target.

        Raises:
            BadRequest: A header or query parameter is missing, or a value is
                not allowed where it is used; ``param`` names the variable.
        """
        values: dict[Variable, str] = {}
        for variable, fields in self._vars:
            value = _lookup(variable, ex)
            if value is None:
                raise _missing(variable)
            for field in fields:
                problem = value_problem(value, field)
                if problem is not None:
                    raise BadRequest(
                        "invalid_template_value",
                        f"{variable.param}, used as {_config_path(field)}, {problem}",
                        param=variable.param,
                    )
            values[variable] = value
        key = tuple(template.render(values) for _, template in self._fields)
        resolved = self._cache.get(key)
        if resolved is None:
            resolved = self._resolve(key)
        return resolved

    def _resolve(self, key: tuple[str, ...]) -> Resolved:
        config = self._config
        rendered = dict(zip((field for field, _ in self._fields), key, strict=True))
        version = rendered.get("azure_api_version")
        if version is not None and not valid_api_version(version):
            # Only on a cache miss: a refused version is never cached.
            raise BadRequest(
                "invalid_template_value",
                "the resolved model.options.azure_api_version is not an Azure OpenAI API "
                "version (expected YYYY-MM-DD, YYYY-MM-DD-preview, v1 or preview)",
                param=_first_param(self._fields, "azure_api_version"),
            )
        name = rendered.pop("name", config.model.name)
        was = config.model.options
        options = replace(
            was,
            azure_instance=rendered.get("azure_instance", was.azure_instance),
            azure_deployment_id=rendered.get("azure_deployment_id", was.azure_deployment_id),
            azure_api_version=rendered.get("azure_api_version", was.azure_api_version),
            upstream_url=rendered.get("upstream_url", was.upstream_url),
            upstream_path=rendered.get("upstream_path", was.upstream_path),
        )
        config = replace(config, model=replace(config.model, name=name, options=options))
        target = compile_target(config, azure_base_url=self._azure_base_url)
        resolved = Resolved(target=target, metrics=self._metrics_for(target.model))
        if len(self._cache) >= _CACHE_SIZE:
            # Oldest first: dicts keep insertion order.
            del self._cache[next(iter(self._cache))]
        self._cache[key] = resolved
        return resolved

    def _metrics_for(self, model: str | None) -> RouteMetrics:
        label = model or "-"
        metrics = self._metrics.get(label)
        if metrics is None:
            if len(self._metrics) >= MAX_MODEL_LABELS:
                label = OTHER_MODEL_LABEL
                metrics = self._metrics.get(label)
            if metrics is None:
                metrics = METRICS.for_route(self._route, label)
                self._metrics[label] = metrics
        return metrics


def _first_param(fields: tuple[tuple[str, Template], ...], field: str) -> str | None:
    template = dict(fields)[field]
    return template.variables[0].param if template.variables else None


def _lookup(variable: Variable, ex: Exchange) -> str | None:
    kind = variable.kind
    if kind == "uri_captures":
        params = ex.params
        return params.get(variable.name) if params is not None else None
    if kind == "headers":
        return ex.request.headers.get(variable.name)
    request = ex.request
    return request.query.get(variable.name) if request.query_string else None


def _missing(variable: Variable) -> BadRequest:
    if variable.kind == "headers":
        return BadRequest(
            "missing_header",
            f"this route needs the request header `{variable.name}`",
            param=variable.param,
        )
    if variable.kind == "query_params":
        return BadRequest(
            "missing_query_param",
            f"this route needs the query parameter `{variable.name}`",
            param=variable.param,
        )
    # aigw check refuses a capture the route's paths do not all provide.
    return BadRequest(
        "missing_uri_capture",
        f"the request path provides no `{variable.name}` for this route",
        param=variable.param,
    )


def compile_resolver(
    route: str, target: TargetConfig, azure_base_url: str | None
) -> TargetResolver | None:
    """The route's resolver, or None when no field is templated (nothing to do per request)."""
    if not any(is_templated(_field_text(target, field)) for field in TEMPLATED_FIELDS):
        return None
    return TargetResolver(route, target, azure_base_url)


def resolve_stage(resolver: TargetResolver, next_: Handler) -> Handler:
    """Chain stage: puts the request's resolved target on ``ex.resolved``.

    Runs before the body is read, so a refused request closes its connection
    when its body is still coming (it cannot be told from the next request).
    """
    resolve: Callable[[Exchange], Resolved] = resolver

    async def stage(ex: Exchange) -> web.StreamResponse:
        try:
            ex.resolved = resolve(ex)
        except BadRequest as error:
            if drop_unread_body(ex.request):
                error.close_connection = True
            raise
        return await next_(ex)

    return stage
