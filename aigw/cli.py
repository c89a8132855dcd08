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
from aigw.check import run_check
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.listener import ListenerSettings
from aigw.logs import LogFile, configure_logging
from aigw.server import DEFAULT_POOL_SIZE, ServeSettings, serve
from aigw.systemd import Notifier
from aigw.tail import register as register_tail
from aigw.tail import run as run_tail
from aigw.workers import Supervisor

__all__ = ["main"]


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aigw`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        # The report is the output; the reloader's own log events would repeat it.
        configure_logging("critical", stream=sys.stderr)
        return run_check(args.conf_dir, args.azure_base_url)
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
