"""Which Azure endpoint a request names: its operation, API style and where its
deployment is (path, body ``model``, form field ``model`` or query), per notes/azure.md
§1.2 and §2.1. Matched against the raw (still percent-encoded) path so that ``a%2Fb``
stays one segment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from .wire import Operation

__all__ = ["ApiStyle", "Endpoint", "OpRoute", "classify"]

ApiStyle = Literal["deployments", "v1", "openai"]
"""``/openai/deployments/{d}/…?api-version=``, ``/openai/v1/…`` or ``/openai/…?api-version=``."""

_SUFFIXES: Final[dict[str, Operation]] = {
    "chat/completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
    "images/generations": "images",
    "images/edits": "image_edits",
    "audio/speech": "speech",
    "audio/transcriptions": "transcriptions",
    "audio/translations": "translations",
}
_ALTERNATION: Final = "|".join(re.escape(suffix) for suffix in _SUFFIXES)
_DEPLOYMENT_PATH: Final = re.compile(rf"/openai/deployments/([^/]+)/({_ALTERNATION})")
_V1_PATH: Final = re.compile(rf"/openai/v1/({_ALTERNATION}|responses)")
_STORED_RESPONSE: Final = re.compile(r"/openai(/v1)?/responses/([^/]+)")
_MODELS: Final[dict[str, ApiStyle]] = {"/openai/models": "openai", "/openai/v1/models": "v1"}
_REALTIME: Final[dict[str, tuple[ApiStyle, str]]] = {
    "/openai/realtime": ("openai", "deployment"),
    "/openai/v1/realtime": ("v1", "model"),
}
#: Operations whose request body is ``multipart/form-data``.
MULTIPART_OPS: Final = frozenset({"image_edits", "transcriptions", "translations"})


@dataclass(frozen=True, slots=True)
class OpRoute:
    """A call to a deployment.

    Attributes:
        op: The operation.
        style: The API style the client used.
        deployment: The deployment named by the path, or None when it comes from the
            body's (or form's) ``model`` or the query (``query_key``).
        query_key: Realtime: the query parameter naming the deployment.
    """

    op: Operation
    style: ApiStyle
    deployment: str | None = None
    query_key: str | None = None

    @property
    def body(self) -> Literal["json", "multipart", "none"]:
        """How the request body is read."""
        if self.op == "realtime":
            return "none"
        return "multipart" if self.op in MULTIPART_OPS else "json"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A call that names no deployment: a stored response (``response_id``) or the
    model list (``response_id`` None)."""

    style: ApiStyle
    response_id: str | None = None


def classify(method: str, raw_path: str) -> OpRoute | Endpoint | None:
    """The endpoint *method* *raw_path* names, or None (Azure's front-door 404)."""
    if method == "POST":
        match = _DEPLOYMENT_PATH.fullmatch(raw_path)
        if match is not None:
            return OpRoute(_SUFFIXES[match.group(2)], "deployments", unquote(match.group(1)))
        match = _V1_PATH.fullmatch(raw_path)
        if match is not None:
            return OpRoute(_SUFFIXES.get(match.group(1), "responses"), "v1")
        if raw_path == "/openai/responses":
            return OpRoute("responses", "openai")
        return None
    if method == "GET":
        realtime = _REALTIME.get(raw_path)
        if realtime is not None:
            return OpRoute("realtime", realtime[0], query_key=realtime[1])
        style = _MODELS.get(raw_path)
        if style is not None:
            return Endpoint(style)
    if method in ("GET", "DELETE"):
        match = _STORED_RESPONSE.fullmatch(raw_path)
        if match is not None:
            return Endpoint("v1" if match.group(1) else "openai", unquote(match.group(2)))
    return None
