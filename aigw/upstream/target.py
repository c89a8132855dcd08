"""Where a route forwards to: the upstream URL and timeouts, resolved at load time."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web
from yarl import URL

from aigw.apis.operations import BY_ROUTE_TYPE, ApiStyle, Operation
from aigw.config.model import RouteType, TargetConfig
from aigw.errors import BadRequest
from aigw.upstream.connection import Origin

__all__ = [
    "DEFAULT_API_VERSION",
    "OPERATION_PATHS",
    "UpstreamTarget",
    "client_api_version",
    "compile_target",
    "valid_api_version",
]

DEFAULT_API_VERSION = "2024-10-21"
"""api-version sent when neither the client nor the config names one: the latest
GA version, and the first GA version that accepts ``stream_options``, which aigw
relies on to account every stream."""

OPERATION_PATHS: dict[RouteType, str] = {
    op.route_type: op.suffix for op in BY_ROUTE_TYPE.values() if op.in_deployment_path
}
"""Azure's operation path per route type, appended to the deployment's base path."""

_REALTIME_PATH = "/openai/realtime"

# [0-9], not \d: \d also matches Unicode digits ("٢٠٢٤"), which would then be
# sent in the upstream request line.
_API_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?|v1|preview|latest")


def valid_api_version(value: str) -> bool:
    """True if *value* looks like an Azure api-version (dated, or a v1 alias)."""
    return _API_VERSION.fullmatch(value) is not None


def client_api_version(request: web.BaseRequest) -> str | None:
    """The ``api-version`` the client sent, if any.

    Raises:
        BadRequest: It is not an Azure API version (it would go into the upstream
            request line as it is).
    """
    version = request.query.get("api-version") if request.query_string else None
    if version is not None and not valid_api_version(version):
        raise BadRequest(
            "invalid_api_version",
            f"api-version {version[:40]!r} is not an Azure OpenAI API version "
            "(expected YYYY-MM-DD, YYYY-MM-DD-preview, v1 or preview)",
            param="api-version",
        )
    return version


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """A compiled forwarding target.

    Attributes:
        origin: Scheme, host and port of the upstream.
        fixed_path: The upstream path, percent-encoded; None means "the
            client's normalised path" (``route_type: preserve``).
        default_api_version: Sent when the client's query has no api-version.
        connect_timeout: Seconds to get a connection (pool wait, connect, TLS).
        read_timeout: Seconds of silence tolerated: before the response head,
            then between body reads. Never a total limit, which would cut
            long streams.
        write_timeout: Seconds for the upstream to take the request body.
        deployment: The Azure deployment name, for logs.
        label: ``provider/model`` for the model-name response header and logs.
        model: ``model.name`` (resolved, on a templated route), for the body check.
        deployment_path: ``/openai/deployments/{azure_deployment_id}``, percent-encoded
            (empty without a deployment id): a model route's classic-style requests go
            there, followed by their operation's suffix.
        explicit_path: The config names the upstream path itself (``upstream_url`` with a
            path, or ``upstream_path``): every request goes to ``fixed_path``.
        api_version: The configured api-version (``azure_api_version``, or the
            ``upstream_url``'s), None when the config names none.
    """

    origin: Origin
    fixed_path: str | None
    default_api_version: str
    connect_timeout: float
    read_timeout: float
    write_timeout: float
    deployment: str | None
    label: str
    model: str | None = None
    deployment_path: str = ""
    explicit_path: bool = False
    api_version: str | None = None

    def path(self, client_path: str) -> str:
        """The upstream path for a request whose normalised path is *client_path*.

        The normalised path is already canonical percent-encoding, so it is
        used as it is.
        """
        return self.fixed_path if self.fixed_path is not None else client_path

    def url(self, client_path: str) -> str:
        """The upstream URL without its query, for display."""
        return f"{self.origin}{self.path(client_path)}"

    def operation_path(self, operation: Operation, style: ApiStyle, client_path: str) -> str:
        """The upstream path of a model route's request, whose operation and API style
        are known per request (``ex.operation``, ``ex.api_style``).

        The client's style is kept: a classic ``/openai/deployments/{model}/…`` request
        goes to this target's deployment; a v1 (``/openai/v1/…``) or classic
        model-in-body (``/openai/responses``) request keeps its path, its deployment
        being the body's ``model``. A path the config names itself always wins.
        """
        if self.explicit_path and self.fixed_path is not None:
            return self.fixed_path
        if style == "deployments" and self.deployment_path:
            return self.deployment_path + operation.suffix
        return client_path

    def operation_api_version(
        self, operation: Operation, style: ApiStyle, client: str | None
    ) -> str | None:
        """The api-version a model route's request sends (None: no query at all).

        The client's own, when it sent one. Otherwise a v1 request sends none (the v1
        API needs none); any other the configured one, else the operation's minimum
        (Responses and realtime are unknown to older versions), else
        ``DEFAULT_API_VERSION``.
        """
        if client is not None:
            return client
        if style == "v1" and not self.explicit_path:
            return None
        return self.api_version or operation.default_api_version or DEFAULT_API_VERSION


def compile_target(target: TargetConfig, *, azure_base_url: str | None = None) -> UpstreamTarget:
    """Resolves a target's upstream URL the way Kong's Azure driver does.

    ``model.options.upstream_url``, when set, is the full URL. Otherwise the
    base is ``https://{azure_instance}.openai.azure.com`` (or *azure_base_url*,
    the serve-time override for private endpoints and the bundled mock) and
    the path ``/openai/deployments/{azure_deployment_id}`` followed by
    ``upstream_path`` or the route type's operation path. An operation Azure
    serves outside the deployment paths has its own: Responses ``/openai/responses``
    (its deployment is the body's ``model``), realtime ``/openai/realtime``.
    """
    options = target.model.options
    deployment = options.azure_deployment_id
    operation = BY_ROUTE_TYPE.get(target.route_type)
    deployment_path = URL.build(path=f"/openai/deployments/{deployment}").raw_path
    fixed_path: str | None
    if options.upstream_url:
        url = URL(options.upstream_url)
        origin = url.origin()
        fixed_path = url.raw_path or "/"
        explicit = fixed_path != "/"
        if target.route_type == "preserve":
            fixed_path = None
        configured = url.query.get("api-version") or options.azure_api_version
    else:
        base = azure_base_url or f"https://{options.azure_instance}.openai.azure.com"
        origin = URL(base).origin()
        explicit = bool(options.upstream_path)
        if target.route_type == "preserve" and not options.upstream_path:
            fixed_path = None
        elif operation is not None and not operation.in_deployment_path and not explicit:
            fixed_path = operation.openai_path or _REALTIME_PATH
        else:
            suffix = options.upstream_path or OPERATION_PATHS.get(target.route_type, "")
            path = f"/openai/deployments/{deployment}{_slashed(suffix)}"
            fixed_path = URL.build(path=path).raw_path
        configured = options.azure_api_version
    minimum = operation.default_api_version if operation is not None else None
    return UpstreamTarget(
        origin=Origin(scheme=origin.scheme, host=origin.raw_host or "", port=origin.port or 0),
        fixed_path=fixed_path,
        default_api_version=configured or minimum or DEFAULT_API_VERSION,
        connect_timeout=target.connect_timeout / 1000,
        read_timeout=target.read_timeout / 1000,
        write_timeout=target.write_timeout / 1000,
        deployment=deployment,
        label=f"{target.model.provider}/{target.model.name or deployment or 'preserve'}",
        model=target.model.name,
        deployment_path=deployment_path if deployment else "",
        explicit_path=explicit,
        api_version=configured,
    )


def _slashed(suffix: str) -> str:
    # Kong collapses leading slashes ("^/*" -> "/") after a nil-path crash
    # (Kong#12869); an empty suffix stays empty.
    return "/" + suffix.lstrip("/") if suffix else ""
