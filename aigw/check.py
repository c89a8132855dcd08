"""``aigw check``: the route table, consumers and global plugins as the gateway would load them,
with warnings for valid config that likely does not do what was meant."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aigw.apis.operations import MODEL_PATHS, OPERATIONS, REALTIME_PATHS
from aigw.config.errors import ConfigError
from aigw.config.model import BalancerConfig, RouteFile
from aigw.reload import FileState, Reloader
from aigw.route import CompiledRoute
from aigw.table import RouteTable, deployment_path, plugin_names
from aigw.upstream.target import UpstreamTarget

__all__ = ["check_warnings", "render_table", "run_check"]


def run_check(conf_dir: Path, azure_base_url: str | None = None) -> int:
    """``aigw check``: loads *conf_dir* as the gateway would, prints the table, warnings
    and errors; returns the exit status (1 when a file was refused)."""
    # The same code path as the gateway's own loads and reloads.
    reloader = Reloader(conf_dir, os.environ, azure_base_url=azure_base_url)
    try:
        report = reloader.load_initial("check")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assert reloader.table is not None
    table = render_table(
        reloader.table,
        conf_dir,
        len(report.rejected),
        reloader.files(),
    )
    print(table)
    for warning in check_warnings(reloader.table):
        print(f"warning: {warning}", file=sys.stderr)
    for error in report.rejected:
        for issue in error.issues:
            print(f"error: {issue}", file=sys.stderr)
    return 1 if report.rejected else 0


_LISTED_FILES = 20
"""Consumer files ``aigw check`` lists by name; past it, how many more."""


def render_table(
    table: RouteTable,
    conf_dir: Path,
    rejected: int,
    files: Sequence[FileState] = (),
) -> str:
    """The serving table as ``aigw check`` prints it: consumers, global plugins, routes.

    Args:
        table: The table.
        conf_dir: The directory it was loaded from.
        rejected: How many files were refused.
        files: The reloader's file states, for the consumer and global plugins files.
    """
    lines = [f"{conf_dir}: {len(table.routes)} route(s) accepted, {rejected} file(s) rejected"]
    serving = [f for f in files if f.state != "rejected"]
    lines.append(f"  consumers: {len(table.consumers)}")
    consumer_files = [f for f in serving if f.kind == "consumer"]
    for file in consumer_files[:_LISTED_FILES]:
        lines.append(f"    {file.name}: {file.consumers} consumer(s)")
    if len(consumer_files) > _LISTED_FILES:
        lines.append(f"    ... and {len(consumer_files) - _LISTED_FILES} more file(s)")
    owners = {name: f.name for f in serving if f.kind == "plugins" for name in f.plugins or ()}
    named = [f"{name} ({owners.get(name, '?')})" for name in plugin_names(table.global_plugins)]
    lines.append(f"  global plugins: {', '.join(named) or 'none'}")
    if table.models:
        lines.append(
            f"  models: {len(table.models)} on /openai/v1/..., /openai/responses and realtime "
            "(the body's `model`, or realtime's query, picks the route)"
        )
    for route in table.routes:
        methods = ",".join(route.file.route.methods or ("*",))
        target = route.target
        upstream = _upstream(target, route.info.route_type)
        lines.append(f"  {route.name}  ({route.info.source})")
        for path in route.file.route.paths:
            lines.append(f"    {methods} {path}")
        lines.extend(_model_lines(route, methods))
        proxy = route.file.proxy
        if len(proxy.targets) > 1 and route.pool is not None:
            lines.extend(_pool_lines(route))
        else:
            version = target.default_api_version
            if route.info.route_type == "auto":
                version = f"{version} (on /openai/v1/...: none)"
            lines.append(f"    -> {upstream}  api-version: client's, else {version}")
        if proxy.balancer is not None:
            lines.append(f"    balancer: {_describe_balancer(proxy.balancer)}")
        lines.append(f"    chain: {' > '.join(route.stages)}")
    return "\n".join(lines)


def _upstream(target: UpstreamTarget, route_type: str | None) -> str:
    """Where a route's requests go, for display."""
    if route_type == "auto":
        # The path is each request's: its operation, in the API style the client used.
        return f"{target.origin} + the request's operation path"
    return target.url("{client path}") if target.fixed_path is None else target.url("")


def _model_lines(route: CompiledRoute, methods: str) -> list[str]:
    """A model route's models, the classic paths they claim, and the operations it serves."""
    config = route.file.route
    route_type = route.file.proxy.targets[0].route_type
    if not config.models:
        return [] if route_type == "preserve" else [f"    operation: {route_type}"]
    lines = [f"    models: {', '.join(config.models)}"]
    if config.deployment_paths:
        lines.extend(f"    {methods} {deployment_path(model)}" for model in config.models)
    if route_type == "auto":
        names = ", ".join(op.route_type for op in OPERATIONS)
        lines.append(f"    operations (auto, from the request path): {names}")
    else:
        lines.append(f"    operation: {route_type}")
    return lines


def _pool_lines(route: CompiledRoute) -> list[str]:
    assert route.pool is not None
    lines = []
    for member, config in zip(route.pool.members, route.file.proxy.targets, strict=True):
        target = member.target
        upstream = _upstream(target, config.route_type)
        deployment = target.deployment or "-"
        lines.append(
            f"    -> {member.name}  weight {config.weight}  deployment {deployment}  {upstream}  "
            f"api-version: client's, else {target.default_api_version}"
        )
    return lines


def _describe_balancer(balancer: BalancerConfig) -> str:
    parts: list[str] = [balancer.algorithm]
    if balancer.algorithm == "consistent-hashing":
        parts.append(f"hash on {balancer.hash_on_header}")
    elif balancer.algorithm == "lowest-latency":
        parts.append(f"latency {balancer.latency_strategy}")
    elif balancer.algorithm == "lowest-usage":
        parts.append(f"usage {balancer.tokens_count_strategy}")
    parts.append(f"retries {balancer.retries}")
    criteria = ", ".join(balancer.failover_criteria) or "nothing"
    parts.append(f"failover on {criteria}")
    if balancer.max_fails and balancer.fail_timeout:
        parts.append(
            f"circuit breaker: {balancer.max_fails} failure(s) within {balancer.fail_timeout} ms "
            f"eject for {balancer.fail_timeout} ms"
        )
    else:
        parts.append("circuit breaker off")
    return "; ".join(parts)


def check_warnings(table: RouteTable) -> list[str]:
    """What ``aigw check`` warns about: valid config that likely does not do what was meant."""
    warnings: list[str] = []
    global_limit = table.global_plugins.token_limit
    # Said once for the global plugin, if any route uses it, not once per route.
    if (
        global_limit is not None
        and global_limit.strategy == "local"
        and any(route.file.plugins.token_limit is None for route in table.routes)
    ):
        warnings.append(_per_worker("the global ai-rate-limiting-advanced"))
    for route in table.routes:
        own = route.file.plugins
        plugins = own.over(table.global_plugins)
        where = f"route {route.name} ({route.info.source})"
        warnings.extend(f"{where}: {warning}" for warning in _balancer_warnings(route.file))
        limit = plugins.token_limit
        if own.token_limit is not None and own.token_limit.strategy == "local":
            warnings.append(_per_worker(f"{where}: ai-rate-limiting-advanced"))
        if plugins.key_auth is not None:
            if not table.consumers:
                warnings.append(
                    f"{where}: key-auth and no consumer file: every request is refused 401"
                )
            continue
        if plugins.acl is not None:
            warnings.append(
                f"{where}: acl without key-auth (on the route or global): "
                "every request is refused 401"
            )
        if limit is not None and limit.identifier in ("consumer", "credential"):
            warnings.append(
                f"{where}: ai-rate-limiting-advanced identifier: {limit.identifier} without "
                "key-auth (on the route or global): counted per client IP"
            )
    warnings.extend(_model_path_warnings(table))
    return warnings


def _model_path_warnings(table: RouteTable) -> list[str]:
    """A path route holding a model-in-body path takes it from every model route."""
    if not table.models:
        return []
    held = set(MODEL_PATHS) | set(REALTIME_PATHS)
    return [
        f"route {route.name} ({route.info.source}): claims {path}, so every model's "
        f"{path} request goes to it, not to the model routes (route.models)"
        for route in table.routes
        for path in route.file.route.paths
        if path in held
    ]


def _balancer_warnings(file: RouteFile) -> list[str]:
    """A balancer that is valid but will not do what its fields suggest."""
    balancer = file.proxy.balancer
    if balancer is None:
        return []
    warnings: list[str] = []
    methods = file.route.methods
    statuses = [name for name in balancer.failover_criteria if name.startswith("http_")]
    if (
        (methods is None or "POST" in methods)
        and statuses
        and ("non_idempotent" not in balancer.failover_criteria)
    ):
        warnings.append(
            f"failover_criteria has {', '.join(statuses)} but not non_idempotent: 429/5xx "
            "answers never fail over on POST without non_idempotent, as nginx and Kong do"
        )
    if balancer.max_fails > 0 and balancer.fail_timeout == 0:
        warnings.append(
            f"max_fails: {balancer.max_fails} with fail_timeout: 0: the circuit breaker is off "
            "(fail_timeout 0 turns it off)"
        )
    default_header = BalancerConfig().hash_on_header
    if (
        balancer.algorithm != "consistent-hashing"
        and balancer.hash_on_header.lower() != default_header.lower()
    ):
        warnings.append(
            f"hash_on_header is set but algorithm is {balancer.algorithm}: only "
            "consistent-hashing reads it"
        )
    return warnings


def _per_worker(what: str) -> str:
    return (
        f"{what} has strategy: local, counted per worker process: with --workers N each "
        "worker enforces its own limit; use strategy: redis to share one"
    )
