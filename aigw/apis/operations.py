"""The catalogue of Azure OpenAI operations: one per Kong ``route_type``.

An operation is what a request asks Azure to do (chat, responses, speech...). It is
named by the request path, in one of three API styles the openai SDK builds
(../shared/notes/azure.md §1.2):

* ``deployments``: ``/openai/deployments/{deployment}/chat/completions?api-version=…``,
  the classic ``AzureOpenAI`` client; the deployment is in the path.
* ``v1``: ``/openai/v1/chat/completions``, ``OpenAI(base_url=…/openai/v1/)``; no dated
  api-version; the deployment is the body's ``model``.
* ``openai``: ``/openai/responses?api-version=…``, the classic client's calls outside
  the deployment set (Responses); the deployment is the body's ``model``.

Realtime is a WebSocket: ``/openai/realtime?deployment=…`` (classic) and
``/openai/v1/realtime?model=…``; its deployment is in the query.

Everything here is static: the table is built once at import and read per request
through dict lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from aigw.config.model import RouteType

__all__ = [
    "BY_ROUTE_TYPE",
    "BY_SUFFIX",
    "MODEL_PATHS",
    "OPERATIONS",
    "REALTIME_PATHS",
    "ApiStyle",
    "BodyKind",
    "Operation",
    "UsageStyle",
]

ApiStyle = Literal["deployments", "v1", "openai"]
"""How the client named the deployment: in the path, or in the body (v1 / classic)."""

BodyKind = Literal["json", "multipart", "none"]
"""What the request body is: a JSON object, ``multipart/form-data`` (streamed, never held
whole), or nothing (a WebSocket upgrade)."""

UsageStyle = Literal["chat", "responses", "none"]
"""Where token usage is read: ``usage.prompt_tokens``/``completion_tokens`` (chat,
completions, embeddings, images of gpt-image-1), ``usage.input_tokens``/``output_tokens``
(Responses, realtime ``response.done``, gpt-4o-transcribe), or nowhere."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One Azure OpenAI operation.

    Attributes:
        route_type: Kong's name for it (``targets[].route_type``).
        suffix: The path after ``/openai/deployments/{deployment}`` and after
            ``/openai/v1`` (``/chat/completions``); empty for realtime.
        body: The request body's kind.
        required: The body field the operation cannot do without (checked before
            forwarding), or None.
        streams: The client may ask for SSE (``"stream": true``).
        inject_usage: aigw adds ``stream_options.include_usage`` to a stream so its
            usage is known (chat and completions; Responses streams always carry it).
        require_done: A stream ends with ``data: [DONE]``; without it, it was cut.
        usage: Where token usage is read.
        method: The HTTP method the SDK uses.
        openai_path: The classic model-in-body path (``/openai/responses``), or None.
        default_api_version: The api-version sent when neither the client nor the
            target names one, when the gateway-wide default is too old for it.
        in_deployment_path: Azure serves it under ``/openai/deployments/{deployment}``
            (Responses and realtime are not: their deployment is in the body or query).
    """

    route_type: RouteType
    suffix: str
    body: BodyKind
    required: str | None
    streams: bool = False
    inject_usage: bool = False
    require_done: bool = False
    usage: UsageStyle = "chat"
    method: str = "POST"
    openai_path: str | None = None
    default_api_version: str | None = None
    in_deployment_path: bool = True

    @property
    def v1_path(self) -> str:
        """``/openai/v1`` + the suffix (realtime: ``/openai/v1/realtime``)."""
        return "/openai/v1" + (self.suffix or "/realtime")


OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "llm/v1/chat",
        "/chat/completions",
        "json",
        "messages",
        streams=True,
        inject_usage=True,
        require_done=True,
    ),
    Operation(
        "llm/v1/completions",
        "/completions",
        "json",
        "prompt",
        streams=True,
        inject_usage=True,
        require_done=True,
    ),
    Operation("llm/v1/embeddings", "/embeddings", "json", "input"),
    Operation(
        "llm/v1/responses",
        "/responses",
        "json",
        None,  # `input` may be left out when `previous_response_id` carries the conversation
        streams=True,
        usage="responses",
        openai_path="/openai/responses",
        # The first api-version that knows Responses (notes/azure.md §2.1).
        default_api_version="2025-04-01-preview",
        in_deployment_path=False,
    ),
    Operation("image/v1/images/generations", "/images/generations", "json", "prompt"),
    Operation("image/v1/images/edits", "/images/edits", "multipart", "prompt", usage="responses"),
    Operation("audio/v1/audio/speech", "/audio/speech", "json", "input", usage="none"),
    Operation(
        "audio/v1/audio/transcriptions",
        "/audio/transcriptions",
        "multipart",
        "file",
        usage="responses",
    ),
    Operation(
        "audio/v1/audio/translations", "/audio/translations", "multipart", "file", usage="none"
    ),
    Operation(
        "realtime/v1/realtime",
        "",
        "none",
        None,
        usage="responses",
        method="GET",
        default_api_version="2025-04-01-preview",
        in_deployment_path=False,
    ),
)
"""Every operation aigw knows, in Kong's order."""

BY_ROUTE_TYPE: Final[dict[str, Operation]] = {op.route_type: op for op in OPERATIONS}
"""``route_type`` -> operation (``preserve`` and ``auto`` have none)."""

BY_SUFFIX: Final[dict[str, Operation]] = {
    op.suffix[1:]: op for op in OPERATIONS if op.in_deployment_path
}
"""The rest of a ``/openai/deployments/{deployment}/…`` path (``chat/completions``) ->
its operation: how a model route's classic paths tell the operation."""

REALTIME: Final = BY_ROUTE_TYPE["realtime/v1/realtime"]

MODEL_PATHS: Final[dict[str, tuple[Operation, ApiStyle]]] = {
    **{op.v1_path: (op, "v1") for op in OPERATIONS if op.suffix},
    **{op.openai_path: (op, "openai") for op in OPERATIONS if op.openai_path},
}
"""Every HTTP path whose deployment is the body's ``model``, with its operation and style."""

REALTIME_PATHS: Final[dict[str, tuple[str, ApiStyle]]] = {
    "/openai/realtime": ("deployment", "openai"),
    "/openai/v1/realtime": ("model", "v1"),
}
"""The realtime WebSocket paths -> the query parameter naming the deployment, and the style."""
