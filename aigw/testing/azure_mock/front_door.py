"""Azure's front door: the checks before a deployment is looked at (api-version present,
key or token, api-version valid, Responses' minimum version), and the bare answers it
gives (no ``x-request-id``, no deployment headers)."""

from __future__ import annotations

import hmac
import re
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Final

from aiohttp import web

from .config import MockConfig
from .deployments import HSTS
from .records import RequestRecord
from .responses import RESPONSES_VERSION_MESSAGE, responses_version_ok
from .routes import Endpoint, OpRoute
from .wire import (
    API_VERSION_NOT_SUPPORTED,
    INVALID_BEARER,
    INVALID_KEY,
    JSON_CT,
    RESOURCE_NOT_FOUND,
    model_error_body,
)

__all__ = ["FrontDoor"]

_V1_VERSIONS: Final = frozenset({"v1", "preview"})
_DATED_VERSION: Final = re.compile(r"\d{4}-\d{2}-\d{2}(?:-preview)?")


class FrontDoor:
    """The checks and bare answers of one mock resource."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self._verify_entra = _entra_verifier(config.entra_secret)

    def check(
        self, request: web.Request, route: OpRoute | Endpoint, record: RequestRecord
    ) -> web.Response | None:
        """The answer to a request refused before its deployment, or None."""
        api_version = request.query.get("api-version")
        v1 = route.style == "v1"
        # Azure's front door answers a missing version before it even looks at the key.
        if not api_version and not v1:
            if isinstance(route, OpRoute) and route.deployment is not None:
                record.deployment = route.deployment
            return self.bare_error(record, 404, RESOURCE_NOT_FOUND)
        if isinstance(route, OpRoute) and route.deployment is not None:
            record.deployment = route.deployment
        auth_error = self._auth_error(request, v1=v1)
        if auth_error is not None:
            record.status = 401
            record.apim_request_id = str(uuid.uuid4())
            headers = {"apim-request-id": record.apim_request_id, "Content-Type": JSON_CT}
            return web.Response(status=401, body=auth_error, headers=headers)
        if api_version is not None and not self._version_ok(api_version, v1=v1):
            headers = self.common_headers(record)
            headers["x-request-id"] = str(uuid.uuid4())
            record.status = 400
            return web.Response(status=400, body=API_VERSION_NOT_SUPPORTED, headers=headers)
        responses_call = isinstance(route, Endpoint) and route.response_id is not None
        responses_call = responses_call or (isinstance(route, OpRoute) and route.op == "responses")
        if responses_call and not v1 and not responses_version_ok(api_version or ""):
            return self.model_error(record, RESPONSES_VERSION_MESSAGE, None)
        return None

    def _auth_error(self, request: web.Request, *, v1: bool) -> bytes | None:
        key = request.headers.get("api-key")
        if key is not None:
            ok = hmac.compare_digest(key.encode(), self.config.api_key.encode())
            return None if ok else INVALID_KEY
        authorization = request.headers.get("Authorization", "")
        if authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip().encode()
            # The v1 API takes the resource key as a bearer token too (its spec's
            # `authorization` scheme); the classic API only takes Entra tokens there.
            if v1 and hmac.compare_digest(token, self.config.api_key.encode()):
                return None
            expected = self.config.bearer_token
            if expected is not None and hmac.compare_digest(token, expected.encode()):
                return None
            verify = self._verify_entra
            if verify is not None and verify(token.decode(), time.time()):
                return None
            return INVALID_BEARER
        return INVALID_KEY

    def _version_ok(self, api_version: str, *, v1: bool) -> bool:
        if v1:
            return api_version in _V1_VERSIONS
        allowed = self.config.api_versions
        if allowed is not None:
            return api_version in allowed
        return _DATED_VERSION.fullmatch(api_version) is not None

    def common_headers(self, record: RequestRecord) -> dict[str, str]:
        """Headers every answer of the resource carries, with a fresh apim-request-id."""
        record.apim_request_id = str(uuid.uuid4())
        return {
            "apim-request-id": record.apim_request_id,
            "Content-Type": JSON_CT,
            "Strict-Transport-Security": HSTS,
            "x-content-type-options": "nosniff",
            "x-ms-region": self.config.region,
        }

    def bare_error(self, record: RequestRecord, status: int, body: bytes) -> web.Response:
        """A front-door error: no x-request-id, no deployment headers (as Azure's 404s)."""
        record.status = status
        return web.Response(status=status, body=body, headers=self.common_headers(record))

    def model_error(self, record: RequestRecord, message: str, param: str | None) -> web.Response:
        """The model service's OpenAI-style 400: a body that names no deployment, a form
        that cannot be read, a Responses call on a version that predates it."""
        headers = self.common_headers(record)
        headers["x-request-id"] = str(uuid.uuid4())
        record.status = 400
        body = model_error_body(message, param, None)
        return web.Response(status=400, body=body, headers=headers)


def _entra_verifier(secret: str | None) -> Callable[[str, float], bool] | None:
    """``verify(token, now)`` for tokens the local Entra endpoint issued with *secret*."""
    if secret is None:
        return None
    # Imported only when asked: the token endpoint is a test tool of its own.
    from aigw.testing.entra import verify_token

    return partial(_verify_with, verify_token, secret)


def _verify_with(
    verify_token: Callable[[str, str, float], bool], secret: str, token: str, now: float
) -> bool:
    return verify_token(token, secret, now)
