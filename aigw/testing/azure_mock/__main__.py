"""CLI: ``python -m aigw.testing.azure_mock --port 9100``.

Prints ``azure-mock listening on http://HOST:PORT`` once the socket is bound, and writes
the port to ``--port-file`` (atomically) for tests that start it with ``--port 0``.
SIGUSR1 makes a mock that refuses connections (``POST /_mock/connections``) listen again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import DEFAULT_API_KEY, DEFAULT_DEPLOYMENTS, MockConfig
from .server import MockServer

__all__ = ["main", "parse_args"]


def _deployment(value: str) -> tuple[str, str]:
    name, sep, model = value.partition("=")
    if not sep or not name or not model:
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL_SNAPSHOT, got {value!r}")
    return name, model


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return number


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    defaults = ", ".join(f"{k}={v}" for k, v in DEFAULT_DEPLOYMENTS.items())
    parser = argparse.ArgumentParser(
        prog="python -m aigw.testing.azure_mock",
        description="Faithful Azure OpenAI mock upstream, with a /_mock/ control API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port to this file")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--bearer-token", help="also accept Authorization: Bearer TOKEN")
    parser.add_argument(
        "--entra-secret",
        metavar="SECRET",
        help="also accept Authorization: Bearer tokens that aigw.testing.entra issued with "
        "SECRET and that have not expired (others: Azure's Entra 401)",
    )
    parser.add_argument("--region", default="Sweden Central", help="x-ms-region of every answer")
    parser.add_argument(
        "--deployment",
        action="append",
        type=_deployment,
        metavar="NAME=MODEL_SNAPSHOT",
        help=f"repeatable; replaces the defaults ({defaults})",
    )
    parser.add_argument(
        "--api-version",
        action="append",
        metavar="VERSION",
        help="repeatable allow-list (default: any YYYY-MM-DD[-preview])",
    )
    parser.add_argument("--latency-ms", type=_non_negative, default=0.0)
    parser.add_argument("--token-delay-ms", type=_non_negative, default=0.0)
    parser.add_argument("--tokens", type=int, default=8, help="completion tokens per reply")
    parser.add_argument("--rpm", type=int, default=4500, help="x-ratelimit-limit-requests")
    parser.add_argument("--tpm", type=int, default=450_000, help="x-ratelimit-limit-tokens")
    parser.add_argument(
        "--record-limit", type=int, default=10_000, help="requests kept for /_mock/requests"
    )
    parser.add_argument(
        "--any-operation",
        action="store_true",
        help="serve every operation on every deployment (no OperationNotSupported)",
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop if installed")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> MockConfig:
    return MockConfig(
        api_key=args.api_key,
        bearer_token=args.bearer_token,
        entra_secret=args.entra_secret,
        region=args.region,
        deployments=dict(args.deployment) if args.deployment else DEFAULT_DEPLOYMENTS,
        latency_ms=args.latency_ms,
        token_delay_ms=args.token_delay_ms,
        tokens=args.tokens,
        rate_limit_requests=args.rpm,
        rate_limit_tokens=args.tpm,
        api_versions=frozenset(args.api_version) if args.api_version else None,
        enforce_operations=not args.any_operation,
        record_limit=args.record_limit,
    )


def _write_port_file(path: Path, port: int) -> None:
    # Rename so a test polling the file never reads it half-written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


async def _serve(args: argparse.Namespace, config: MockConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with MockServer(config, host=args.host, port=args.port) as server:
        reopening: set[asyncio.Task[None]] = set()

        def accept() -> None:
            task = asyncio.ensure_future(server.accept_connections())
            reopening.add(task)
            task.add_done_callback(reopening.discard)

        loop.add_signal_handler(signal.SIGUSR1, accept)
        if args.port_file is not None:
            _write_port_file(args.port_file, server.port)
        print(f"azure-mock listening on {server.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    try:
        config = _config(args)
    except ValueError as exc:
        print(f"azure-mock: {exc}", file=sys.stderr)
        return 2
    if args.uvloop:
        # Imported only on request: uvloop is optional and not a project dependency.
        import uvloop

        uvloop.run(_serve(args, config))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
