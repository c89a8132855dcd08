"""One data-plane call once its deployment is known: what every operation's handler gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from .deployments import Deployment
from .faults import Fault
from .records import RequestRecord
from .routes import ApiStyle
from .wire import Operation

if TYPE_CHECKING:
    from .app import MockState

__all__ = ["Call", "Form"]


@dataclass(slots=True)
class Form:
    """A ``multipart/form-data`` body as the mock keeps it: the text fields, and per file
    field its file name and byte count (the bytes themselves are never held)."""

    fields: dict[str, str]
    files: dict[str, tuple[str, int]]

    @property
    def file_bytes(self) -> int:
        """Bytes of every file part together."""
        return sum(size for _, size in self.files.values())


@dataclass(slots=True)
class Call:
    """A request to one deployment, past the front door (path, version, key, deployment).

    Attributes:
        state: The mock (config, settings, stored responses).
        headers: The response headers so far (the deployment's, request ids, faults').
        latency_ms: Delay before the status line (a ``delay`` fault may change it).
        token_delay_ms: Delay between generated pieces: stream events, speech chunks.
    """

    state: MockState
    request: web.Request
    record: RequestRecord
    deployment: Deployment
    op: Operation
    style: ApiStyle
    headers: dict[str, str]
    fault: Fault | None
    latency_ms: float
    token_delay_ms: float
    form: Form | None = None

    @property
    def api_version(self) -> str:
        """The request's api-version; ``v1`` when a v1 call names none."""
        return self.request.query.get("api-version") or "v1"

    def ok(self, body: bytes, content_type: str | None = None) -> web.Response:
        """A 200 with *body*, recorded."""
        self.record.status = 200
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        return web.Response(body=body, headers=self.headers)
