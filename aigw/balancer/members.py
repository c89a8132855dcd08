"""A balanced route's members, compiled once per load: what each attempt needs of its target.

A member is one ``config.targets`` entry made ready: its name (logs, metrics,
/status), weight, compiled ``UpstreamTarget``, credential (a key, or a Microsoft
Entra ID token source), the option defaults it adds to the body, and its
``TargetState``, taken from the app-owned ``TargetStates`` by the target's
identity (origin, path with the deployment, credential fingerprint), so the
state survives any reload in which those three are unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aigw.apis.multipart import MultipartStream
from aigw.balancer.state import TargetKey, TargetState, TargetStates
from aigw.chain.body_ops import (
    MODEL_IN_BODY,
    dump_json,
    missing_defaults,
    option_defaults,
    takes_defaults,
)
from aigw.chain.credentials import KeyCredential
from aigw.chain.exchange import Exchange
from aigw.config.model import AuthConfig, TargetConfig
from aigw.identity import IdentityRegistry, TokenSource
from aigw.upstream.target import UpstreamTarget, compile_target

__all__ = [
    "Member",
    "compile_members",
    "credential_fingerprint",
    "is_entra",
    "target_key",
    "target_names",
]


def is_entra(auth: AuthConfig) -> bool:
    """The target authenticates with Microsoft Entra ID (a bearer token), not a key."""
    # As aigw.identity.identity_of chooses: a client secret, else a managed identity.
    return auth.azure_use_managed_identity or bool(auth.azure_client_secret)


@dataclass(frozen=True, slots=True, eq=False)
class Member:
    """One target of a pool, ready for attempts.

    Attributes:
        name: ``azure_instance``, else the upstream host; unique within the route.
        weight: The balancer weight (``targets[].weight``).
        target: Where the attempt goes.
        key: The key credential; None on an Entra target.
        tokens: The Entra token source; None on a key target.
        defaults: Option defaults (``max_tokens``, ``temperature``, ``top_p``) this
            target adds to the body; empty when the route's targets share them (the
            body stage then adds them once).
        state: The target's balancer state, shared across routes and reloads.
        own_body: An attempt here sends a body of its own (defaults or a
            body-param key); else the body stage's bytes as they are.
    """

    name: str
    weight: int
    target: UpstreamTarget
    key: KeyCredential | None
    tokens: TokenSource | None
    defaults: tuple[tuple[str, Any], ...]
    state: TargetState
    own_body: bool = field(init=False)

    def __post_init__(self) -> None:
        own = bool(self.defaults) or (self.key is not None and self.key.uses_body)
        object.__setattr__(self, "own_body", own)

    def body(
        self, payload: dict[str, Any] | None, sent: bytes, ex: Exchange | None = None
    ) -> bytes:
        """The bytes an attempt here sends: *sent* (the body stage's), with this target's
        defaults and body-param key added to a copy of *payload*, re-serialised only
        when one of them changed it.

        On a model-in-body request (*ex*'s ``api_style`` ``v1`` or ``openai``) the body's
        ``model`` names the deployment: it becomes this target's (a multipart upload's
        ``model`` field too)."""
        deployment = self.target.deployment
        rename = ex is not None and deployment is not None and ex.api_style in MODEL_IN_BODY
        if payload is None:
            stream = ex.upstream_stream if ex is not None else None
            if rename and deployment is not None and isinstance(stream, MultipartStream):
                stream.rewrite_model(deployment)
            return sent
        copy: dict[str, Any] | None = None
        if takes_defaults(ex.operation if ex is not None else None):
            for name, value in missing_defaults(payload, self.defaults):
                copy = copy if copy is not None else dict(payload)
                copy[name] = value
        if rename and payload.get("model") != deployment:
            copy = copy if copy is not None else dict(payload)
            copy["model"] = deployment
        if self.key is not None:
            for name, value in self.key.body_fields(payload):
                copy = copy if copy is not None else dict(payload)
                copy[name] = value
        return sent if copy is None else dump_json(copy)


def target_names(targets: Sequence[TargetConfig], compiled: Sequence[UpstreamTarget]) -> list[str]:
    """Each target's display name: ``azure_instance``, else the upstream host, with
    ``#2``, ``#3`` appended to repeats so names are unique within the route."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for config, target in zip(targets, compiled, strict=True):
        base = config.model.options.azure_instance or target.origin.host
        count = seen.get(base, 0) + 1
        seen[base] = count
        names.append(base if count == 1 else f"{base}#{count}")
    return names


def credential_fingerprint(auth: AuthConfig) -> str:
    """A non-reversible digest of everything that decides who the upstream sees.

    A changed key or identity makes a new target (fresh state): its cooldowns and
    breaker were earned by another credential.
    """
    parts = (
        auth.header_name,
        auth.header_value,
        auth.param_name,
        auth.param_value,
        auth.param_location,
        str(auth.allow_override),
        str(auth.azure_use_managed_identity),
        auth.azure_client_id,
        auth.azure_client_secret,
        auth.azure_tenant_id,
    )
    material = "\x00".join(part or "" for part in parts).encode()
    return hashlib.sha256(material).hexdigest()[:32]


def target_key(target: UpstreamTarget, auth: AuthConfig) -> TargetKey:
    """The identity a target's state is kept under (``TargetStates``)."""
    origin = target.origin
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    return (
        f"{origin.scheme}://{host}:{origin.port}",
        target.fixed_path or "",
        credential_fingerprint(auth),
    )


def compile_members(
    targets: Sequence[TargetConfig],
    *,
    states: TargetStates,
    identities: IdentityRegistry | None,
    azure_base_url: str | None = None,
    shared_defaults: bool,
) -> tuple[Member, ...]:
    """Compiles a route's targets into members.

    Args:
        targets: ``config.targets``.
        states: The app's target states.
        identities: The app's Entra identities; required when a target uses Entra.
        azure_base_url: Serve-time override of the Azure origin.
        shared_defaults: The targets' option defaults are all the same (the body
            stage adds them once; members add none).
    """
    compiled = [compile_target(config, azure_base_url=azure_base_url) for config in targets]
    names = target_names(targets, compiled)
    members = []
    for config, target, name in zip(targets, compiled, names, strict=True):
        auth = config.auth
        tokens: TokenSource | None = None
        key: KeyCredential | None = None
        if is_entra(auth):
            if identities is None:
                raise ValueError(f"target {name} uses Microsoft Entra ID and no identity registry")
            tokens = identities.token_source(auth)
        else:
            key = KeyCredential(auth)
        members.append(
            Member(
                name=name,
                weight=config.weight,
                target=target,
                key=key,
                tokens=tokens,
                defaults=() if shared_defaults else option_defaults(config),
                state=states.state(target_key(target, auth)),
            )
        )
    return tuple(members)
