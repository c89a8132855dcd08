"""``aigw demo``: the seed how-to, end to end, on one machine with no Azure account.

Starts the bundled Azure OpenAI mock on a free loopback port, serves the
shipped ``conf.d`` routes against it (``--azure-base-url``), then runs the
seed's validation script with the real ``openai`` SDK through the gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from typing import Final

from aigw.logs import get_logger
from aigw.server import Server, ServeSettings, start_or_explain

__all__ = ["SEED_MODELS", "run_demo", "run_seed_script"]

_log = get_logger("aigw.demo")

SEED_MODELS = ("gpt-4o", "gpt-4.1-mini")

_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def run_seed_script(endpoint: str) -> list[str]:
    """The seed's validation loop, verbatim apart from the endpoint; returns its lines."""
    from openai import AzureOpenAI

    client = AzureOpenAI(api_key="test", azure_endpoint=endpoint, api_version="2025-01-01-preview")
    lines = []
    for model in SEED_MODELS:
        response = client.chat.completions.create(
            model=model,
            messages=[
                {"role": "user", "content": "What model are you? Reply with only your model name."}
            ],
        )
        lines.append(f"Requested: {model}, Got: {response.model}")
    return lines


async def run_demo(settings: ServeSettings, *, once: bool) -> int:
    """Runs mock + gateway + the seed script; serves on until Ctrl-C unless *once*.

    Stops like ``aigw serve``: a port that cannot be bound or a config
    directory that cannot be read is one ``startup_failed`` line and exit 2;
    SIGINT (Ctrl-C) and SIGTERM stop it cleanly ("stopping", "stopped", exit 0)
    at any point, including while the mock starts or the script runs. A
    failing script (a route missing from ``conf_dir``) is one
    ``demo_script_failed`` line and exit 1.
    """
    from aigw.testing.azure_mock import MockServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed first: without them Ctrl-C is a KeyboardInterrupt traceback and
    # SIGTERM kills the process before anything is logged.
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with MockServer() as mock:
            _log.info("demo_mock_started", url=mock.url)
            # The mock's own key, even when the shell exports a real one for
            # `aigw serve`: the mock would answer every request with a 401.
            env = {**os.environ, "AZURE_OPENAI_KEY": mock.config.api_key}
            env.setdefault("AZURE_INSTANCE", "demo")  # unused: every route goes to the mock
            server = Server(dataclasses.replace(settings, azure_base_url=mock.url), env)
            if not await start_or_explain(server):
                return 2
            try:
                return await _demonstrate(server, settings, mock.url, stop, once=once)
            finally:
                _log.info("stopping", drain_timeout=settings.listener.shutdown_timeout)
                await server.stop()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def _demonstrate(
    server: Server, settings: ServeSettings, mock_url: str, stop: asyncio.Event, *, once: bool
) -> int:
    """The seed script through the gateway, then serving until *stop* unless *once*.

    Returns the exit code: 0, or 1 when the script failed.
    """
    from openai import OpenAIError

    endpoint = f"http://{settings.listener.host}:{server.port}"
    script = asyncio.ensure_future(asyncio.to_thread(run_seed_script, endpoint))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((script, stopped), return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            # The script's thread cannot be cancelled; it fails fast once the
            # gateway stops, and nobody is waiting for its lines any more.
            script.add_done_callback(_discard_result)
            return 0
        try:
            lines = script.result()
        except OpenAIError as exc:
            _log.error("demo_script_failed", error=f"{type(exc).__name__}: {exc}")
            return 1
        for line in lines:
            print(line, flush=True)
        if not once:
            print(
                f"aigw is serving on {endpoint} against the mock at {mock_url}; "
                "press Ctrl-C to stop.",
                flush=True,
            )
            await stopped
        return 0
    finally:
        stopped.cancel()


def _discard_result(task: asyncio.Future[list[str]]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
