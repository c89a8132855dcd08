"""One target of ``ai-proxy-advanced``'s ``targets``: route type, auth, model, options, logging.

Kong's field names and ranges (see `aigw.config.schema` for the rules every reader follows). A
target authenticates with a key (``auth.header_*`` or ``auth.param_*``) or with Microsoft
Entra ID (``auth.azure_use_managed_identity`` and its client/tenant fields), never both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Literal, get_args
from urllib.parse import urlsplit

from aigw.config.checker import Checker, backticked
from aigw.config.keypath import child
from aigw.config.model import (
    AuthConfig,
    LoggingConfig,
    ModelConfig,
    ModelOptions,
    ParamLocation,
    RouteType,
    TargetConfig,
)
from aigw.config.model_route_schema import route_type

__all__ = ["PARAM_LOCATIONS", "PROVIDERS", "ROUTE_TYPES", "validate_target"]

ROUTE_TYPES: tuple[RouteType, ...] = get_args(RouteType)
PARAM_LOCATIONS: tuple[ParamLocation, ...] = get_args(ParamLocation)
PROVIDERS: tuple[Literal["azure"], ...] = ("azure",)

_MAX_TIMEOUT_MS = 2**31 - 1  # Kong's timeout type

_TARGET_KEYS = (
    "route_type",
    "auth",
    "model",
    "logging",
    "weight",
    "connect_timeout",
    "write_timeout",
    "read_timeout",
    "description",
)
_AUTH_KEYS = (
    "header_name",
    "header_value",
    "param_name",
    "param_value",
    "param_location",
    "allow_override",
    "azure_use_managed_identity",
    "azure_client_id",
    "azure_client_secret",
    "azure_tenant_id",
)
_KEY_FIELDS = ("header_name", "header_value", "param_name", "param_value", "param_location")
_ENTRA_FIELDS = ("azure_client_id", "azure_client_secret", "azure_tenant_id")
_MODEL_KEYS = ("provider", "name", "model_alias", "options")
_OPTION_KEYS = (
    "azure_instance",
    "azure_deployment_id",
    "azure_api_version",
    "upstream_url",
    "upstream_path",
    "max_tokens",
    "temperature",
    "top_p",
)
_LOGGING_KEYS = ("log_statistics", "log_payloads")

# Kong settings people will paste in; "" means the generic "Kong setting aigw does not support".
_KONG_TARGET = {"metadata": ""}
_KONG_AUTH = dict.fromkeys(
    (
        "gcp_use_service_account",
        "gcp_service_account_json",
        "aws_access_key_id",
        "aws_secret_access_key",
    ),
    "",
)
_KONG_OPTIONS = dict.fromkeys(
    (
        "top_k",
        "input_cost",
        "output_cost",
        "anthropic_version",
        "mistral_format",
        "llama2_format",
        "embeddings_dimensions",
        "bedrock",
        "gemini",
        "huggingface",
        "cohere",
    ),
    "",
)

_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token
_API_VERSION = re.compile(r"[A-Za-z0-9._-]+\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_TAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # HTTP field values may hold tabs
_NOT_IN_SEGMENT = re.compile(r"[/?#%\s\x00-\x1f\x7f]")
_GUID = re.compile(r"[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}\Z")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z")


def validate_target(
    c: Checker, value: object, path: str, *, model_route: bool = False
) -> TargetConfig | None:
    """One ``targets[i]`` entry at *path*, or None when it is not a mapping (reported).

    On a model route (*model_route*: ``route.models`` is set) ``route_type`` defaults to
    ``auto`` and may not be ``preserve``; elsewhere it is required and may not be ``auto``.
    """
    m = c.mapping(value, path, _TARGET_KEYS, _KONG_TARGET)
    if m is None:
        return None
    connect_timeout = c.integer(m, path, "connect_timeout", low=1, high=_MAX_TIMEOUT_MS)
    write_timeout = c.integer(m, path, "write_timeout", low=1, high=_MAX_TIMEOUT_MS)
    read_timeout = c.integer(m, path, "read_timeout", low=1, high=_MAX_TIMEOUT_MS)
    weight = c.integer(m, path, "weight", low=1, high=65535)
    target = TargetConfig(
        route_type=route_type(c, m, path, ROUTE_TYPES, model_route=model_route),
        auth=_auth(c, m, path),
        model=_model(c, m, path),
        logging=_logging(c, m, path),
        description=c.text(m, path, "description", allow_empty=True),
    )
    # Unset (or invalid, already reported) fields keep the dataclass defaults.
    return replace(
        target,
        weight=target.weight if weight is None else weight,
        connect_timeout=target.connect_timeout if connect_timeout is None else connect_timeout,
        write_timeout=target.write_timeout if write_timeout is None else write_timeout,
        read_timeout=target.read_timeout if read_timeout is None else read_timeout,
    )


def _auth(c: Checker, target: Mapping[str, object], target_path: str) -> AuthConfig:
    m = c.section(target, target_path, "auth", _AUTH_KEYS, _KONG_AUTH)
    path = child(target_path, "auth")
    if not m:
        return AuthConfig()
    _mutually_required(c, m, path, ("header_name", "header_value"))
    _mutually_required(c, m, path, ("param_name", "param_value", "param_location"))
    _entra_rules(c, m, path)
    return AuthConfig(
        header_name=c.text(m, path, "header_name", check=_check_header_name),
        header_value=c.text(m, path, "header_value", secret=True, check=_check_header_value),
        param_name=c.text(m, path, "param_name", check=_check_no_control),
        param_value=c.text(m, path, "param_value", secret=True, check=_check_no_control),
        param_location=c.optional_choice(m, path, "param_location", PARAM_LOCATIONS),
        allow_override=c.boolean(m, path, "allow_override", default=False),
        azure_use_managed_identity=c.boolean(m, path, "azure_use_managed_identity", default=False),
        azure_client_id=c.text(m, path, "azure_client_id", check=_check_client_id),
        azure_client_secret=c.text(
            m, path, "azure_client_secret", secret=True, check=_check_header_value
        ),
        azure_tenant_id=c.text(m, path, "azure_tenant_id", check=_check_tenant_id),
    )


def _entra_rules(c: Checker, m: Mapping[str, object], path: str) -> None:
    """Kong's shape: ``azure_use_managed_identity: true`` turns Microsoft Entra ID on; the
    other ``azure_*`` fields choose the identity; a target has one credential."""
    switch = m.get("azure_use_managed_identity")
    if switch is True:
        for key in _KEY_FIELDS:
            if m.get(key) is not None:
                c.report(
                    child(path, key),
                    "cannot be combined with `azure_use_managed_identity: true`: a target has "
                    "one credential, a key or Microsoft Entra ID; remove one of them",
                    key=True,
                )
    elif switch is None or switch is False:
        for key in _ENTRA_FIELDS:
            if m.get(key) is not None:
                c.report(
                    child(path, key),
                    "has no effect without `azure_use_managed_identity: true`, which turns "
                    "Microsoft Entra ID on for this target (Kong's shape)",
                    key=True,
                )
    if m.get("azure_client_secret") is not None:
        for key in ("azure_client_id", "azure_tenant_id"):
            if m.get(key) is None:
                c.missing(
                    path,
                    key,
                    "required with `azure_client_secret`: the client-secret flow signs in as "
                    "app `azure_client_id` of tenant `azure_tenant_id`",
                )


def _mutually_required(
    c: Checker, m: Mapping[str, object], path: str, group: tuple[str, ...]
) -> None:
    present = [key for key in group if m.get(key) is not None]
    if not present or len(present) == len(group):
        return
    verb = "is" if len(present) == 1 else "are"
    for key in group:
        if key not in present:
            c.missing(path, key, f"required when {backticked(present)} {verb} set")


def _model(c: Checker, target: Mapping[str, object], target_path: str) -> ModelConfig:
    m = c.section(target, target_path, "model", _MODEL_KEYS, required=True)
    path = child(target_path, "model")
    if m is None:
        return ModelConfig("azure", None, ModelOptions())
    provider = m.get("provider")
    if isinstance(provider, str) and provider and provider not in PROVIDERS:
        reason = f"unsupported provider; supported providers: {backticked(PROVIDERS)}"
        c.report(child(path, "provider"), reason + c.got(child(path, "provider"), provider))
    else:
        c.choice(m, path, "provider", PROVIDERS, default="azure", required=True)
    return ModelConfig(
        provider="azure",
        name=c.text(m, path, "name", templated=True),
        options=_options(c, m, path, check_azure=provider == "azure"),
        model_alias=_aliases(c, m, path),
    )


def _aliases(c: Checker, model: Mapping[str, object], model_path: str) -> tuple[str, ...]:
    """``model_alias``: one name (Kong's shape) or a list of names."""
    value = model.get("model_alias")
    if value is None:
        return ()
    if isinstance(value, str):
        alias = c.text(model, model_path, "model_alias", check=_check_no_control)
        return (alias,) if alias else ()
    aliases: list[str] = []
    for path, alias in c.strings(value, child(model_path, "model_alias")):
        reason = _check_no_control(alias)
        if reason is not None:
            c.report(path, reason)
        elif alias not in aliases:
            aliases.append(alias)
    if isinstance(value, list) and not value:
        c.report(child(model_path, "model_alias"), "must list at least one name, or be left out")
    return tuple(aliases)


def _options(
    c: Checker, model: Mapping[str, object], model_path: str, *, check_azure: bool
) -> ModelOptions:
    m = c.section(model, model_path, "options", _OPTION_KEYS, _KONG_OPTIONS)
    path = child(model_path, "options")
    if m is None:
        return ModelOptions()
    if check_azure and m.get("upstream_url") is None:
        # Kong requires these for azure; without upstream_url they are the upstream host and path.
        for key in ("azure_instance", "azure_deployment_id"):
            if m.get(key) is None:
                reason = (
                    "required for provider `azure` unless `upstream_url` is set: the upstream "
                    "is https://{azure_instance}.openai.azure.com"
                    "/openai/deployments/{azure_deployment_id}/..."
                )
                c.missing(path, key, reason, at=path if "options" in model else model_path)
    return ModelOptions(
        azure_instance=c.text(
            m, path, "azure_instance", check=_check_azure_instance, templated=True
        ),
        azure_deployment_id=c.text(
            m, path, "azure_deployment_id", check=_check_segment, templated=True
        ),
        azure_api_version=c.text(
            m, path, "azure_api_version", check=_check_api_version, templated=True
        ),
        upstream_url=c.text(
            m, path, "upstream_url", secret=True, check=_check_upstream_url, templated=True
        ),
        upstream_path=c.text(m, path, "upstream_path", check=_check_upstream_path, templated=True),
        max_tokens=c.integer(m, path, "max_tokens", low=1),
        temperature=c.number(m, path, "temperature", low=0, high=5),
        top_p=c.number(m, path, "top_p", low=0, high=1),
    )


def _logging(c: Checker, target: Mapping[str, object], target_path: str) -> LoggingConfig:
    m = c.section(target, target_path, "logging", _LOGGING_KEYS)
    path = child(target_path, "logging")
    if not m:
        return LoggingConfig()
    return LoggingConfig(
        log_statistics=c.boolean(m, path, "log_statistics", default=True),
        log_payloads=c.boolean(m, path, "log_payloads", default=False),
    )


# -- string checks: return a reason, or None --------------------------------------------------


def _check_azure_instance(value: str) -> str | None:
    if _DNS_LABEL.match(value):
        return None
    if "." in value or ":" in value:
        return (
            "must be only the resource name, the `{name}` in `{name}.openai.azure.com`; "
            "for any other host set `upstream_url`"
        )
    return "must be a DNS label: 1-63 letters, digits or `-`, not starting or ending with `-`"


def _check_segment(value: str) -> str | None:
    if _NOT_IN_SEGMENT.search(value) or value in (".", ".."):
        return "must be one URL path segment: no `/`, `?`, `#`, `%`, whitespace, `.` or `..`"
    return None


def _check_api_version(value: str) -> str | None:
    if _API_VERSION.match(value):
        return None
    return "must contain only letters, digits, `.`, `_` and `-`, e.g. `2024-10-21`"


def _check_upstream_url(value: str) -> str | None:
    # http is allowed on purpose: private endpoints behind TLS-terminating proxies, and the
    # test suite's mock Azure, are plain http.
    if _CONTROL.search(value) or " " in value:
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return "must be an absolute http:// or https:// URL with a valid host and port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    if "@" in parts.netloc:
        return "must not contain credentials (user:password@); put them in `auth`"
    if parts.fragment or value.endswith("#"):
        return "must not contain a `#fragment`"
    return None


def _check_upstream_path(value: str) -> str | None:
    if not value.startswith("/") or _CONTROL.search(value) or any(ch in value for ch in " ?#"):
        return "must start with `/` and contain no query, fragment or whitespace"
    return None


def _check_header_name(value: str) -> str | None:
    if _HEADER_NAME.match(value):
        return None
    return "must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~"


def _check_header_value(value: str) -> str | None:
    if _CONTROL_BUT_TAB.search(value):
        return "contains a control character such as a line break (a trailing newline?)"
    if value != value.strip():
        return "has leading or trailing whitespace"
    return None


def _check_client_id(value: str) -> str | None:
    if _GUID.match(value):
        return None
    return (
        "must be a client (application) id, a GUID such as `00000000-0000-0000-0000-000000000000`"
    )


def _check_tenant_id(value: str) -> str | None:
    if _GUID.match(value) or _DOMAIN.match(value):
        return None
    return (
        "must be a tenant id, a GUID such as `00000000-0000-0000-0000-000000000000`, "
        "or a tenant domain such as `contoso.onmicrosoft.com`"
    )


def _check_no_control(value: str) -> str | None:
    if _CONTROL.search(value):
        return "contains a control character such as a line break (a trailing newline?)"
    return None
