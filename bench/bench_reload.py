"""How fast a conf.d change goes live: write landed -> admin status -> traffic on the new config.

Usage::

    python bench/bench_reload.py [--runs N] [--burst FILES] [--burst-runs R] [--settle-ms MS]

Starts the bundled Azure mock and ``aigw serve`` (subprocesses on 127.0.0.1, own temp conf.d and
state dir), then:

* N times rewrites one route file, alternately write-temp-then-rename and write-in-place, each
  time moving the route to the other mock deployment. The clock starts when the write has
  landed (after the rename / after ``close``); two clocks stop, polled every 5 ms in one loop:
  when ``GET /status`` on the admin port shows the new generation, and when a chat request
  through the gateway is answered by the new deployment.
* R times drops FILES new route files at once (then removes them at once) and times until all
  are live (gone), counting the generations it took.

Prints median / p90 / max in ms: the figures docs/performance.md quotes for "live within 300 ms".
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-azure-key"
ENV = {"AZURE_OPENAI_KEY": API_KEY, "AZURE_INSTANCE": "benchresource"}
DEPLOYMENTS = {"gpt-4o": "gpt-4o-2024-11-20", "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14"}
POLL_S = 0.005
TIMEOUT_S = 10.0

ROUTE = """\
# {comment}
route:
  name: {name}
  paths: [/openai/deployments/{name}/chat/completions]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - route_type: llm/v1/chat
          auth:
            header_name: api-key
            header_value: ${{AZURE_OPENAI_KEY}}
          model:
            provider: azure
            name: {name}
            options:
              azure_instance: ${{AZURE_INSTANCE}}
              azure_deployment_id: {deployment}
"""

T = TypeVar("T")


def route(name: str, deployment: str, comment: str) -> str:
    return ROUTE.format(name=name, deployment=deployment, comment=comment)


def wait_for(predicate: Callable[[], T | None], what: str, timeout: float = TIMEOUT_S) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(POLL_S)


class Client:
    """One keep-alive HTTP connection (polling must not pay a TCP handshake each time)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._connection = http.client.HTTPConnection(host, int(port), timeout=10)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "api-key": "client-key"}
        try:
            self._connection.request(method, path, body=data, headers=headers)
            response = self._connection.getresponse()
            raw = response.read()
        except (http.client.HTTPException, OSError):
            self._connection.close()  # reconnects on the next request
            raise
        return response.status, json.loads(raw) if raw else None

    def close(self) -> None:
        self._connection.close()


class Processes:
    """The mock and the gateway, in a temp dir that also holds conf.d and the state dir."""

    def __init__(self, settle_ms: int | None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="aigw-bench-reload-")
        root = Path(self._tmp.name)
        self.conf = root / "conf.d"
        self.conf.mkdir()
        self.log = root / "aigw.log"
        port_file = root / "mock.port"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._outputs = [open(root / "mock.log", "wb"), open(self.log, "wb")]  # noqa: SIM115
        mock = ["-m", "aigw.testing.azure_mock", "--host", "127.0.0.1", "--port", "0"]
        mock += ["--port-file", str(port_file), "--api-key", API_KEY]
        self._start(mock, self._outputs[0])
        mock_port = wait_for(
            lambda: (port_file.exists() and port_file.read_text().strip()) or None, "the mock"
        )
        self.mock_url = f"http://127.0.0.1:{mock_port}"
        (self.conf / "bench.yaml").write_text(route("bench", "gpt-4o", "start"))
        serve = ["-m", "aigw", "serve", "--conf-dir", str(self.conf)]
        serve += ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        serve += ["--azure-base-url", self.mock_url, "--state-dir", str(root / "state")]
        if settle_ms is not None:
            serve += ["--settle-ms", str(settle_ms)]
        self._start(serve, self._outputs[1], env=ENV)
        listening = wait_for(self._listening, "aigw serve")
        self.proxy_url: str = listening["address"]
        self.proxy = Client(self.proxy_url)
        self.admin = Client(listening["admin"])

    def _start(
        self, args: list[str], out: Any, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        self._procs.append(proc)
        return proc

    def events(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def _listening(self) -> dict[str, Any] | None:
        if self._procs[-1].poll() is not None:
            raise SystemExit(f"aigw serve exited:\n{self.log.read_text()}")
        return next((e for e in self.events() if e.get("event") == "listening"), None)

    def status(self) -> dict[str, Any]:
        code, body = self.admin.call("GET", "/status")
        assert code == 200, code
        result: dict[str, Any] = body
        return result

    def answered_by(self, name: str, client: Client | None = None) -> str | None:
        """The upstream model that answers a chat request on route *name* (None: no route)."""
        path = f"/openai/deployments/{name}/chat/completions?api-version=2024-10-21"
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        code, answer = (client or self.proxy).call("POST", path, body)
        return str(answer["model"]) if code == 200 else None

    def close(self) -> None:
        self.proxy.close()
        self.admin.close()
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for out in self._outputs:
            out.close()
        self._tmp.cleanup()


def write(path: Path, text: str, *, rename: bool) -> None:
    """Lands *text* at *path*; returns once the write is complete and visible."""
    if rename:
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        os.rename(temporary, path)
    else:
        with open(path, "w") as handle:
            handle.write(text)


def rewrite_runs(procs: Processes, runs: int) -> tuple[list[float], list[float], int]:
    """Per run: ms until status shows the change, ms until traffic reaches the new deployment."""
    to_status: list[float] = []
    to_traffic: list[float] = []
    path = procs.conf / "bench.yaml"
    first = procs.status()["generation"]
    generation = first
    for run in range(runs):
        deployment = ("gpt-4.1-mini", "gpt-4o")[run % 2]
        expected = DEPLOYMENTS[deployment]
        assert procs.answered_by("bench") != expected
        write(path, route("bench", deployment, f"run {run}"), rename=run % 2 == 0)
        landed = time.perf_counter()
        status_at: float | None = None
        traffic_at: float | None = None
        deadline = time.monotonic() + TIMEOUT_S
        while status_at is None or traffic_at is None:
            if status_at is None and procs.status()["generation"] > generation:
                status_at = time.perf_counter()
            if traffic_at is None and procs.answered_by("bench") == expected:
                traffic_at = time.perf_counter()
            if time.monotonic() > deadline:
                raise SystemExit(f"run {run}: change not live after {TIMEOUT_S} s")
            time.sleep(POLL_S)
        generation = procs.status()["generation"]
        to_status.append((status_at - landed) * 1000)
        to_traffic.append((traffic_at - landed) * 1000)
    return to_status, to_traffic, generation - first


@dataclass
class Burst:
    what: str
    after_last_ms: float  # all live (gone) this long after the last file was written
    after_first_ms: float  # ... and after the first
    generations: int
    window: tuple[float, float]  # perf_counter span of the burst, first write to all live


def burst_runs(procs: Processes, files: int, runs: int) -> list[Burst]:
    """Adds FILES route files at once, then removes them at once, *runs* times."""
    results: list[Burst] = []
    names = [f"burst-{i:04}" for i in range(files)]
    base = procs.status()["routes"]
    for _ in range(runs):
        for what in ("add", "remove"):
            generation = procs.status()["generation"]
            started = time.perf_counter()
            for name in names:
                if what == "add":
                    (procs.conf / f"{name}.yaml").write_text(route(name, "gpt-4o", "burst"))
                else:
                    (procs.conf / f"{name}.yaml").unlink()
            landed = time.perf_counter()
            want = base + files if what == "add" else base

            def live(want: int = want) -> dict[str, Any] | None:
                status = procs.status()
                return status if status["routes"] == want and not status["degraded"] else None

            status = wait_for(live, f"burst {what}")
            done = time.perf_counter()
            if what == "add":
                assert procs.answered_by(names[-1]) == DEPLOYMENTS["gpt-4o"]
            results.append(
                Burst(
                    what,
                    (done - landed) * 1000,
                    (done - started) * 1000,
                    status["generation"] - generation,
                    (started, done),
                )
            )
            time.sleep(0.3)  # quiet time between bursts (probe latencies outside any burst)
    return results


class Probe(threading.Thread):
    """Sends requests to the ``bench`` route back to back, recording (start, latency ms)."""

    def __init__(self, procs: Processes) -> None:
        super().__init__(name="probe", daemon=True)
        self._procs = procs
        self._client = Client(procs.proxy_url)
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                ok = self._procs.answered_by("bench", self._client) is not None
            except (http.client.HTTPException, OSError):
                ok = False
            self.samples.append((started, (time.perf_counter() - started) * 1000))
            self.failures += not ok
            time.sleep(POLL_S)
        self._client.close()


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = statistics.quantiles(ordered, n=10, method="inclusive")[8] if len(ordered) > 1 else 0.0
    return (
        f"median {statistics.median(ordered):6.1f}   p90 {p90:6.1f}   max {ordered[-1]:6.1f}"
        f"   min {ordered[0]:6.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="single-file rewrites (default 50)")
    parser.add_argument("--burst", type=int, default=100, help="files per burst (default 100)")
    parser.add_argument("--burst-runs", type=int, default=3, help="bursts (default 3)")
    parser.add_argument("--settle-ms", type=int, default=None, help="passed to aigw serve")
    args = parser.parse_args()

    procs = Processes(args.settle_ms)
    try:
        to_status, to_traffic, reloads = rewrite_runs(procs, args.runs)
        probe = Probe(procs)
        probe.start()
        try:
            bursts = burst_runs(procs, args.burst, args.burst_runs) if args.burst_runs else []
        finally:
            probe.stop.set()
            probe.join()
        rejected = [e for e in procs.events() if e.get("event") == "config_rejected"]
        build_ms = [e["build_ms"] for e in procs.events() if e.get("event") == "config_reload"]
    finally:
        procs.close()

    settle = "default" if args.settle_ms is None else f"{args.settle_ms} ms"
    print(
        f"aigw reload latency  ({os.cpu_count()} cpu, Python {platform.python_version()}, "
        f"settle {settle}; clocks start when the write has landed, polled every 5 ms)"
    )
    print(
        f"single-file rewrites: {args.runs} (temp+rename and in-place alternately), "
        f"{reloads} reload(s)"
    )
    print(f"  write -> status shows new generation (ms):  {summary(to_status)}")
    print(f"  write -> request served by new config (ms): {summary(to_traffic)}")
    print(f"  build_ms per reload (config_reload events): {summary(build_ms)}")
    for burst in bursts:
        state = "live" if burst.what == "add" else "gone"
        print(
            f"burst {burst.what} {args.burst} files: all {state}"
            f" {burst.after_last_ms:6.1f} ms after the last write"
            f" ({burst.after_first_ms:6.1f} ms after the first), {burst.generations} generation(s)"
        )
    if bursts:

        def in_burst(at: float, ms: float) -> bool:
            return any(at < end and at + ms / 1000 > start for start, end in windows)

        windows = [burst.window for burst in bursts]
        during = [ms for at, ms in probe.samples if in_burst(at, ms)]
        outside = [ms for at, ms in probe.samples if not in_burst(at, ms)]
        print(f"  requests on an unchanged route during the bursts (ms): {summary(during)}")
        print(f"  ... and between the bursts (ms):                       {summary(outside)}")
        print(f"  failed: {probe.failures}")
    if rejected:
        print(f"WARNING: {len(rejected)} config_rejected event(s): {rejected[:3]}")
    over = sum(1 for value in to_traffic if value > 300)
    print(f"rewrites over 300 ms (write -> traffic): {over} of {len(to_traffic)}")


if __name__ == "__main__":
    main()
