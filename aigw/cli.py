"""Command line: ``aigw serve``, ``aigw check``, ``aigw demo``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvloop

from aigw import __version__
from aigw.config.errors import ConfigError
from aigw.config.model import AiProxyAdvancedConfig, BalancerConfig, RouteFile
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.listener import ListenerSettings
from aigw.logs import LogFile, configure_logging
from aigw.reload import FileState, Reloader
from aigw.server import DEFAULT_POOL_SIZE, ServeSettings, serve
from aigw.systemd import Notifier
from aigw.table import RouteTable, plugin_names
from aigw.tail import register as register_tail
from aigw.tail import run as run_tail
from aigw.upstream.target import compile_target
from aigw.workers import Supervisor

__all__ = ["check_warnings", "main", "render_table"]


def _listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aigw", description="AI gateway data plane for Azure OpenAI."
    )
    parser.add_argument("--version", action="version", version=f"aigw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run the gateway")
    _add_serve_options(serve_cmd, default_listen="127.0.0.1:8000")

    check = commands.add_parser(
        "check", help="validate a config directory, print the route table, exit 0 or 1"
    )
    check.add_argument("--conf-dir", type=Path, default=Path("conf.d"))
    check.add_argument("--azure-base-url", default=None, help=argparse.SUPPRESS)

    register_tail(commands)

    demo = commands.add_parser(
        "demo",
        help="start the bundled Azure mock, serve conf.d against it, run the seed's SDK script",
    )
    _add_serve_options(demo, default_listen="127.0.0.1:8000")
    demo.add_argument(
        "--once", action="store_true", help="exit after the SDK script instead of serving on"
    )
    return parser


def _add_serve_options(cmd: argparse.ArgumentParser, *, default_listen: str) -> None:
    cmd.add_argument("--conf-dir", type=Path, default=Path("conf.d"))
    cmd.add_argument(
        "--listen",
        type=_listen_address,
        default=_listen_address(default_listen),
        metavar="HOST:PORT",
    )
    cmd.add_argument(
        "--azure-base-url",
        default=None,
        metavar="URL",
        help="send every route to URL instead of https://{azure_instance}.openai.azure.com "
        "(private endpoint, APIM, the bundled mock)",
    )
    cmd.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    cmd.add_argument(
        "--admin-listen",
        default="127.0.0.1:9901",
        metavar="HOST:PORT|off",
        help="read-only status endpoint (GET /status); keep it on localhost",
    )
    cmd.add_argument(
        "--state-dir",
        type=Path,
        default=os.environ.get("STATE_DIRECTORY") or None,
        metavar="DIR",
        help="keep last-known-good copies of accepted files here, so a restart with a broken "
        "file still serves its last good version (default: $STATE_DIRECTORY, set by systemd)",
    )
    cmd.add_argument(
        "--no-watch", dest="watch", action="store_false", help="do not reload on conf.d changes"
    )
    cmd.add_argument(
        "--settle-ms",
        type=int,
        default=50,
        metavar="MS",
        help="files must be unchanged this long before a reload reads them",
    )
    cmd.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, let in-flight requests and streams finish for up to this long",
    )
    cmd.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N gateway processes sharing the port (SO_REUSEPORT); worker i's admin "
        "port is the admin port + i",
    )
    cmd.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    cmd.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the JSON log lines here instead of stdout; SIGUSR1 reopens it (logrotate)",
    )
    cmd.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close connections that do not deliver a request head this fast",
    )
    limits = DEFAULT_LIMITS
    cmd.add_argument(
        "--client-body-timeout",
        type=float,
        default=limits.client_body_timeout,
        metavar="SECONDS",
        help="answer 408 when a client sends nothing of its request body for this long",
    )
    cmd.add_argument(
        "--client-body-total-timeout",
        type=float,
        default=limits.client_body_total_timeout,
        metavar="SECONDS",
        help="answer 408 when a request body takes longer than this in all",
    )
    cmd.add_argument(
        "--client-send-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close both sides when a client stops reading its response for this long",
    )
    cmd.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="client connections per worker; past it the connections idle longest are closed "
        "to make room, and if none is idle new ones wait in the listen queue "
        "(default: derived from the open-file limit)",
    )
    cmd.add_argument(
        "--upstream-pool-size",
        type=int,
        default=DEFAULT_POOL_SIZE,
        metavar="N",
        help="upstream connections per worker, idle and busy, all upstreams together",
    )
    cmd.add_argument(
        "--max-response-size",
        type=int,
        default=limits.max_response_size,
        metavar="BYTES",
        help="cut an upstream response body longer than this and end it as an error (0: no limit)",
    )
    cmd.add_argument(
        "--max-event-size",
        type=int,
        default=limits.max_event_size,
        metavar="BYTES",
        help="end a stream with an error event when one upstream SSE event is larger than this",
    )
    cmd.add_argument(
        "--max-buffered-request-bytes",
        type=int,
        default=limits.max_buffered_request_bytes,
        metavar="BYTES",
        help="request-body bytes a worker holds at once, all requests together; past it the "
        "body that has stalled the longest gets a 503 (server_busy) and its connection closes",
    )


def _settings(args: argparse.Namespace) -> ServeSettings:
    host, port = args.listen
    worker = args.worker_index
    admin = None
    if args.admin_listen != "off":
        admin_host, admin_port = _listen_address(args.admin_listen)
        if worker is not None and admin_port:
            admin_port += worker
        admin = ListenerSettings(host=admin_host, port=admin_port)
    listener = ListenerSettings(
        host=host,
        port=port,
        header_timeout=args.header_timeout,
        shutdown_timeout=args.drain_timeout,
        reuse_port=worker is not None,
        client_send_timeout=args.client_send_timeout,
        max_connections=args.max_connections,
    )
    limits = Limits(
        client_body_timeout=args.client_body_timeout,
        client_body_total_timeout=args.client_body_total_timeout,
        max_response_size=args.max_response_size,
        max_event_size=args.max_event_size,
        max_buffered_request_bytes=args.max_buffered_request_bytes,
    )
    return ServeSettings(
        conf_dir=args.conf_dir,
        listener=listener,
        admin=admin,
        state_dir=args.state_dir,
        azure_base_url=args.azure_base_url,
        watch=args.watch,
        settle_ms=args.settle_ms,
        worker=worker,
        limits=limits,
        pool_size=args.upstream_pool_size,
    )


def _check(args: argparse.Namespace) -> int:
    # The same code path as the gateway's own loads and reloads.
    reloader = Reloader(args.conf_dir, os.environ, azure_base_url=args.azure_base_url)
    try:
        report = reloader.load_initial("check")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assert reloader.table is not None
    table = render_table(
        reloader.table,
        args.conf_dir,
        len(report.rejected),
        reloader.files(),
        azure_base_url=args.azure_base_url,
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
    *,
    azure_base_url: str | None = None,
) -> str:
    """The serving table as ``aigw check`` prints it: consumers, global plugins, routes.

    Args:
        table: The table.
        conf_dir: The directory it was loaded from.
        rejected: How many files were refused.
        files: The reloader's file states, for the consumer and global plugins files.
        azure_base_url: The ``--azure-base-url`` override, for a pool's upstream URLs.
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
    for route in table.routes:
        methods = ",".join(route.file.route.methods or ("*",))
        target = route.target
        upstream = target.url("{client path}") if target.fixed_path is None else target.url("")
        lines.append(f"  {route.name}  ({route.info.source})")
        for path in route.file.route.paths:
            lines.append(f"    {methods} {path}")
        proxy = route.file.proxy
        if len(proxy.targets) > 1:
            lines.extend(_pool_lines(proxy, azure_base_url))
        else:
            version = target.default_api_version
            lines.append(f"    -> {upstream}  api-version: client's, else {version}")
        if proxy.balancer is not None:
            lines.append(f"    balancer: {_describe_balancer(proxy.balancer)}")
        lines.append(f"    chain: {' > '.join(route.stages)}")
    return "\n".join(lines)


def _target_names(proxy: AiProxyAdvancedConfig, azure_base_url: str | None = None) -> list[str]:
    """Each target's name for people: its ``azure_instance``, else its upstream host, made
    unique within the route by ``#2``, ``#3``."""
    names: list[str] = []
    for config in proxy.targets:
        name = config.model.options.azure_instance
        if not name:
            name = compile_target(config, azure_base_url=azure_base_url).origin.host
        taken = sum(1 for other in names if other == name or other.startswith(f"{name}#"))
        names.append(f"{name}#{taken + 1}" if taken else name)
    return names


def _pool_lines(proxy: AiProxyAdvancedConfig, azure_base_url: str | None) -> list[str]:
    lines = []
    for name, config in zip(_target_names(proxy, azure_base_url), proxy.targets, strict=True):
        target = compile_target(config, azure_base_url=azure_base_url)
        upstream = target.url("{client path}") if target.fixed_path is None else target.url("")
        deployment = target.deployment or "-"
        lines.append(
            f"    -> {name}  weight {config.weight}  deployment {deployment}  {upstream}  "
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
    return warnings


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aigw`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        # The report is the output; the reloader's own log events would repeat it.
        configure_logging("critical", stream=sys.stderr)
        return _check(args)
    if args.command == "tail":
        return run_tail(args)
    log_file = LogFile(args.log_file) if args.log_file is not None else None
    static = {"worker": args.worker_index} if args.worker_index is not None else None
    configure_logging(args.log_level, stream=log_file, static=static)
    if args.command == "serve" and args.workers > 1:
        if args.listen[1] == 0:
            print("error: --workers needs a fixed --listen port", file=sys.stderr)
            return 2
        supervisor = Supervisor(
            list(argv if argv is not None else sys.argv[1:]),
            args.workers,
            args.drain_timeout,
            Notifier.from_env(),
        )
        return _run(supervisor.run())
    try:
        if args.command == "serve":
            return _run(serve(_settings(args), log_file=log_file))
        from aigw.demo import run_demo

        return _run(run_demo(_settings(args), once=args.once))
    finally:
        # Lines are flushed once per loop iteration (aigw.logs); the loop's
        # last iteration may not have come.
        (log_file or sys.stdout).flush()


def _run(main: Coroutine[Any, Any, int]) -> int:
    # PERF: uvloop's C transports (measured in docs/performance.md).
    return uvloop.run(main)


if __name__ == "__main__":
    sys.exit(main())
