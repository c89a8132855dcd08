"""Chain stage: read, bound and check the request body before anything is forwarded.

Per route type (Kong's ``route_type``):

* ``llm/v1/chat`` needs a non-empty ``messages`` array, ``llm/v1/completions``
  a ``prompt``, ``llm/v1/embeddings`` an ``input``;
* a body ``model`` that differs from the configured ``model.name`` is refused
  (the SDK sends the deployment name there; Kong refuses the same way), unless
  it is one of the target's ``model.model_alias`` names or the route sets
  ``ignore_body_model`` (Azure itself ignores it on a deployment path); on a
  pool of targets, any target's name or alias is accepted;
* ``max_tokens`` / ``temperature`` / ``top_p`` from ``model.options`` fill in
  what the client left out; they never override the client. On a pool whose
  targets' defaults differ, each attempt adds its own target's instead
  (``aigw.balancer.members``);
* a chat or completions stream gets ``stream_options.include_usage`` so every
  stream is accounted; the relay hides the extra chunk from a client that did
  not ask for it. Only on api-versions that know ``stream_options``
  (2024-09-01-preview, 2024-10-21 and later): older ones refuse the whole
  request with "Unknown parameter", so their streams go as they came and the
  access log says ``usage_unavailable: "api_version"``;
* ``preserve`` forwards the body untouched.

The body itself is read by :func:`aigw.chain.body_reader.read_bounded`, within
the route's size limit and the process's body deadlines, and its bytes are
reserved in the worker's body budget (``aigw.chain.body_budget``) until the
request ends: ``ex.client_body`` keeps them alive that long.

The JSON is re-serialised only when one of these rules changed it; otherwise
the client's bytes go upstream as they came.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from aigw.chain.body_budget import BODY_BUFFER_FULL
from aigw.chain.body_reader import read_bounded
from aigw.chain.exchange import Exchange, Handler
from aigw.config.model import AiProxyAdvancedConfig, TargetConfig
from aigw.errors import BadRequest, RequestTimeout, ServiceUnavailable
from aigw.limits import Limits
from aigw.upstream.target import DEFAULT_API_VERSION, valid_api_version

__all__ = ["body_checks", "missing_defaults", "option_defaults", "shared_option_defaults"]

_STREAMING_TYPES = frozenset({"llm/v1/chat", "llm/v1/completions"})
_REQUIRED_FIELD = {
    "llm/v1/chat": "messages",
    "llm/v1/completions": "prompt",
    "llm/v1/embeddings": "input",
}


_BODY_OUTCOMES = {408: "client_body_timeout", 503: BODY_BUFFER_FULL}
"""The access log's outcome for a body that did not arrive in time (408), or
that the worker's body budget had no room for (503)."""


def body_checks(
    proxy: AiProxyAdvancedConfig, target: TargetConfig, limits: Limits, next_: Handler
) -> Handler:
    """Builds the body stage for one route (all decisions that can be made now, are)."""
    limit = proxy.max_request_body_size
    route_type = target.route_type
    if route_type == "preserve":
        return _body_stage(limit, limits, _peek_at_stream, next_)

    required = _REQUIRED_FIELD[route_type]
    streams = route_type in _STREAMING_TYPES
    streaming_mode = proxy.response_streaming
    check_model = None if proxy.ignore_body_model else _model_check(proxy, target)
    targets = proxy.targets
    # Only when every target's api-version knows stream_options (the body goes to any).
    usage_by_default = all(
        accepts_stream_options(_default_api_version(config)) for config in targets
    )
    if len(targets) > 1:
        defaults = shared_option_defaults(targets) or ()
    else:
        defaults = option_defaults(target)

    def check(ex: Exchange, body: bytes) -> None:
        """Refuses a body this route cannot serve; fills in what the route adds."""
        payload = _parse_object(body)
        _require(payload, required)
        requested = payload.get("model")
        if isinstance(requested, str) and requested:
            ex.requested_model = requested
            if check_model is not None:
                check_model(ex, requested)
        changed = False
        if streams:
            stream = payload.get("stream") is True
            if stream and streaming_mode == "deny":
                raise BadRequest(
                    "streaming_disabled",
                    "response streaming is disabled for this route (response_streaming: deny)",
                    param="stream",
                )
            if not stream and streaming_mode == "always":
                payload["stream"] = stream = changed = True
            if stream:
                ex.stream = True
                if _usage_available(ex, usage_by_default):
                    changed |= _ask_for_usage(ex, payload)
            if defaults:
                for key, value in missing_defaults(payload, defaults):
                    payload[key] = value
                    changed = True
        ex.payload = payload
        if changed:
            ex.upstream_body = dump_json(payload)

    return _body_stage(limit, limits, check, next_)


def option_defaults(target: TargetConfig) -> tuple[tuple[str, Any], ...]:
    """What *target*'s ``model.options`` add to a body that lacks them (chat and completions)."""
    if target.route_type not in _STREAMING_TYPES:
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
    proxy: AiProxyAdvancedConfig, target: TargetConfig
) -> Callable[[Exchange, str], None]:
    """The check of a body ``model``: against the one target, or any target of a pool."""
    targets = proxy.targets
    if len(targets) == 1:
        model_name = target.model.name
        aliases = frozenset(target.model.model_alias)
        return lambda ex, requested: _check_model(requested, _served_model(ex, model_name), aliases)
    allowed = frozenset(
        name
        for config in targets
        for name in (config.model.name, *config.model.model_alias)
        if name is not None
    )
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


def _peek_at_stream(ex: Exchange, body: bytes) -> None:
    """Pass-through: never rewrites the body, only peeks at it so a stream is logged as one."""
    if b'"stream"' in body:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        ex.stream = isinstance(payload, dict) and payload.get("stream") is True


def _body_stage(
    limit: int, limits: Limits, inspect: Callable[[Exchange, bytes], None], next_: Handler
) -> Handler:
    """The stage every route type shares: read the body within its bounds, let
    *inspect* check it (and set ``ex.upstream_body`` if it rewrites it), go on.

    *inspect* is a plain function, so this costs no extra coroutine per request.
    """

    async def stage(ex: Exchange) -> web.StreamResponse:
        try:
            body = await read_bounded(ex.request, limit, limits, ex.body_budget)
        except (RequestTimeout, ServiceUnavailable) as error:
            ex.outcome = _BODY_OUTCOMES[error.status]
            raise
        # The body's bytes stay reserved until the request ends (ex.client_body).
        try:
            ex.client_body = ex.upstream_body = body
            inspect(ex, body)
            return await next_(ex)
        finally:
            ex.body_budget.release(len(body))

    return stage


def _parse_object(body: bytes) -> dict[str, Any]:
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


def _require(payload: dict[str, Any], field: str) -> None:
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
            f"'{field}' is {state}; this route ({_route_kind(field)}) needs {expected}",
            param=field,
        )


def _route_kind(field: str) -> str:
    return {v: k for k, v in _REQUIRED_FIELD.items()}[field]


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
    resolved = ex.resolved
    if version is None and resolved is not None:  # a templated azure_api_version
        version = resolved.target.default_api_version
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
