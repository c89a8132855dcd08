"""Entra ID token sources against a real local managed-identity endpoint (azure-identity client)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from azure.identity.aio import (
    ClientSecretCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from structlog.testing import capture_logs

from aigw.config.model import AuthConfig
from aigw.identity import Identity, IdentityRegistry, TokenSource, TokenUnavailable, identity_of
from aigw.testing.entra import TokenEndpoint, issue_token, verify_token

SECRET = "entra-test-signing-secret"
MI = AuthConfig(azure_use_managed_identity=True)


@pytest.fixture
async def endpoint(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TokenEndpoint]:
    for name in ("MSI_ENDPOINT", "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_SERVER_THUMBPRINT"):
        monkeypatch.delenv(name, raising=False)
    server = TokenEndpoint(SECRET, lifetime_s=3600)
    await server.start()
    for name, value in server.environ().items():
        monkeypatch.setenv(name, value)
    yield server
    await server.close()


@pytest.fixture
async def registry() -> AsyncIterator[IdentityRegistry]:
    reg = IdentityRegistry(deadline_s=1.0, backoff_s=0.3)
    yield reg
    await reg.aclose()


def valid(token: str) -> bool:
    return verify_token(token, SECRET, time.time())


async def test_token_is_fetched_once_and_cached(
    endpoint: TokenEndpoint, registry: IdentityRegistry
) -> None:
    source = registry.token_source(MI)
    first = await source.token()
    assert valid(first)
    assert await source.token() == first
    assert endpoint.fetches == 1


async def test_user_assigned_identity_asks_for_its_client_id(
    endpoint: TokenEndpoint, registry: IdentityRegistry
) -> None:
    auth = AuthConfig(azure_use_managed_identity=True, azure_client_id="uami-1")
    assert valid(await registry.token_source(auth).token())
    assert endpoint.fetches_by_client == {"uami-1": 1}


async def test_refreshed_before_expiry_and_never_expired(
    endpoint: TokenEndpoint, registry: IdentityRegistry
) -> None:
    endpoint.lifetime_s = 2.0
    source = registry.token_source(MI)
    seen: list[str] = []
    refreshed_while_valid = False
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        token = await source.token()
        assert valid(token), "an expired token was handed out"
        if seen and token != seen[-1]:
            # The previous token had not expired yet when its successor arrived.
            refreshed_while_valid |= valid(seen[-1])
        seen.append(token)
        await asyncio.sleep(0.02)
    assert len(set(seen)) >= 2
    assert refreshed_while_valid
    # One fetch per token lifetime, not one per call.
    assert endpoint.fetches <= len(set(seen)) + 1


async def test_single_flight_under_100_callers(
    endpoint: TokenEndpoint, registry: IdentityRegistry
) -> None:
    source = registry.token_source(MI)
    tokens = await asyncio.gather(*(source.token() for _ in range(100)))
    assert len(set(tokens)) == 1
    assert endpoint.fetches == 1
    source.invalidate(tokens[0])
    again = await asyncio.gather(*(source.token() for _ in range(100)))
    assert len(set(again)) == 1
    assert again[0] != tokens[0]
    assert endpoint.fetches == 2


async def test_invalidate_drops_only_the_current_token(
    endpoint: TokenEndpoint, registry: IdentityRegistry
) -> None:
    source = registry.token_source(MI)
    first = await source.token()
    source.invalidate(first)
    second = await source.token()
    assert second != first and valid(second)
    assert endpoint.fetches == 2
    # A late 401 for the old token must not throw away its successor.
    source.invalidate(first)
    assert await source.token() == second
    assert endpoint.fetches == 2


async def test_endpoint_down_fails_promptly_naming_it(
    endpoint: TokenEndpoint, registry: IdentityRegistry
) -> None:
    url = endpoint.url
    await endpoint.close()
    source = registry.token_source(MI)
    started = time.monotonic()
    with pytest.raises(TokenUnavailable) as caught:
        await source.token()
    assert time.monotonic() - started < 3.0
    assert caught.value.endpoint == url
    assert url in str(caught.value)


async def test_hanging_endpoint_hits_the_deadline(
    endpoint: TokenEndpoint, registry: IdentityRegistry
) -> None:
    endpoint.mode = "hang"
    source = registry.token_source(MI)
    started = time.monotonic()
    with pytest.raises(TokenUnavailable) as caught:
        await source.token()
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 4.0  # deadline_s=1.0
    assert caught.value.reason == "timeout"


async def test_back_off_after_a_failure(
    endpoint: TokenEndpoint, registry: IdentityRegistry
) -> None:
    endpoint.mode = "fail"
    source = registry.token_source(MI)
    with pytest.raises(TokenUnavailable) as caught:
        await source.token()
    assert caught.value.reason == "http_500"
    fetches = endpoint.fetches
    assert fetches >= 1
    # Inside the back-off: the error at once, the endpoint left alone.
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(TokenUnavailable):
            await source.token()
    assert time.monotonic() - started < 0.2
    assert endpoint.fetches == fetches
    endpoint.mode = "ok"
    await asyncio.sleep(0.4)  # backoff_s=0.3
    assert valid(await source.token())


async def test_no_token_or_secret_in_logs_or_reprs(
    endpoint: TokenEndpoint, registry: IdentityRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_auth = AuthConfig(
        azure_use_managed_identity=True,
        azure_client_id="app-1",
        azure_tenant_id="tenant-1",
        azure_client_secret="client-secret-value-123",
    )
    with capture_logs() as logs:
        source = registry.token_source(MI)
        token = await source.token()
        source.invalidate(token)
        endpoint.mode = "fail"
        with pytest.raises(TokenUnavailable) as caught:
            await source.token()
    events = [entry["event"] for entry in logs]
    assert events == ["entra_token_fetched", "entra_token_failed"]
    assert logs[0]["identity"] == "managed_identity" and logs[0]["expires_in"] > 3000
    secret_source = registry.token_source(secret_auth)
    texts = [
        str(logs),
        repr(source),
        repr(source.identity),
        str(caught.value),
        repr(secret_source),
        repr(secret_source.identity),
        repr(secret_auth),
        capsys.readouterr().err,
    ]
    for text in texts:
        assert token not in text
        assert "client-secret-value-123" not in text
    assert "client-secret-value-123" not in "".join(secret_source.identity.key)


def open_sessions() -> list[aiohttp.ClientSession]:
    gc.collect()
    return [
        obj for obj in gc.get_objects() if isinstance(obj, aiohttp.ClientSession) and not obj.closed
    ]


async def test_aclose_closes_every_http_session(endpoint: TokenEndpoint) -> None:
    before = len(open_sessions())
    registry = IdentityRegistry()
    first = registry.token_source(MI)
    token = await first.token()
    first.invalidate(token)  # a fetch that replaces its credential
    await first.token()
    await registry.token_source(
        AuthConfig(azure_use_managed_identity=True, azure_client_id="uami-2")
    ).token()
    assert len(open_sessions()) > before
    await registry.aclose()
    assert len(open_sessions()) == before


def test_one_source_per_identity() -> None:
    registry = IdentityRegistry()
    a = registry.token_source(MI)
    assert registry.token_source(AuthConfig(azure_use_managed_identity=True)) is a
    uami = registry.token_source(AuthConfig(azure_use_managed_identity=True, azure_client_id="u"))
    assert uami is not a

    def app(secret: str) -> TokenSource:
        return registry.token_source(
            AuthConfig(
                azure_use_managed_identity=True,
                azure_client_id="app",
                azure_tenant_id="t",
                azure_client_secret=secret,
            )
        )

    assert app("one-secret") is app("one-secret")
    assert app("one-secret") is not app("two-secret")
    assert app("one-secret").identity.kind == "client_secret"
    with pytest.raises(ValueError, match="no Microsoft Entra identity"):
        registry.token_source(AuthConfig(header_name="api-key", header_value="k"))


def test_identity_follows_azure_identity_environment_order() -> None:
    workload = {
        "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
        "AZURE_TENANT_ID": "tenant-w",
        "AZURE_CLIENT_ID": "client-w",
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
    }
    found = identity_of(MI, workload)
    assert (found.kind, found.client_id) == ("workload_identity", "client-w")
    assert found.endpoint == "https://login.microsoftonline.com/tenant-w"
    app_service = {**workload, "IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi/token"}
    assert identity_of(MI, app_service).endpoint == "http://127.0.0.1:1/msi/token"
    imds = identity_of(MI, {})
    assert (imds.kind, imds.endpoint_host) == ("managed_identity", "169.254.169.254")


def test_verify_token_accepts_only_issued_unexpired_tokens() -> None:
    now = time.time()
    token = issue_token(SECRET, expires_on=int(now) + 10, client_id=None, serial=1)
    assert verify_token(token, SECRET, now)
    assert not verify_token(token, SECRET, now + 11)
    assert not verify_token(token, "another-secret", now)
    head, _payload, signature = token.split(".")
    forged = issue_token(SECRET, expires_on=int(now) + 10_000, client_id=None, serial=1)
    assert not verify_token(f"{head}.{forged.split('.')[1]}.{signature}", SECRET, now)
    assert not verify_token("not-a-token", SECRET, now)


async def test_each_kind_builds_its_azure_identity_credential(tmp_path: Path) -> None:
    token_file = tmp_path / "federated-token"
    token_file.write_text("federated")
    workload_env = {"AZURE_FEDERATED_TOKEN_FILE": str(token_file), "AZURE_TENANT_ID": "tenant"}
    app = AuthConfig(
        azure_use_managed_identity=True,
        azure_client_id="app",
        azure_tenant_id="tenant",
        azure_client_secret="client-secret-value-123",
    )
    uami = AuthConfig(azure_use_managed_identity=True, azure_client_id="c")
    cases: list[tuple[Identity, type[object]]] = [
        (identity_of(app, {}), ClientSecretCredential),
        (identity_of(uami, workload_env), WorkloadIdentityCredential),
        (identity_of(MI, {}), ManagedIdentityCredential),
    ]
    for identity, expected in cases:
        credential = identity.build(1.0)
        assert isinstance(credential, expected)
        await credential.close()
    with pytest.raises(ValueError, match="azure_client_id or AZURE_CLIENT_ID"):
        identity_of(MI, workload_env)  # workload identity names its app
