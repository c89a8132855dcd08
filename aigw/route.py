"""Compile one validated route file into a route: its target and its chain.

All the work a request would otherwise repeat happens here, once per route per
config load: URL building, header tuples, defaults, the fold of the chain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from aigw.apis.operations import BY_ROUTE_TYPE, REALTIME
from aigw.balancer.criteria import FailoverPolicy
from aigw.balancer.members import compile_members, is_entra
from aigw.balancer.pickers import make_picker
from aigw.balancer.stage import Pool, balance
from aigw.balancer.state import TargetStates
from aigw.chain.access_log import access_log
from aigw.chain.body import body_checks, shared_option_defaults
from aigw.chain.credentials import credentials
from aigw.chain.errors import error_responses
from aigw.chain.exchange import Exchange, Handler
from aigw.chain.info import RouteInfo
from aigw.chain.request_id import request_id
from aigw.config.model import AccessPlugins, BalancerConfig, RouteFile, RouteType
from aigw.consumers.acl import acl
from aigw.consumers.key_auth import key_auth
from aigw.identity import IdentityRegistry
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.metrics import METRICS, StreamsInFlight
from aigw.quotas import QuotaRegistry
from aigw.realtime.relay import make_realtime_relay
from aigw.templates import is_templated
from aigw.templates.resolve import compile_resolver, resolve_stage
from aigw.upstream.relay import make_relay
from aigw.upstream.target import UpstreamTarget, compile_target

__all__ = ["CompiledRoute", "Stage", "compile_chain", "compile_route"]

Stage = tuple[str, Callable[[Handler], Handler]]
"""A named chain stage factory: given the next handler, returns this stage's."""


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route ready to serve: immutable, shared by every request it matches.

    Attributes:
        info: Static facts for logs and errors.
        file: The validated config it was compiled from.
        target: Where it forwards; on a templated route, with the variables
            still as text (each request resolves its own, ``ex.resolved``); on a
            balanced route, its first target.
        handler: The folded chain; calling it runs every stage then the relay.
        stages: The chain's stage names, outermost first (for ``aigw check``).
        pool: A balanced route's targets, picker and policy (names and live
            states for /status and metrics); None on a route of one key-auth
            target without a balancer section.
    """

    info: RouteInfo
    file: RouteFile
    target: UpstreamTarget
    handler: Handler
    stages: tuple[str, ...]
    pool: Pool | None = None

    @property
    def name(self) -> str:
        """``route.name`` from the config."""
        return self.info.name


def compile_chain(stages: Sequence[Stage], terminal: Handler) -> Handler:
    """Folds *stages* around *terminal*; ``stages[0]`` runs first (outermost)."""
    handler = terminal
    for _name, factory in reversed(stages):
        handler = factory(handler)
    return handler


_NO_PLUGINS = AccessPlugins()
_ONE_TARGET = BalancerConfig(retries=0)
"""A single Entra target's balancer: one member, so one attempt (its 401 retry apart)."""
_TOKEN_FIELDS = {
    "total-tokens": "total_tokens",
    "prompt-tokens": "prompt_tokens",
    "completion-tokens": "completion_tokens",
}


def compile_route(
    file: RouteFile,
    *,
    azure_base_url: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    global_plugins: AccessPlugins = _NO_PLUGINS,
    quotas: QuotaRegistry | None = None,
    target_states: TargetStates | None = None,
    identities: IdentityRegistry | None = None,
) -> CompiledRoute:
    """Builds the target and the chain for one route file.

    Args:
        file: The validated route file.
        azure_base_url: Serve-time override of the Azure origin.
        limits: The process's time and size bounds.
        global_plugins: Plugins of conf.d's global plugins file; the route's own plugin
            of the same name replaces one.
        quotas: The process's quota state (token limits keep counting across reloads);
            required when the route has a token limit.
        target_states: The process's balancer state (cooldowns, breakers, latency
            survive reloads); a new one when None (``aigw check``, tests).
        identities: The process's Microsoft Entra ID token sources; a new one when
            None and a target needs one.
    """
    proxy = file.proxy
    target_config = proxy.targets[0]
    options = target_config.model.options
    model = target_config.model.name
    deployment = options.azure_deployment_id
    info = RouteInfo(
        name=file.route.name,
        source=file.source,
        provider=target_config.model.provider,
        # Templated: known per request only (the access log takes ex.resolved's).
        model=None if is_templated(model) else model,
        deployment=None if is_templated(deployment) else deployment,
        route_type=target_config.route_type,
        log_statistics=target_config.logging.log_statistics,
        log_payloads=target_config.logging.log_payloads,
    )
    target = compile_target(target_config, azure_base_url=azure_base_url)
    metrics = METRICS.for_route(info.name, info.model)
    stages: list[Stage] = [
        ("request_id", request_id),
        ("access_log", partial(access_log, info, metrics)),
        ("error_responses", partial(error_responses, info)),
    ]
    resolver = compile_resolver(info.name, target_config, azure_base_url)
    if resolver is not None:
        # Before the body is read: the body check compares with the resolved model.
        stages.append(("resolve_target", partial(resolve_stage, resolver)))
    plugins = file.plugins.over(global_plugins)
    # Strangers are refused before their body is read.
    if plugins.key_auth is not None:
        stages.append(("key_auth", partial(key_auth, plugins.key_auth)))
    if plugins.acl is not None:
        stages.append(("acl", partial(acl, info.name, plugins.acl)))
    stages.append(
        (
            "body_checks",
            partial(
                body_checks,
                proxy,
                target_config,
                limits,
                route=info.name,
                models=file.route.models,
            ),
        )
    )
    limit = plugins.token_limit
    if limit is not None:
        if quotas is None:
            raise ValueError(f"route {info.name} has a token limit and no quota registry")
        # A route's own limit counts for that route; a global one across all routes.
        namespace = limit.namespace or (info.name if file.plugins.token_limit else "global")
        stages.append(("token_limit", partial(quotas.stage, info, limit, namespace)))
    pool: Pool | None = None
    if _balanced(file):
        pool = _compile_pool(
            file,
            azure_base_url=azure_base_url,
            target_states=target_states if target_states is not None else TargetStates(),
            identities=identities,
        )
        target = pool.members[0].target
        stages.append(("balance", partial(balance, pool)))
    else:
        stages.append(("credentials", partial(credentials, target_config.auth)))
    terminal = _terminal(
        target,
        target_config.route_type,
        model_header=proxy.model_name_header,
        capture_body=target_config.logging.log_payloads,
        streams_in_flight=metrics.streams_in_flight,
        limits=limits,
    )
    return CompiledRoute(
        info=info,
        file=file,
        target=target,
        handler=compile_chain(stages, terminal),
        stages=(*(name for name, _ in stages), "relay"),
        pool=pool,
    )


def _terminal(
    target: UpstreamTarget,
    route_type: RouteType,
    *,
    model_header: bool,
    capture_body: bool,
    streams_in_flight: StreamsInFlight,
    limits: Limits,
) -> Handler:
    """The chain's last handler: the HTTP relay, the realtime (WebSocket) relay, or on
    ``auto`` a switch between the two on the request's operation."""
    if route_type == REALTIME.route_type:
        return make_realtime_relay(target, limits=limits)
    operation = BY_ROUTE_TYPE.get(route_type)
    http = make_relay(
        target,
        require_done=operation is not None and operation.require_done,
        model_header=model_header,
        capture_body=capture_body,
        streams_in_flight=streams_in_flight,
        limits=limits,
        operation=operation,
    )
    if route_type != "auto":
        return http
    realtime = make_realtime_relay(target, limits=limits)

    # PERF: a plain function returning the chosen relay's awaitable: no frame of its own.
    def switch(ex: Exchange) -> Awaitable[web.StreamResponse]:
        return realtime(ex) if ex.operation is REALTIME else http(ex)

    return switch


def _balanced(file: RouteFile) -> bool:
    """A route goes through ``balance``: a balancer section, several targets, or an Entra
    target (one member, for its 401 retry). Any other keeps ``credentials`` > relay."""
    proxy = file.proxy
    return (
        proxy.balancer is not None
        or len(proxy.targets) > 1
        or any(is_entra(target.auth) for target in proxy.targets)
    )


def _compile_pool(
    file: RouteFile,
    *,
    azure_base_url: str | None,
    target_states: TargetStates,
    identities: IdentityRegistry | None,
) -> Pool:
    proxy = file.proxy
    config = proxy.balancer or _ONE_TARGET
    targets = proxy.targets
    if identities is None and any(is_entra(target.auth) for target in targets):
        identities = IdentityRegistry()
    members = compile_members(
        targets,
        states=target_states,
        identities=identities,
        azure_base_url=azure_base_url,
        shared_defaults=shared_option_defaults(targets) is not None,
    )
    states = [member.state for member in members]
    return Pool(
        route=file.route.name,
        members=members,
        picker=make_picker(config, [member.weight for member in members], states),
        policy=FailoverPolicy.from_criteria(config.failover_criteria),
        max_attempts=min(config.retries + 1, len(members)),
        max_fails=config.max_fails,
        fail_timeout_s=config.fail_timeout / 1000,
        hash_header=config.hash_on_header if config.algorithm == "consistent-hashing" else None,
        tokens_field=_TOKEN_FIELDS[config.tokens_count_strategy],
    )
