"""Real processes for integration tests: the Azure mock and aigw, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "GatewayProcess",
    "MockProcess",
    "model_route_file",
    "run_check",
    "serve_routes",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Polls *predicate* until it returns something truthy; fails after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def run_check(conf_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``aigw check --conf-dir CONF_DIR`` in a subprocess with *env*; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "aigw", "check", "--conf-dir", str(conf_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=30,
    )


class MockProcess:
    """``python -m aigw.testing.azure_mock`` in a subprocess, controlled over HTTP."""

    api_key = "mock-azure-key"

    def __init__(self, *extra: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="aigw-mock-")
        port_file = Path(self._dir.name) / "port"
        self._out = open(Path(self._dir.name) / "out.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aigw.testing.azure_mock",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--api-key",
                self.api_key,
                *extra,
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        port_text = wait_until(lambda: port_file.exists() and port_file.read_text().strip())
        self.port = int(port_text)
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def requests(self) -> list[dict[str, Any]]:
        """Every request the mock recorded since the last reset."""
        result: list[dict[str, Any]] = self._call("GET", "/_mock/requests")
        return result

    def fault(self, fault: str, **params: Any) -> None:
        """Schedules a fault for the next matching request(s)."""
        self._call("POST", "/_mock/faults", {"fault": fault, **params})

    def reset(self) -> None:
        """Forgets recorded requests and pending faults."""
        self._call("DELETE", "/_mock/requests")
        self._call("DELETE", "/_mock/faults")

    def fail_next(self, count: int | None, status: int, **params: Any) -> None:
        """The next *count* requests (None: all, until cleared) answer *status* with
        Azure's body (a 429 carries ``retry-after`` 1 s and ``retry-after-ms`` unless
        *params* say otherwise)."""
        self.fault("status", status=status, count=count, **params)

    def slow_first_byte(self, ms: float, count: int = 1) -> None:
        """The next *count* requests wait *ms* before the status line is sent."""
        self.fault("delay", latency_ms=ms, count=count)

    def clear_faults(self) -> None:
        """Drops pending faults; recorded requests stay."""
        self._call("DELETE", "/_mock/faults")

    def refuse_connections(self, for_ms: float | None = None) -> None:
        """The region dies: connecting is refused and open connections are aborted,
        until :meth:`accept_connections` (or for *for_ms*)."""
        self._call("POST", "/_mock/connections", {"refuse": True, "for_ms": for_ms})

    def accept_connections(self) -> None:
        """The region is back: listening again on the same port."""
        self.proc.send_signal(signal.SIGUSR1)
        wait_until(self._healthy, timeout=10)

    def sessions(self) -> list[dict[str, Any]]:
        """Records of the realtime sessions (each with its ``session``: frames each way,
        client and server event types, ``close_code``, ``closed_by``)."""
        result: list[dict[str, Any]] = self._call("GET", "/_mock/sessions")
        return result

    def drop_sessions(self, code: int | None = None, *, rst: bool = False) -> int:
        """Ends every open realtime session: with a close frame of *code*, or (None) by
        vanishing without one, as a crashed upstream; returns how many there were."""
        answer = self._call("POST", "/_mock/sessions/drop", {"code": code, "rst": rst})
        return int(answer["sessions"])

    def settings(self, **values: float) -> dict[str, Any]:
        """Sets run-time knobs (``speech_bytes``, ``speech_chunk_bytes``,
        ``speech_chunk_delay_ms``, ``realtime_audio_deltas``); returns them all."""
        result: dict[str, Any] = self._call("POST", "/_mock/settings", values)
        return result

    def _healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/_mock/health"))
        except OSError:
            return False

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._out.close()
        self._dir.cleanup()


class GatewayProcess:
    """``aigw serve`` in a subprocess; its JSON log lines are read back by tests."""

    def __init__(
        self,
        conf_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        listen: str = "127.0.0.1:0",
        command: Sequence[str] = ("serve",),
        ready_from: Path | None = None,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="aigw-gw-")
        self.output_path = Path(self._dir.name) / "aigw.log"
        # Where the JSON log lines go: stdout, unless the gateway has --log-file.
        self.log_path = ready_from or self.output_path
        self._out = open(self.output_path, "wb")  # noqa: SIM115
        full_env = {**os.environ, **(env or {})}
        if command == ("serve",) and "--admin-listen" not in extra:
            extra = ("--admin-listen", "127.0.0.1:0", *extra)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aigw",
                *command,
                "--conf-dir",
                str(conf_dir),
                "--listen",
                listen,
                *extra,
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=full_env,
        )
        listening = wait_until(self._listening, timeout=20)
        self.url = listening["address"]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.admin_url: str | None = listening.get("admin")

    def _listening(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"aigw exited early:\n{self.output_path.read_text()}")
        for event in self.events():
            if event.get("event") == "listening":
                return event
        return None

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far."""
        events: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return events
        text = self.log_path.read_text()
        # The process may be writing a line right now (a long one goes out in
        # pieces): only lines that have their newline are complete.
        for line in text[: text.rfind("\n") + 1].splitlines():
            line = line.strip()
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def status(self) -> dict[str, Any]:
        """The admin endpoint's view of the config state."""
        assert self.admin_url is not None, "started with --admin-listen off"
        with urllib.request.urlopen(self.admin_url + "/status", timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def raw_log(self) -> str:
        """Everything the process wrote to stdout and stderr."""
        return self.output_path.read_text()

    def access_log(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The access-log line of one request, waiting for it to be written."""

        def find() -> dict[str, Any] | None:
            for event in self.events():
                if event.get("event") == "request" and event.get("request_id") == request_id:
                    return event
            return None

        result: dict[str, Any] = wait_until(find, timeout=timeout)
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        self._dir.cleanup()


@contextlib.contextmanager
def mock_regions(args: Mapping[str, Sequence[str]]) -> Iterator[dict[str, MockProcess]]:
    """One mock process per region ("region" -> its CLI arguments), all closed on exit."""
    mocks: dict[str, MockProcess] = {}
    try:
        for region, region_args in args.items():
            mocks[region] = MockProcess(*region_args)
        yield mocks
    finally:
        for mock in mocks.values():
            mock.close()


def pool_route_file(
    name: str,
    balancer: dict[str, Any],
    targets: Sequence[tuple[str, int, str, str]],
    target_fields: Sequence[str] = (),
) -> str:
    """A route file whose path is ``/openai/deployments/NAME/chat/completions`` (POST) and
    whose targets are (region, weight, api-key, mock base URL): the region names the
    target (``azure_instance``), the mock serves deployment NAME; *target_fields* are
    extra YAML lines for every target (``read_timeout: 500``)."""
    lines = [
        "route:",
        f"  name: {name}",
        f"  paths: [/openai/deployments/{name}/chat/completions]",
        "  methods: [POST]",
        "plugins:",
        "  - name: ai-proxy-advanced",
        "    config:",
        f"      balancer: {json.dumps(balancer)}",
        "      targets:",
    ]
    for region, weight, key, base_url in targets:
        lines += [
            f"        - weight: {weight}",
            "          route_type: llm/v1/chat",
            *(f"          {field}" for field in target_fields),
            f"          auth: {{header_name: api-key, header_value: {key}}}",
            "          model:",
            "            provider: azure",
            f"            name: {name}",
            "            options:",
            f"              azure_instance: {region}",
            f"              azure_deployment_id: {name}",
            f"              upstream_url: {base_url}/openai/deployments/{name}/chat/completions",
        ]
    return "\n".join(lines) + "\n"


def model_route_file(
    name: str,
    models: Sequence[str],
    deployments: Sequence[str],
    *,
    key: str = '"${AZURE_OPENAI_KEY}"',
    instance: str = "${AZURE_INSTANCE}",
    route_type: str | None = None,
    config: Sequence[str] = (),
) -> str:
    """A model route file: *models* (the first is the targets' model name), one target per
    deployment of *deployments*, each with the api-key *key* and the ``azure_instance``
    *instance* (``{index}`` in it is the target's index); *route_type* None leaves it out
    (``auto``); *config* are extra YAML lines of the plugin's config
    (``max_request_body_size: 1024``)."""
    lines = [
        "route:",
        f"  name: {name}",
        f"  models: [{', '.join(models)}]",
        "plugins:",
        "  - name: ai-proxy-advanced",
        "    config:",
        *(f"      {line}" for line in config),
        "      targets:",
    ]
    for index, deployment in enumerate(deployments):
        lines += [
            f"        - auth: {{header_name: api-key, header_value: {key}}}",
            *([f"          route_type: {route_type}"] if route_type else []),
            "          model:",
            "            provider: azure",
            f"            name: {models[0]}",
            "            options:",
            f"              azure_instance: {instance.replace('{index}', str(index))}",
            f"              azure_deployment_id: {deployment}",
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def serve_routes(
    conf: Path, files: Mapping[str, str], *extra: str, env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """``aigw serve`` of the route files *files* (file name -> text), written into *conf*,
    with the CLI arguments *extra*; closed on the way out."""
    for name, text in files.items():
        (conf / name).write_text(text)
    process = GatewayProcess(conf, *extra, env=env)
    try:
        yield process
    finally:
        process.close()
