"""A local Microsoft Entra ID token endpoint for tests and the demo.

It speaks the protocol of Azure App Service's managed-identity endpoint, the one
azure-identity's ``ManagedIdentityCredential`` calls when ``IDENTITY_ENDPOINT``
and ``IDENTITY_HEADER`` are set (``azure/identity/_credentials/app_service.py``,
azure-identity 1.27)::

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=https://cognitiveservices.azure.com
        [&client_id=<user-assigned identity>]
    X-IDENTITY-HEADER: {IDENTITY_HEADER}

    200 {"access_token": "...", "expires_on": "<epoch seconds>", "resource": "...",
         "token_type": "Bearer", "client_id": "..."}

Tokens are short-lived (``lifetime_s``) and signed with HMAC-SHA256 under a
shared secret, so a second process that knows the secret can accept exactly the
tokens this endpoint issued, and none once expired, without talking to it.

Contract with the Azure mock (``aigw/testing/azure_mock``), proposed here:

* The mock is started with ``--entra-secret S``. It then also accepts
  ``Authorization: Bearer <token>`` for which
  ``aigw.testing.entra.verify_token(token, S, time.time())`` is true, and
  answers a Bearer token for which it is false like Azure does (401,
  ``{"statusCode": 401, "message": "Unauthorized. Access token is missing,
  invalid, audience is incorrect (https://cognitiveservices.azure.com), or
  have expired."}``).
* ``verify_token`` is pure (no I/O, no state): signature, audience
  ``https://cognitiveservices.azure.com`` and expiry.

Run standalone::

    python -m aigw.testing.entra --port 9200 --secret S --lifetime 3600 [--identity-header H]

prints one JSON line with the ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` to
export for ``aigw serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import sys
import time
from collections import Counter
from typing import Final, Literal

import orjson
from aiohttp import web

__all__ = [
    "API_VERSION",
    "AUDIENCE",
    "DEFAULT_IDENTITY_HEADER",
    "EndpointMode",
    "TokenEndpoint",
    "issue_token",
    "verify_token",
]

#: The App Service managed-identity API version azure-identity sends.
API_VERSION: Final = "2019-08-01"
#: The resource of scope ``https://cognitiveservices.azure.com/.default``.
AUDIENCE: Final = "https://cognitiveservices.azure.com"
DEFAULT_IDENTITY_HEADER: Final = "aigw-local-identity-header"
_PREFIX: Final = "aigw-entra"
_PATH: Final = "/msi/token"

EndpointMode = Literal["ok", "fail", "hang"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def issue_token(secret: str, *, expires_on: int, client_id: str | None, serial: int) -> str:
    """Returns a token signed with *secret*, valid until *expires_on* (epoch seconds)."""
    claims = {"aud": AUDIENCE, "exp": expires_on, "cid": client_id, "n": serial}
    payload = _b64(orjson.dumps(claims))
    return f"{_PREFIX}.{payload}.{_signature(secret, payload)}"


def verify_token(token: str, secret: str, now: float) -> bool:
    """Whether *token* was issued under *secret* for Azure OpenAI and is unexpired at *now*.

    Args:
        token: The value after ``Bearer ``.
        secret: The secret the token endpoint signs with.
        now: Epoch seconds (``time.time()``).
    """
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _PREFIX:
        return False
    payload, signature = parts[1], parts[2]
    if not hmac.compare_digest(signature, _signature(secret, payload)):
        return False
    try:
        claims = orjson.loads(_unb64(payload))
    except (ValueError, orjson.JSONDecodeError):
        return False
    exp = claims.get("exp")
    return claims.get("aud") == AUDIENCE and isinstance(exp, int) and now < exp


class TokenEndpoint:
    """An App Service managed-identity endpoint on loopback, scriptable by tests.

    Attributes:
        secret: Signs the tokens; change it to make the next tokens ones a
            verifier with the old secret rejects.
        lifetime_s: Lifetime of the tokens issued from now on.
        mode: ``ok`` answers tokens; ``fail`` answers 500; ``hang`` never answers.
        fetches: Token requests answered or held, valid or not.
        fetches_by_client: Issued tokens per ``client_id`` (``""`` for system-assigned).
    """

    def __init__(
        self,
        secret: str,
        *,
        lifetime_s: float = 3600.0,
        identity_header: str = DEFAULT_IDENTITY_HEADER,
    ) -> None:
        self.secret = secret
        self.lifetime_s = lifetime_s
        self.identity_header = identity_header
        self.mode: EndpointMode = "ok"
        self.fetches = 0
        self.fetches_by_client: Counter[str] = Counter()
        self._serial = itertools.count(1)
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """The ``IDENTITY_ENDPOINT`` value."""
        return f"http://127.0.0.1:{self._port}{_PATH}"

    def environ(self) -> dict[str, str]:
        """The variables that point azure-identity's managed identity here."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.identity_header}

    async def start(self, port: int = 0) -> None:
        """Listens on 127.0.0.1:*port* (0: a free port)."""
        app = web.Application()
        app.router.add_get(_PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stops listening; held (``hang``) requests are released and dropped."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if request.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return _json(400, {"error": "invalid_request", "message": "X-IDENTITY-HEADER"})
        query = request.rel_url.query
        if query.get("api-version") != API_VERSION or query.get("resource") != AUDIENCE:
            return _json(400, {"error": "invalid_request", "message": "api-version or resource"})
        if self.mode == "hang":
            await self._released.wait()
            return _json(503, {"error": "temporarily_unavailable"})
        if self.mode == "fail":
            return _json(500, {"error": "server_error", "message": "scripted failure"})
        client_id = query.get("client_id", "")
        self.fetches_by_client[client_id] += 1
        expires_on = int(time.time() + self.lifetime_s)
        token = issue_token(
            self.secret,
            expires_on=expires_on,
            client_id=client_id or None,
            serial=next(self._serial),
        )
        body = {
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": AUDIENCE,
            "token_type": "Bearer",
            "client_id": client_id or "system-assigned",
        }
        return _json(200, body)


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _serve(args: argparse.Namespace) -> None:
    endpoint = TokenEndpoint(
        args.secret, lifetime_s=args.lifetime, identity_header=args.identity_header
    )
    await endpoint.start(args.port)
    ready = {"event": "entra_endpoint_ready", "lifetime_s": args.lifetime, **endpoint.environ()}
    sys.stdout.write(orjson.dumps(ready).decode() + "\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        await endpoint.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m aigw.testing.entra``: serves tokens until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m aigw.testing.entra", description=__doc__)
    parser.add_argument("--port", type=int, default=9200, help="0 picks a free port")
    parser.add_argument("--secret", required=True, help="signs tokens; give it to the mock too")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="token lifetime, seconds")
    parser.add_argument("--identity-header", default=DEFAULT_IDENTITY_HEADER)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
