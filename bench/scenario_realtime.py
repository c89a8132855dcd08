"""Realtime (WebSocket) relay: frames/s relayed and latency added per frame, N sessions.

One command, everything side by side against the same upstream::

    .venv/bin/python bench/scenario_realtime.py            # 100 sessions, 3 rounds
    .venv/bin/python bench/scenario_realtime.py --sessions 100 --rounds 3 --duration 5

What runs, all on 127.0.0.1:

* an echo upstream in its own process (aiohttp on uvloop): every text frame is sent
  straight back, so a round trip measures the path, not a model;
* ``aigw serve`` with one path route of ``route_type: realtime/v1/realtime`` on
  ``/openai/realtime`` (``--azure-base-url`` = the echo upstream);
* the load, in this process (aiohttp client on uvloop): N WebSocket sessions, each
  sending ``input_audio_buffer.append``-sized events (1.3 KiB, 20 ms of 24 kHz
  PCM16 in base64) and timing each echo.

Two phases per round, each run against the upstream directly and through aigw in
turn (the order alternates by round, so drift hits both alike):

* **paced**: each session sends one event every ``--interval-ms`` (default 50 ms: a
  client streaming microphone audio), waiting for its echo before the next. The
  round-trip time through aigw minus the direct one is the latency aigw adds per
  frame, counted twice (client -> upstream and back): median and p99 reported.
* **flood**: each session sends its next event as soon as the echo is back (a
  closed loop): the most frames per second the path carries. Every echo is two
  frames relayed by aigw (one each way).

aigw's CPU (cores used, from /proc) is reported per phase; on this 2-core machine
the load generator and the upstream share the cores with it, so the flood numbers
are a floor for aigw, not its ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import WSMsgType, web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import cpu_seconds, free_port, median, percentile

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "gpt-realtime"
PATH = f"/openai/realtime?api-version=2025-04-01-preview&deployment={DEPLOYMENT}"
# 20 ms of 24 kHz mono PCM16 (960 bytes), base64 in an append event: ~1.3 KiB.
EVENT = json.dumps(
    {
        "type": "input_audio_buffer.append",
        "audio": base64.b64encode(os.urandom(960)).decode(),
    }
).encode()

ROUTE = f"""route:
  name: realtime-bench
  paths: [/openai/realtime]
  methods: [GET]
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: realtime/v1/realtime
          auth: {{header_name: api-key, header_value: bench-upstream-key}}
          model:
            provider: azure
            name: {DEPLOYMENT}
            options: {{azure_instance: bench, azure_deployment_id: {DEPLOYMENT}}}
"""


# -- the echo upstream (its own process) ---------------------------------------


async def _echo(request: web.Request) -> web.WebSocketResponse:
    ws: web.WebSocketResponse = web.WebSocketResponse(
        max_msg_size=0, compress=False, decode_text=False
    )
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
            await ws.send_frame(message.data, message.type)
    return ws


def serve_echo(port: int) -> None:
    """Runs the echo upstream on *port* until killed."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", _echo)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


# -- processes -------------------------------------------------------------------


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


@contextlib.contextmanager
def processes() -> Iterator[tuple[int, int, int]]:
    """Starts the echo upstream and aigw; yields (upstream port, aigw port, aigw pid)."""
    upstream_port, aigw_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="aigw-rt-bench-") as tmp:
        conf = Path(tmp) / "conf.d"
        conf.mkdir()
        (conf / "realtime.yaml").write_text(ROUTE)
        log = open(Path(tmp) / "aigw.log", "wb")  # noqa: SIM115
        echo = subprocess.Popen(
            [sys.executable, __file__, "--serve-echo", str(upstream_port)], cwd=REPO
        )
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aigw",
                "serve",
                "--conf-dir",
                str(conf),
                "--listen",
                f"127.0.0.1:{aigw_port}",
                "--admin-listen",
                "off",
                "--azure-base-url",
                f"http://127.0.0.1:{upstream_port}",
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_port(upstream_port, echo, "the echo upstream")
            _wait_port(aigw_port, gateway, "aigw")
            yield upstream_port, aigw_port, gateway.pid
        finally:
            for proc in (gateway, echo):
                proc.send_signal(signal.SIGTERM)
            for proc in (gateway, echo):
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()


# -- the load --------------------------------------------------------------------


@dataclass
class Run:
    """One phase against one path: round trips (seconds), echoes, errors, wall time."""

    rtts: list[float] = field(default_factory=list)
    echoes: int = 0
    errors: int = 0
    wall: float = 0.0
    cores: float = float("nan")
    stop_at: float = 0.0  # perf_counter time; set when every session is open


async def _session(
    session: aiohttp.ClientSession,
    url: str,
    run: Run,
    interval: float | None,
    start: asyncio.Event,
) -> None:
    clock = time.perf_counter
    try:
        async with session.ws_connect(
            url, headers={"api-key": "bench-client-key"}, max_msg_size=0
        ) as ws:
            await start.wait()
            rtts, stop_at = run.rtts, run.stop_at
            # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
            next_send = clock()
            while (now := clock()) < stop_at:
                if interval is not None and now < next_send:
                    await asyncio.sleep(next_send - now)
                sent = clock()
                await ws.send_frame(EVENT, WSMsgType.TEXT)
                message = await ws.receive()
                if message.type is not WSMsgType.TEXT:
                    run.errors += 1
                    return
                rtts.append(clock() - sent)
                if interval is not None:
                    next_send = sent + interval
    except (aiohttp.ClientError, OSError):
        run.errors += 1


async def load(
    port: int, sessions: int, duration: float, interval: float | None, pid: int | None
) -> Run:
    """N sessions to 127.0.0.1:*port* for *duration* s (paced at *interval*, or a flood).

    Every session is opened first; the clock starts once they all are, so
    connection set-up is not in the figures.
    """
    run = Run()
    url = f"ws://127.0.0.1:{port}{PATH}"
    start = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [
            asyncio.create_task(_session(session, url, run, interval, start))
            for _ in range(sessions)
        ]
        await asyncio.sleep(min(3.0, 0.5 + 0.02 * sessions))
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        run.stop_at = time.perf_counter() + duration
        start.set()
        await asyncio.gather(*tasks)
        run.wall = time.monotonic() - t0
        run.cores = (cpu_seconds(pid) - cpu0) / run.wall
    run.echoes = len(run.rtts)
    run.rtts.sort()
    return run


# -- the report ------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every round of both phases against both paths; the per-round figures."""
    rounds: list[dict[str, Any]] = []
    with processes() as (upstream_port, aigw_port, aigw_pid):
        paths = {"direct": (upstream_port, None), "aigw": (aigw_port, aigw_pid)}
        for index in range(args.rounds):
            order = ["direct", "aigw"] if index % 2 == 0 else ["aigw", "direct"]
            result: dict[str, Any] = {}
            for phase, interval in (("paced", args.interval_ms / 1000), ("flood", None)):
                for name in order:
                    port, pid = paths[name]
                    run = await load(port, args.sessions, args.duration, interval, pid)
                    result[f"{phase}/{name}"] = {
                        "echoes_per_s": run.echoes / run.wall,
                        "frames_per_s": 2 * run.echoes / run.wall,
                        "p50_ms": percentile(run.rtts, 50) * 1000,
                        "p99_ms": percentile(run.rtts, 99) * 1000,
                        "errors": run.errors,
                        "aigw_cores": run.cores,
                    }
                    print(
                        f"round {index + 1} {phase:5} {name:6}: {run.echoes / run.wall:8.0f} "
                        f"echoes/s, rtt p50 {_ms(percentile(run.rtts, 50))} ms "
                        f"p99 {_ms(percentile(run.rtts, 99))} ms, errors {run.errors}"
                        + (f", aigw {run.cores:.2f} cores" if pid is not None else ""),
                        file=sys.stderr,
                        flush=True,
                    )
            rounds.append(result)
    return {"sessions": args.sessions, "rounds": rounds}


def summary(doc: dict[str, Any]) -> str:
    """Medians over rounds of each figure, and aigw's additions."""
    rounds = doc["rounds"]

    def med(key: str, figure: str) -> float:
        return median(r[key][figure] for r in rounds)

    added_p50 = median(r["paced/aigw"]["p50_ms"] - r["paced/direct"]["p50_ms"] for r in rounds)
    added_p99 = median(r["paced/aigw"]["p99_ms"] - r["paced/direct"]["p99_ms"] for r in rounds)
    lines = [
        f"Realtime relay, {doc['sessions']} concurrent sessions, "
        f"{len(rounds)} rounds (medians over rounds)",
        "",
        "| phase | path | echoes/s | frames/s relayed | rtt p50 ms | rtt p99 ms | aigw cores "
        "| aigw CPU µs/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in ("paced", "flood"):
        for name in ("direct", "aigw"):
            key = f"{phase}/{name}"
            frames = f"{med(key, 'frames_per_s'):.0f}" if name == "aigw" else "-"
            cores = f"{med(key, 'aigw_cores'):.2f}" if name == "aigw" else "-"
            per_frame = (
                f"{median(r[key]['aigw_cores'] * 1e6 / r[key]['frames_per_s'] for r in rounds):.1f}"
                if name == "aigw"
                else "-"
            )
            lines.append(
                f"| {phase} | {name} | {med(key, 'echoes_per_s'):.0f} | {frames} | "
                f"{med(key, 'p50_ms'):.3f} | {med(key, 'p99_ms'):.3f} | {cores} | {per_frame} |"
            )
    lines += [
        "",
        f"Added per round trip (two frames relayed), paced: p50 +{added_p50:.3f} ms, "
        f"p99 +{added_p99:.3f} ms (aigw minus direct, same round)",
        f"Errors: {sum(r[k]['errors'] for r in rounds for k in r)}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--interval-ms", type=float, default=50.0, help="paced phase's pace")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return
    doc = uvloop.run(measure(args))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2))
    print(summary(doc))


if __name__ == "__main__":
    main()
