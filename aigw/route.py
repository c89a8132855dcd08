"""Compile one validated route file into a route: its target and its chain.

All the work a request would otherwise repeat happens here, once per route per
config load: URL building, header tuples, defaults, the fold of the chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from aigw.chain.access_log import access_log
from aigw.chain.body import body_checks
from aigw.chain.credentials import credentials
from aigw.chain.errors import error_responses
from aigw.chain.exchange import Handler
from aigw.chain.info import RouteInfo
from aigw.chain.request_id import request_id
from aigw.config.model import AccessPlugins, RouteFile
from aigw.consumers.acl import acl
from aigw.consumers.key_auth import key_auth
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.metrics import METRICS
from aigw.quotas import QuotaRegistry
from aigw.templates import is_templated
from aigw.templates.resolve import compile_resolver, resolve_stage
from aigw.upstream.relay import make_relay
from aigw.upstream.target import UpstreamTarget, compile_target

__all__ = ["CompiledRoute", "Stage", "compile_chain", "compile_route"]

Stage = tuple[str, Callable[[Handler], Handler]]
"""A named chain stage factory: given the next handler, returns this stage's."""

_DONE_TERMINATED = frozenset({"llm/v1/chat", "llm/v1/completions"})


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route ready to serve: immutable, shared by every request it matches.

    Attributes:
        info: Static facts for logs and errors.
        file: The validated config it was compiled from.
        target: Where it forwards; on a templated route, with the variables
            still as text (each request resolves its own, ``ex.resolved``).
        handler: The folded chain; calling it runs every stage then the relay.
        stages: The chain's stage names, outermost first (for ``aigw check``).
    """

    info: RouteInfo
    file: RouteFile
    target: UpstreamTarget
    handler: Handler
    stages: tuple[str, ...]

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


def compile_route(
    file: RouteFile,
    *,
    azure_base_url: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    global_plugins: AccessPlugins = _NO_PLUGINS,
    quotas: QuotaRegistry | None = None,
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
    stages.append(("body_checks", partial(body_checks, proxy, target_config, limits)))
    limit = plugins.token_limit
    if limit is not None:
        if quotas is None:
            raise ValueError(f"route {info.name} has a token limit and no quota registry")
        # A route's own limit counts for that route; a global one across all routes.
        namespace = limit.namespace or (info.name if file.plugins.token_limit else "global")
        stages.append(("token_limit", partial(quotas.stage, info, limit, namespace)))
    stages.append(("credentials", partial(credentials, target_config.auth)))
    terminal = make_relay(
        target,
        require_done=target_config.route_type in _DONE_TERMINATED,
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
    )
