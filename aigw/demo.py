"""``aigw demo``: the seed how-to, end to end, on one machine with no Azure account.

Starts the bundled Azure OpenAI mock on a free loopback port, serves the
shipped ``conf.d`` routes against it (``--azure-base-url``), then runs the
seed's validation script with the real ``openai`` SDK through the gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

from aigw.logs import get_logger
from aigw.server import Server, ServeSettings

__all__ = ["SEED_MODELS", "run_demo", "run_seed_script"]

_log = get_logger("aigw.demo")

SEED_MODELS = ("gpt-4o", "gpt-4.1-mini")


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
    """Runs mock + gateway + the seed script; serves on until Ctrl-C unless *once*."""
    from aigw.testing.azure_mock import MockServer

    async with MockServer() as mock:
        _log.info("demo_mock_started", url=mock.url)
        env = dict(os.environ)
        env.setdefault("AZURE_OPENAI_KEY", mock.config.api_key)
        env.setdefault("AZURE_INSTANCE", "demo")
        server = Server(dataclasses.replace(settings, azure_base_url=mock.url), env)
        await server.start()
        endpoint = f"http://{settings.listener.host}:{server.port}"
        try:
            lines = await asyncio.to_thread(run_seed_script, endpoint)
            for line in lines:
                print(line, flush=True)
            if not once:
                print(
                    f"aigw is serving on {endpoint} against the mock at {mock.url}; "
                    "press Ctrl-C to stop.",
                    flush=True,
                )
                await asyncio.Event().wait()
        finally:
            await server.stop()
    return 0
