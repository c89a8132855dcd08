"""Command line: ``aigw serve``, ``aigw check``, ``aigw demo``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aigw import __version__
from aigw.config.errors import ConfigError
from aigw.listener import ListenerSettings
from aigw.logs import configure_logging
from aigw.server import ServeSettings, load_table, serve
from aigw.table import RouteTable

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
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close connections that do not deliver a request head this fast",
    )


def _settings(args: argparse.Namespace) -> ServeSettings:
    host, port = args.listen
    return ServeSettings(
        conf_dir=args.conf_dir,
        listener=ListenerSettings(host=host, port=port, header_timeout=args.header_timeout),
        azure_base_url=args.azure_base_url,
    )


def _check(args: argparse.Namespace) -> int:
    try:
        table = load_table(
            args.conf_dir, os.environ, generation=1, azure_base_url=args.azure_base_url
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render_table(table, args.conf_dir))
    for error in table.rejected:
        for issue in error.issues:
            print(f"error: {issue}", file=sys.stderr)
    return 1 if table.rejected else 0


def render_table(table: RouteTable, conf_dir: Path) -> str:
    """The route table as ``aigw check`` prints it."""
    lines = [
        f"{conf_dir}: {len(table.routes)} route(s) accepted, {len(table.rejected)} file(s) rejected"
    ]
    for route in table.routes:
        methods = ",".join(route.file.route.methods or ("*",))
        target = route.target
        upstream = target.url("{client path}") if target.fixed_path is None else target.url("")
        lines.append(f"  {route.name}  ({route.info.source})")
        for path in route.file.route.paths:
            lines.append(f"    {methods} {path}")
        lines.append(f"    -> {upstream}  api-version: client's, else {target.default_api_version}")
        lines.append(f"    chain: {' > '.join(route.stages)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aigw`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    configure_logging(args.log_level)
    if args.command == "serve":
        return asyncio.run(serve(_settings(args)))
    from aigw.demo import run_demo

    return asyncio.run(run_demo(_settings(args), once=args.once))


if __name__ == "__main__":
    sys.exit(main())
