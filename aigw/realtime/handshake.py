"""The upstream side of a realtime upgrade: its URL, headers and subprotocols.

Azure serves the Realtime API at two URLs (notes/azure.md §1.2):

* classic: ``/openai/realtime?api-version=…&deployment=<deployment>``, what
  ``AzureOpenAI(...).realtime.connect()`` dials;
* v1: ``/openai/v1/realtime?model=<deployment>``, what
  ``OpenAI(base_url=…/openai/v1/).realtime.connect()`` dials.

The upstream call keeps the client's style; the deployment is always the
target's ``azure_deployment_id``, whatever the client named.

SECURITY: the client's ``api-key`` and ``Authorization`` never cross (the
headers are built from the same allowlist as HTTP requests, plus the route's
credential), nor does a browser's key in disguise, the subprotocol
``openai-insecure-api-key.<key>``.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from aigw.apis.operations import REALTIME, ApiStyle
from aigw.chain.exchange import Exchange
from aigw.upstream.headers import REQUEST_POLICY
from aigw.upstream.target import UpstreamTarget, client_api_version

__all__ = ["api_style", "client_protocols", "upstream_headers", "upstream_url"]

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_KEY_PROTOCOL = "openai-insecure-api-key."
_V1_PATH = REALTIME.v1_path


def api_style(ex: Exchange) -> ApiStyle:
    """The client's style: the dispatcher's when it set one, else read from the path."""
    style = ex.api_style
    if style is not None:
        return style
    return "v1" if ex.path.startswith(_V1_PATH) else "openai"


def upstream_url(ex: Exchange, target: UpstreamTarget) -> str:
    """The upstream WebSocket URL for this session; sets ``ex.api_version``.

    Raises:
        BadRequest: The client's ``api-version`` is not an Azure API version.
    """
    origin = target.origin
    scheme = _WS_SCHEMES.get(origin.scheme, origin.scheme)
    deployment = quote(target.deployment or "", safe="")
    given = client_api_version(ex.request)
    if api_style(ex) == "v1":
        path = f"{_V1_PATH}?model={deployment}"
        if given is not None:
            path += f"&api-version={given}"
    else:
        # The gateway-wide default predates the Realtime API: a target that names no
        # version of its own gets the first one that knows it.
        given = target.operation_api_version(REALTIME, "openai", given)
        path = f"/openai/realtime?api-version={given}&deployment={deployment}"
    ex.api_version = given
    if ex.extra_query:  # a credential sent as a query parameter
        path += "".join(f"&{quote(k, safe='')}={quote(v, safe='')}" for k, v in ex.extra_query)
    host = origin.host
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}:{origin.port}{path}"


def upstream_headers(ex: Exchange) -> list[tuple[str, str]]:
    """The allowlisted client headers plus the route's credential (``ex.extra_headers``)."""
    headers = REQUEST_POLICY.filter(ex.request.headers.items())
    headers += ex.extra_headers
    return headers


def client_protocols(request: web.BaseRequest) -> list[str]:
    """The client's subprotocols, in its order, without a key in disguise."""
    offered: list[str] = []
    for value in request.headers.getall("Sec-WebSocket-Protocol", ()):
        for name in value.split(","):
            name = name.strip()
            if name and not name.startswith(_KEY_PROTOCOL):
                offered.append(name)
    return offered
