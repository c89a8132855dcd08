"""The rules a JSON request body meets per operation, compiled once per route and operation.

Per operation (``aigw.apis.operations``):

* its ``required`` field: chat's ``messages`` a non-empty array; completions'
  ``prompt``, embeddings' and speech's ``input``, images' ``prompt`` a non-empty
  string or array; Responses none (``previous_response_id`` may carry it all);
* a body ``model`` that differs from the configured ``model.name`` is refused
  (the SDK sends the deployment name there; Kong refuses the same way), unless
  it is one of the target's ``model.model_alias`` names, one of a model route's
  ``route.models``, or the route sets ``ignore_body_model`` (Azure itself ignores
  it on a deployment path); on a pool of targets, any target's name or alias;
* streaming (``response_streaming``) only where the operation streams (chat,
  completions, Responses);
* ``max_tokens`` / ``temperature`` / ``top_p`` from ``model.options`` fill in
  what the client left out of a chat or completions body, never overriding the
  client. On a pool whose targets' defaults differ, each attempt adds its own
  target's instead (``aigw.balancer.members``);
* a chat or completions stream gets ``stream_options.include_usage`` so every
  stream is accounted; the relay hides the extra chunk from a client that did
  not ask for it. Only on api-versions that know ``stream_options``
  (2024-09-01-preview, 2024-10-21 and later, the v1 API): older ones refuse the
  whole request with "Unknown parameter", so their streams go as they came and
  the access log says ``usage_unavailable: "api_version"``. A Responses stream
  always carries its usage: nothing is injected;
* on a model route's model-in-body request (``v1``, ``openai`` styles) the body's
  ``model`` names the deployment, so it becomes the target's
  ``azure_deployment_id`` (one target here; a pool's per attempt, in
  ``aigw.balancer.members``).

The JSON is re-serialised only when one of these rules changed it; otherwise the
client's bytes go upstream as they came.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

import orjson
from yarl import URL

from aigw.apis.operations import Operation
from aigw.chain.exchange import Exchange
from aigw.config.model import AiProxyAdvancedConfig, TargetConfig
from aigw.errors import BadRequest
from aigw.upstream.target import DEFAULT_API_VERSION, valid_api_version

__all__ = [
    "MODEL_IN_BODY",
    "PayloadCheck",
    "accepts_stream_options",
    "compile_payload_check",
    "dump_json",
    "missing_defaults",
    "option_defaults",
    "parse_object",
    "shared_option_defaults",
    "takes_defaults",
]

PayloadCheck = Callable[[Exchange, dict[str, Any]], None]
"""Checks a parsed body for one operation, sets ``ex.payload`` (and ``ex.upstream_body``
when it rewrote the JSON)."""

MODEL_IN_BODY: Final = frozenset({"v1", "openai"})
"""The API styles whose deployment is the body's ``model``."""


def _streaming_disabled() -> BadRequest:
    return BadRequest(
        "streaming_disabled",
        "response streaming is disabled for this route (response_streaming: deny)",
        param="stream",
    )


_DEFAULTS_TYPES: Final = frozenset({"llm/v1/chat", "llm/v1/completions"})
"""The route types ``model.options``' max_tokens/temperature/top_p apply to (``auto``:
those operations of it)."""


def compile_payload_check(
    operation: Operation,
    proxy: AiProxyAdvancedConfig,
    target: TargetConfig,
    *,
    route_models: tuple[str, ...] = (),
    rewrite_model: bool = False,
) -> PayloadCheck:
    """Builds the check of one operation's JSON body on one route (decisions made now).

    Args:
        operation: The operation the body is for.
        proxy: The route's plugin config.
        target: Its first target.
        route_models: ``route.models``: names a model route accepts in the body.
        rewrite_model: A model route of one target: a model-in-body request's
            ``model`` becomes the target's ``azure_deployment_id``.
    """
    check_model = (
        _accept_any if proxy.ignore_body_model else _model_check(proxy, target, route_models)
    )
    if operation.body != "json":
        return _fields_check(check_model)
    required = operation.required
    streams = operation.streams
    inject_usage = operation.inject_usage
    streaming_mode = proxy.response_streaming
    targets = proxy.targets
    # Only when every target's api-version knows stream_options (the body goes to any).
    usage_by_default = all(
        accepts_stream_options(_default_api_version(config)) for config in targets
    )
    defaults = _route_defaults(operation, targets)
    deployment = target.model.options.azure_deployment_id if rewrite_model else None

    def check(ex: Exchange, payload: dict[str, Any]) -> None:
        """Refuses a body this route cannot serve; fills in what the route adds."""
        if required is not None:
            _require(payload, required, operation)
        requested = payload.get("model")
        if isinstance(requested, str) and requested:
            ex.requested_model = requested
            check_model(ex, requested)
        changed = False
        if streams:
            stream = payload.get("stream") is True
            if stream and streaming_mode == "deny":
                raise _streaming_disabled()
            if not stream and streaming_mode == "always":
                payload["stream"] = stream = changed = True
            if stream:
                ex.stream = True
                if inject_usage and _usage_available(ex, usage_by_default):
                    changed |= _ask_for_usage(ex, payload)
            if defaults:
                for key, value in missing_defaults(payload, defaults):
                    payload[key] = value
                    changed = True
        if deployment is not None and requested != deployment and ex.api_style in MODEL_IN_BODY:
            payload["model"] = deployment
            changed = True
        ex.payload = payload
        if changed:
            ex.upstream_body = dump_json(payload)

    return check


def _route_defaults(
    operation: Operation, targets: tuple[TargetConfig, ...]
) -> tuple[tuple[str, Any], ...]:
    """The option defaults the body stage adds for *operation* (none when a pool's
    targets differ: each attempt adds its own)."""
    if operation.route_type not in _DEFAULTS_TYPES:
        return ()
    if len(targets) > 1:
        return shared_option_defaults(targets) or ()
    return option_defaults(targets[0])


def _accept_any(ex: Exchange, requested: str) -> None:
    """``ignore_body_model``: any body ``model`` goes."""


def _fields_check(check_model: Callable[[Exchange, str], None]) -> PayloadCheck:
    """The check of a body that is not JSON: a multipart form's ``model`` field (the file
    is Azure's to judge), handed in as ``{"model": …}``; nothing is rewritten."""

    def check(ex: Exchange, fields: dict[str, Any]) -> None:
        requested = fields.get("model")
        if isinstance(requested, str) and requested:
            ex.requested_model = requested
            check_model(ex, requested)

    return check


def option_defaults(target: TargetConfig) -> tuple[tuple[str, Any], ...]:
    """What *target*'s ``model.options`` add to a body that lacks them (chat and
    completions; on an ``auto`` route, its chat and completions requests)."""
    if target.route_type not in _DEFAULTS_TYPES and target.route_type != "auto":
        return ()
    options = target.model.options
    return tuple(
        (key, value)
        for key, value in (
            ("max_tokens", options.max_tokens),
            ("temperature", options.temperature),
            ("top_p", options.top_p),
        )
        if value is not None
    )


def takes_defaults(operation: Operation | None) -> bool:
    """Whether *operation*'s body takes ``model.options``' defaults (None: the route's
    own type decided it at load)."""
    return operation is None or operation.route_type in _DEFAULTS_TYPES


def missing_defaults(
    payload: dict[str, Any], defaults: tuple[tuple[str, Any], ...]
) -> Iterator[tuple[str, Any]]:
    """The option *defaults* that *payload* lacks: the client's value always stands, and a
    client that sets ``max_completion_tokens`` gets no ``max_tokens`` beside it."""
    for key, value in defaults:
        if key not in payload and not (key == "max_tokens" and "max_completion_tokens" in payload):
            yield key, value


def shared_option_defaults(
    targets: tuple[TargetConfig, ...],
) -> tuple[tuple[str, Any], ...] | None:
    """The option defaults every target shares (added once, by the body stage); None when
    they differ (each attempt then adds its own target's)."""
    first = option_defaults(targets[0])
    if all(option_defaults(config) == first for config in targets[1:]):
        return first
    return None


def _model_check(
    proxy: AiProxyAdvancedConfig, target: TargetConfig, route_models: tuple[str, ...]
) -> Callable[[Exchange, str], None]:
    """The check of a body ``model``: against the one target, or any target of a pool."""
    targets = proxy.targets
    if len(targets) == 1:
        model_name = target.model.name
        aliases = frozenset((*target.model.model_alias, *route_models))
        return lambda ex, requested: _check_model(requested, _served_model(ex, model_name), aliases)
    allowed = frozenset(
        name
        for config in targets
        for name in (config.model.name, *config.model.model_alias)
        if name is not None
    ) | frozenset(route_models)
    any_model = None if any(config.model.name is None for config in targets) else ""
    return lambda ex, requested: _check_pool_model(requested, any_model, allowed)


def _check_pool_model(requested: str, any_model: str | None, allowed: frozenset[str]) -> None:
    """Refuses a body ``model`` no target of a pool serves (*any_model* None: a target
    without ``model.name`` takes whatever the client names)."""
    if any_model is None or requested in allowed:
        return
    raise BadRequest(
        "model_mismatch",
        f"model {requested[:200]!r} is not served here: this route serves "
        f"{', '.join(repr(name) for name in sorted(allowed))}. To accept this name, list it "
        "in a target's `model.model_alias`, or set `ignore_body_model: true` in its plugin "
        "config",
        param="model",
    )


def _served_model(ex: Exchange, configured: str | None) -> str | None:
    """The model a request must name: on a templated route, the one resolved
    for it before this stage (aigw.templates)."""
    resolved = ex.resolved
    return configured if resolved is None else resolved.target.model


def _check_model(requested: str, served: str | None, aliases: frozenset[str]) -> None:
    """Refuses a body ``model`` that is neither the served model nor one of its aliases."""
    if served is None or requested == served or requested in aliases:
        return
    raise BadRequest(
        "model_mismatch",
        f"model {requested[:200]!r} is not served here: this route serves {served!r}. To "
        "accept this name, list it in the route's `model.model_alias`, or set "
        "`ignore_body_model: true` in its plugin config",
        param="model",
    )


def parse_object(body: bytes) -> dict[str, Any]:
    """The body's JSON object; 400 ``invalid_json`` for anything else (the same words
    wherever a body is parsed: here and in the model dispatcher)."""
    if not body:
        raise BadRequest("invalid_json", "the request body is empty; expected a JSON object")
    try:
        # RFC 8259: JSON on the wire is UTF-8; orjson insists on it (the
        # standard library would guess UTF-16/32 from the first bytes).
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid_json(body, exc) from exc
    if not isinstance(payload, dict):
        raise BadRequest(
            "invalid_json",
            f"the request body must be a JSON object, not {_json_type(payload)}",
        )
    return payload


def _invalid_json(body: bytes, exc: orjson.JSONDecodeError) -> BadRequest:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest("invalid_json", "the request body is not valid UTF-8")
    return BadRequest("invalid_json", f"the request body is not valid JSON: {exc}")


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _require(payload: dict[str, Any], field: str, operation: Operation) -> None:
    value = payload.get(field)
    if field == "messages":
        valid = isinstance(value, list) and len(value) > 0
        expected = "a non-empty array"
    else:
        valid = isinstance(value, (str, list)) and len(value) > 0
        expected = "a non-empty string or array"
    if not valid:
        state = "missing" if value is None else f"not {expected}"
        raise BadRequest(
            "invalid_request_body",
            f"'{field}' is {state}; this route ({operation.route_type}) needs {expected}",
            param=field,
        )


_FIRST_STREAM_OPTIONS_PREVIEW = "2024-09-01"
_FIRST_STREAM_OPTIONS_GA = DEFAULT_API_VERSION  # 2024-10-21


def accepts_stream_options(api_version: str) -> bool:
    """True if Azure accepts ``stream_options`` on *api_version*.

    It arrived in 2024-09-01-preview and in GA 2024-10-21; earlier versions
    answer 400 "Unknown parameter". The undated aliases (``v1``, ``preview``,
    ``latest``) are current. A malformed version is False: the relay refuses it.
    """
    if not valid_api_version(api_version):
        return False
    if not api_version[:1].isdigit():
        return True
    date = api_version[:10]  # YYYY-MM-DD sorts as text
    if api_version.endswith("-preview"):
        return date >= _FIRST_STREAM_OPTIONS_PREVIEW
    return date >= _FIRST_STREAM_OPTIONS_GA


def _default_api_version(target: TargetConfig) -> str:
    """The api-version sent when the client names none (as ``compile_target`` picks it)."""
    options = target.model.options
    version = options.azure_api_version
    if options.upstream_url:
        version = URL(options.upstream_url).query.get("api-version") or version
    return version or DEFAULT_API_VERSION


def _usage_available(ex: Exchange, by_default: bool) -> bool:
    """Whether this request's api-version lets aigw ask for the stream's usage."""
    request = ex.request
    # request.query is parsed once per request and cached by aiohttp; the
    # relay reads the same mapping (and refuses a malformed version).
    version = request.query.get("api-version") if request.query_string else None
    if version is None:
        resolved = ex.resolved
        if resolved is not None:  # a templated azure_api_version
            version = resolved.target.default_api_version
        elif ex.api_style == "v1":
            return True  # sent without a version: the v1 API knows stream_options
    available = by_default if version is None else accepts_stream_options(version)
    if not available:
        ex.usage_unavailable = "api_version"
    return available


def _ask_for_usage(ex: Exchange, payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    if options is not None and not isinstance(options, dict):
        return False  # malformed: let Azure say so in its own words
    payload["stream_options"] = {**(options or {}), "include_usage": True}
    ex.hide_usage_chunk = True
    return True


def dump_json(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as the SDK itself sends it."""
    return orjson.dumps(payload)
