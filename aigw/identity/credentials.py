"""Which Microsoft Entra identity a target's ``auth`` names, and its azure-identity credential.

Kong's fields select the identity (see ``AuthConfig``): a client secret when
``azure_client_secret`` is set (with ``azure_tenant_id`` and ``azure_client_id``);
otherwise a managed identity, system-assigned or, with ``azure_client_id``,
user-assigned. Which managed-identity endpoint serves it follows azure-identity's
own order of environment variables, so aigw picks what an Azure SDK app on the
same host would: App Service / Service Fabric / Arc (``IDENTITY_ENDPOINT``),
Azure ML / Cloud Shell (``MSI_ENDPOINT``), workload identity
(``AZURE_FEDERATED_TOKEN_FILE`` and ``AZURE_TENANT_ID``), else IMDS.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from azure.core.credentials_async import AsyncSupportsTokenInfo
from azure.identity.aio import (
    ClientSecretCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)

from aigw.config.model import AuthConfig

__all__ = ["SCOPE", "Identity", "IdentityKind", "identity_of"]

#: The scope of Azure OpenAI (Cognitive Services) data-plane tokens.
SCOPE: Final = "https://cognitiveservices.azure.com/.default"

IdentityKind = Literal["managed_identity", "workload_identity", "client_secret"]

_IMDS_ENDPOINT: Final = "http://169.254.169.254/metadata/identity/oauth2/token"
_PUBLIC_CLOUD: Final = "login.microsoftonline.com"

# azure-identity logs every failed get_token at WARNING through the stdlib
# root logger, which aigw does not render: its lines would reach stderr as
# plain text beside the JSON log. aigw logs each failure itself
# (entra_token_failed), once.
logging.getLogger("azure").addHandler(logging.NullHandler())
logging.getLogger("azure").propagate = False


@dataclass(frozen=True, slots=True)
class Identity:
    """One Entra identity, and how to build a credential for it.

    Attributes:
        kind: What authenticates.
        client_id: The app registration's or user-assigned identity's client id;
            ``None`` for a system-assigned managed identity.
        endpoint: Where tokens come from (no secret in it): named in errors.
        key: Equal for two ``auth`` sections that are the same identity; a
            client secret appears in it only as a digest.
        build: Makes a new credential whose fetches give up after the given seconds.
    """

    kind: IdentityKind
    client_id: str | None
    endpoint: str
    key: tuple[str, ...]
    build: Callable[[float], AsyncSupportsTokenInfo] = field(repr=False, compare=False)

    @property
    def endpoint_host(self) -> str:
        """The endpoint's host (and port), for logs."""
        return urlsplit(self.endpoint).netloc or self.endpoint


def _pipeline_options(deadline_s: float) -> dict[str, Any]:
    # One quick retry inside the credential for a transient glitch; after that
    # the token source's own back-off decides when to try again. azure-core's
    # default (10 retries, exponential from 0.8 s) would outlast any deadline.
    return {
        "retry_total": 1,
        "retry_backoff_factor": 0.2,
        "connection_timeout": deadline_s,
        "read_timeout": deadline_s,
    }


def identity_of(auth: AuthConfig, environ: Mapping[str, str] | None = None) -> Identity:
    """The identity *auth* names, resolved against *environ* (default: the process's).

    Raises:
        ValueError: *auth* names no Entra identity, or a client secret without
            its tenant and client id.
    """
    env = os.environ if environ is None else environ
    authority_host = urlsplit(_with_scheme(env.get("AZURE_AUTHORITY_HOST") or _PUBLIC_CLOUD))
    authority = f"https://{authority_host.netloc}"
    if auth.azure_client_secret:
        return _client_secret(auth, auth.azure_client_secret, authority)
    if not auth.azure_use_managed_identity:
        raise ValueError("auth names no Microsoft Entra identity")
    client_id = auth.azure_client_id or None
    mi_endpoint = env.get("IDENTITY_ENDPOINT") or env.get("MSI_ENDPOINT")
    federated_file = env.get("AZURE_FEDERATED_TOKEN_FILE")
    tenant = auth.azure_tenant_id or env.get("AZURE_TENANT_ID")
    if not mi_endpoint and federated_file and tenant:
        return _workload(client_id or env.get("AZURE_CLIENT_ID"), tenant, federated_file, authority)
    endpoint = mi_endpoint or _IMDS_ENDPOINT

    def build(deadline_s: float) -> AsyncSupportsTokenInfo:
        # Workload identity was chosen above whenever azure-identity would choose it here.
        return ManagedIdentityCredential(client_id=client_id, **_pipeline_options(deadline_s))

    return Identity(
        kind="managed_identity",
        client_id=client_id,
        endpoint=endpoint,
        key=("managed_identity", endpoint, client_id or ""),
        build=build,
    )


def _client_secret(auth: AuthConfig, secret: str, authority: str) -> Identity:
    tenant, client_id = auth.azure_tenant_id, auth.azure_client_id
    if not tenant or not client_id:
        raise ValueError("azure_client_secret needs azure_tenant_id and azure_client_id")

    def build(deadline_s: float) -> AsyncSupportsTokenInfo:
        return ClientSecretCredential(
            tenant, client_id, secret, authority=authority, **_pipeline_options(deadline_s)
        )

    digest = hashlib.sha256(secret.encode()).hexdigest()
    return Identity(
        kind="client_secret",
        client_id=client_id,
        endpoint=f"{authority}/{tenant}",
        key=("client_secret", authority, tenant, client_id, digest),
        build=build,
    )


def _workload(client_id: str | None, tenant: str, token_file: str, authority: str) -> Identity:
    if not client_id:
        raise ValueError("workload identity needs azure_client_id or AZURE_CLIENT_ID")

    def build(deadline_s: float) -> AsyncSupportsTokenInfo:
        return WorkloadIdentityCredential(
            tenant_id=tenant,
            client_id=client_id,
            token_file_path=token_file,
            authority=authority,
            **_pipeline_options(deadline_s),
        )

    return Identity(
        kind="workload_identity",
        client_id=client_id,
        endpoint=f"{authority}/{tenant}",
        key=("workload_identity", authority, tenant, client_id, token_file),
        build=build,
    )


def _with_scheme(host: str) -> str:
    return host if "://" in host else f"https://{host}"
