"""Realtime (WebSocket) relay: frames/s relayed and latency added per frame, N sessions.

One command, everything side by side against the same upstream::

    .venv/bin/python bench/scenario_realtime.py            # 100 sessions, 3 rounds
    .venv/bin/python bench/scenario_realtime.py --sessions 100 --rounds 3 --duration 5

What runs, all on 127.0.0.1:

* an echo upstream in its own process (aiohttp on uvloop): every text frame is sent
  straight back, so a round trip measures the path, not a model;
* a bare TCP forwarder in its own process (asyncio streams on uvloop, no parsing):
  what any extra process hop costs on this machine, the floor for a relay;
* ``aigw serve`` with one path route of ``route_type: realtime/v1/realtime`` on
  ``/openai/realtime`` (``--azure-base-url`` = the echo upstream);
* the load, in this process (aiohttp client on uvloop): N WebSocket sessions, each
  sending ``input_audio_buffer.append``-sized events (1.3 KiB, 20 ms of 24 kHz
  PCM16 in base64) and timing each echo.

Two phases per round, each run against the upstream directly, through the TCP
forwarder and through aigw in turn (the order rotates by round, so drift hits every
path alike):

* **paced**: each session sends one event every ``--interval-ms`` (default 50 ms: a
  client streaming microphone audio), waiting for its echo before the next; the
  sessions' ticks are spread over the interval, as independent clients' are. The
  round-trip time through aigw minus the direct one (and minus the forwarder's) is
  the latency aigw adds, for two frames (client -> upstream and back): median and
  p99 reported.
* **flood**: each session sends its next event as soon as the echo is back (a
  closed loop): the most frames per second the path carries. Every echo is two
  frames relayed by aigw (one each way).

Each proxy's CPU (cores used, from /proc; and per relayed frame) is reported; on this 2-core machine
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
import random
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


# -- a bare TCP forwarder (its own process): the cost of any extra hop -------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def serve_splice(port: int, upstream_port: int) -> None:
    """Forwards every connection on *port* to *upstream_port*, bytes as they come."""

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def main() -> None:
        server = await asyncio.start_server(forward, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


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
def processes() -> Iterator[dict[str, tuple[int, int | None]]]:
    """Starts the echo upstream, the TCP forwarder and aigw; yields each path's port and
    the pid whose CPU is measured (None: direct)."""
    upstream_port, splice_port, aigw_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="aigw-rt-bench-") as tmp:
        conf = Path(tmp) / "conf.d"
        conf.mkdir()
        (conf / "realtime.yaml").write_text(ROUTE)
        log = open(Path(tmp) / "aigw.log", "wb")  # noqa: SIM115
        echo = subprocess.Popen(
            [sys.executable, __file__, "--serve-echo", str(upstream_port)], cwd=REPO
        )
        splice = subprocess.Popen(
            [sys.executable, __file__, "--serve-splice", str(splice_port), str(upstream_port)],
            cwd=REPO,
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
            _wait_port(splice_port, splice, "the TCP forwarder")
            _wait_port(aigw_port, gateway, "aigw")
            yield {
                "direct": (upstream_port, None),
                "tcp-forwarder": (splice_port, splice.pid),
                "aigw": (aigw_port, gateway.pid),
            }
        finally:
            for proc in (gateway, splice, echo):
                proc.send_signal(signal.SIGTERM)
            for proc in (gateway, splice, echo):
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
            if interval is not None:
                # Sessions spread evenly over the interval, as independent clients are;
                # in lockstep, each tick would be a burst of N frames queued behind
                # each other (that is queueing, not the relay's latency).
                next_send += random.uniform(0, interval)
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
    """Every round of both phases against every path; the per-round figures."""
    rounds: list[dict[str, Any]] = []
    with processes() as paths:
        names = list(paths)
        for index in range(args.rounds):
            # Rotated per round, so drift in the machine's load hits every path alike.
            shift = index % len(names)
            order = names[shift:] + names[:shift]
            result: dict[str, Any] = {}
            for phase, interval in (("paced", args.interval_ms / 1000), ("flood", None)):
                for name in order:
                    port, pid = paths[name]
                    run = await load(port, args.sessions, args.duration, interval, pid)
                    figures = {
                        "echoes_per_s": run.echoes / run.wall,
                        "frames_per_s": 2 * run.echoes / run.wall,
                        "p50_ms": percentile(run.rtts, 50) * 1000,
                        "p99_ms": percentile(run.rtts, 99) * 1000,
                        "errors": run.errors,
                        "cores": run.cores,
                    }
                    result[f"{phase}/{name}"] = figures
                    print(
                        f"round {index + 1} {phase:5} {name:13}: "
                        f"{figures['echoes_per_s']:8.0f} echoes/s, rtt p50 "
                        f"{_ms(percentile(run.rtts, 50))} ms p99 "
                        f"{_ms(percentile(run.rtts, 99))} ms, errors {run.errors}"
                        + (f", {run.cores:.2f} cores" if pid is not None else ""),
                        file=sys.stderr,
                        flush=True,
                    )
            rounds.append(result)
    return {
        "sessions": args.sessions,
        "interval_ms": args.interval_ms,
        "duration_s": args.duration,
        "paths": names,
        "rounds": rounds,
    }


def summary(doc: dict[str, Any]) -> str:
    """Medians over rounds of each figure, and what aigw adds over direct and over a bare
    TCP forwarder (the cost of any extra process hop on this machine)."""
    rounds = doc["rounds"]

    def med(key: str, figure: str) -> float:
        return median(r[key][figure] for r in rounds)

    def added(path: str, base: str, figure: str) -> str:
        value = median(r[f"paced/{path}"][figure] - r[f"paced/{base}"][figure] for r in rounds)
        return f"{value:+.3f}"

    lines = [
        f"Realtime relay, {doc['sessions']} concurrent sessions, paced at one 1.3 KiB event "
        f"per {doc['interval_ms']:g} ms per session, {len(rounds)} rounds of "
        f"{doc['duration_s']:g} s (medians over rounds)",
        "",
        "| phase | path | echoes/s | frames/s relayed | rtt p50 ms | rtt p99 ms | cores "
        "| CPU µs/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in ("paced", "flood"):
        for name in doc["paths"]:
            key = f"{phase}/{name}"
            proxied = name != "direct"
            frames = f"{med(key, 'frames_per_s'):.0f}" if proxied else "-"
            cores = f"{med(key, 'cores'):.2f}" if proxied else "-"
            per_frame = (
                f"{median(r[key]['cores'] * 1e6 / r[key]['frames_per_s'] for r in rounds):.1f}"
                if proxied
                else "-"
            )
            lines.append(
                f"| {phase} | {name} | {med(key, 'echoes_per_s'):.0f} | {frames} | "
                f"{med(key, 'p50_ms'):.3f} | {med(key, 'p99_ms'):.3f} | {cores} | {per_frame} |"
            )
    lines += [
        "",
        "Added per round trip (two frames relayed), paced, same round, ms:",
        f"  aigw over direct:        p50 {added('aigw', 'direct', 'p50_ms')}, "
        f"p99 {added('aigw', 'direct', 'p99_ms')}",
        f"  forwarder over direct:   p50 {added('tcp-forwarder', 'direct', 'p50_ms')}, "
        f"p99 {added('tcp-forwarder', 'direct', 'p99_ms')}",
        f"  aigw over the forwarder: p50 {added('aigw', 'tcp-forwarder', 'p50_ms')}, "
        f"p99 {added('aigw', 'tcp-forwarder', 'p99_ms')}",
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
    parser.add_argument("--serve-splice", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return
    if args.serve_splice is not None:
        serve_splice(*args.serve_splice)
        return
    doc = uvloop.run(measure(args))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2))
    print(summary(doc))


if __name__ == "__main__":
    main()
