"""Service lifecycle: sd_notify, graceful SIGTERM drain, --workers, log-file reopen."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import GATEWAY_ENV
from tests.integration.harness import REPO, GatewayProcess, MockProcess, wait_until
from tests.integration.rawnet import parse_response

CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
BODY = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports_in_a_row(count: int) -> int:
    """The first of *count* consecutive free ports (worker i's admin port is the base + i).

    A free port's neighbour is often taken by the outgoing connection of some
    other test process: a worker that cannot bind its admin port never
    becomes ready.
    """
    for _ in range(100):
        base = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError(f"no {count} consecutive free ports")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    shutil.copy(REPO / "conf.d" / "gpt-4o.yaml", conf / "gpt-4o.yaml")
    return conf


class NotifySocket:
    """A stand-in for systemd's notify socket: collects every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def seen(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        return [m for m in self.messages if key in m and (value is None or m[key] == value)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def stream_in_thread(url: str, result: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        request = urllib.request.Request(
            url + CHAT, data=BODY, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                result["status"] = response.status
                body = b""
                while chunk := response.read(64):
                    body += chunk
                    result.setdefault("first_chunk_at", time.monotonic())
                result["body"] = body
        except Exception as exc:  # any failure is reported to the test thread
            result["error"] = repr(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_sd_notify_ready_reload_stopping_and_watchdog(
    conf: Path, mock: MockProcess, notify: NotifySocket
) -> None:
    env = {**GATEWAY_ENV, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
    gateway = GatewayProcess(conf, "--azure-base-url", mock.url, env=env)
    try:
        ready = wait_until(lambda: notify.seen("READY", "1"))
        assert ready[0]["STATUS"] == "1 routes, generation 1"
        wait_until(lambda: len(notify.seen("WATCHDOG", "1")) >= 3, timeout=5)
        gateway.proc.send_signal(signal.SIGHUP)
        reloading = wait_until(lambda: notify.seen("RELOADING", "1"))
        assert int(reloading[0]["MONOTONIC_USEC"]) > 0
        wait_until(lambda: len(notify.seen("READY", "1")) >= 2)
        assert notify.seen("READY", "1")[-1]["STATUS"] == "1 routes, generation 2"
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(15) == 0
        assert notify.seen("STOPPING", "1")
    finally:
        gateway.close()


def test_sigterm_lets_an_in_flight_stream_finish(conf: Path, mock: MockProcess) -> None:
    gateway = GatewayProcess(conf, "--azure-base-url", mock.url, env=GATEWAY_ENV)
    try:
        mock.fault("delay", token_delay_ms=250)  # ~2 s of tokens
        result: dict[str, Any] = {}
        thread = stream_in_thread(gateway.url, result)
        wait_until(lambda: "first_chunk_at" in result, timeout=10)
        gateway.proc.send_signal(signal.SIGTERM)

        # New connections are refused while the stream drains.
        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", gateway.port), timeout=0.5).close()
            except OSError:
                return True
            return False

        wait_until(refused, timeout=5)
        assert gateway.proc.poll() is None, "exited before the stream finished"
        thread.join(20)
        assert "error" not in result, result.get("error")
        assert result["body"].rstrip().endswith(b"data: [DONE]")
        assert gateway.proc.wait(15) == 0
        events = [e["event"] for e in gateway.events()]
        assert events.index("stopping") < events.index("stopped")
    finally:
        gateway.close()


def test_drain_timeout_bounds_shutdown(conf: Path, mock: MockProcess) -> None:
    """A stream longer than the drain budget is cut, visibly to its client and in the log."""
    gateway = GatewayProcess(
        conf, "--azure-base-url", mock.url, "--drain-timeout", "1", env=GATEWAY_ENV
    )
    try:
        mock.fault("delay", token_delay_ms=2000)  # ~16 s: longer than the drain budget
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
            sock.sendall(
                f"POST {CHAT} HTTP/1.1\r\nHost: aigw\r\nContent-Type: application/json\r\n"
                f"x-request-id: drained\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
                + BODY
            )
            received = b""
            while b"data: " not in received:  # the head and the first events
                chunk = sock.recv(65536)
                assert chunk, f"closed before the stream started: {received!r}"
                received += chunk
            started = time.monotonic()
            gateway.proc.send_signal(signal.SIGTERM)
            while chunk := sock.recv(65536):
                received += chunk
        assert gateway.proc.wait(15) == 0
        # aiohttp may apply the 1 s budget twice (handler, then cancelled handler).
        assert time.monotonic() - started < 6
        # The client can tell the stream was cut: no [DONE], and no last chunk, so a strict
        # parser (the SDK's httpx) reports an incomplete body instead of a clean end.
        response = parse_response(received)
        assert response.status == 200
        assert response.body.startswith(b"data: ")
        assert b"[DONE]" not in response.body
        assert not response.complete
        line = gateway.access_log("drained")
        assert line["stream"] is True
        # Cut by the gateway's shutdown, not by the client: the log says so.
        assert (line["outcome"], line["status"]) == ("shutdown", 499), line
        assert line["bytes_out"] > 0
        events = [e["event"] for e in gateway.events()]
        assert events.index("stopping") < events.index("request") < events.index("stopped")
    finally:
        gateway.close()


def start_stream(port: int, request_id: str) -> socket.socket:
    """A stream request on a new connection, returned once its first event has arrived."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(
        f"POST {CHAT} HTTP/1.1\r\nHost: aigw\r\nContent-Type: application/json\r\n"
        f"x-request-id: {request_id}\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    )
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the stream started: {received!r}"
        received += chunk
    return sock


def test_client_leaving_during_the_drain_is_still_a_client_disconnect(
    conf: Path, mock: MockProcess
) -> None:
    """Only a cut made by the shutdown is logged ``shutdown``: a client may still leave."""
    gateway = GatewayProcess(
        conf, "--azure-base-url", mock.url, "--drain-timeout", "20", env=GATEWAY_ENV
    )
    try:
        mock.fault("delay", token_delay_ms=2000)  # ~16 s: the drain waits for it
        with start_stream(gateway.port, "left"):
            gateway.proc.send_signal(signal.SIGTERM)
            wait_until(
                lambda: any(e.get("event") == "stopping" for e in gateway.events()), timeout=5
            )
        # The client went away mid-drain: its request ends, and so does the drain.
        assert gateway.proc.wait(15) == 0
        line = gateway.access_log("left")
        assert (line["outcome"], line["status"]) == ("client_disconnect", 499), line
    finally:
        gateway.close()


def test_log_file_is_reopened_on_sigusr1(conf: Path, mock: MockProcess, tmp_path: Path) -> None:
    log = tmp_path / "aigw.json"
    gateway = GatewayProcess(
        conf,
        "--azure-base-url",
        mock.url,
        "--log-file",
        str(log),
        env=GATEWAY_ENV,
        ready_from=log,
    )
    try:
        rotated = tmp_path / "aigw.json.1"
        log.rename(rotated)  # what logrotate does
        gateway.proc.send_signal(signal.SIGUSR1)
        wait_until(log.exists, timeout=5)

        def post() -> None:
            request = urllib.request.Request(gateway.url + "/nope", data=b"{}", method="POST")
            try:
                urllib.request.urlopen(request, timeout=5).close()
            except urllib.error.HTTPError as exc:
                exc.close()

        post()
        line = wait_until(lambda: log.read_text().strip(), timeout=5)
        assert json.loads(line.splitlines()[-1])["path"] == "/nope"
        assert '"event":"listening"' in rotated.read_text()
    finally:
        gateway.close()


def test_workers_share_the_port_and_reload_on_their_own(
    conf: Path, mock: MockProcess, notify: NotifySocket
) -> None:
    port, admin = free_port(), free_ports_in_a_row(2)
    env = {**GATEWAY_ENV, "NOTIFY_SOCKET": str(notify.path)}
    gateway = GatewayProcess(
        conf,
        "--azure-base-url",
        mock.url,
        "--workers",
        "2",
        "--admin-listen",
        f"127.0.0.1:{admin}",
        env=env,
        listen=f"127.0.0.1:{port}",
    )
    try:
        try:
            ready = wait_until(lambda: notify.seen("READY", "1"), timeout=20)
        except AssertionError:
            raise AssertionError(f"not ready; the gateway said:\n{gateway.raw_log()}") from None
        assert ready[0]["STATUS"].startswith("2 workers ready")

        def status(index: int) -> dict[str, Any]:
            url = f"http://127.0.0.1:{admin + index}/status"
            with urllib.request.urlopen(url, timeout=5) as response:
                result: dict[str, Any] = json.loads(response.read())
            return result

        assert {status(0)["worker"], status(1)["worker"]} == {0, 1}
        assert status(0)["pid"] != status(1)["pid"]
        request = urllib.request.Request(
            gateway.url + CHAT,
            data=BODY.replace(b"true", b"false"),
            method="POST",
            headers={"Content-Type": "application/json", "Connection": "close"},
        )
        for _ in range(40):
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        workers = {e.get("worker") for e in gateway.events() if e.get("event") == "request"}
        assert workers == {0, 1}, "the kernel spread connections over both workers"
        gateway.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: status(0)["generation"] == 2 and status(1)["generation"] == 2)
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(20) == 0
        assert notify.seen("STOPPING", "1")
    finally:
        gateway.close()


# --------------------------------------------------------------------------
# aigw demo: stops as cleanly as aigw serve


class DemoProcess:
    """``aigw demo`` in a subprocess, as ``make demo`` runs it, with its output in a file."""

    def __init__(self, tmp_path: Path, port: int, *extra: str, env: dict[str, str]) -> None:
        self.output = tmp_path / "demo.out"
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aigw", "demo", "--listen", f"127.0.0.1:{port}",
                 "--admin-listen", "off", *extra],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **env},
            )  # fmt: skip

    def text(self) -> str:
        return self.output.read_text()

    def events(self) -> list[str]:
        return [json.loads(line)["event"] for line in self.text().splitlines() if line[:1] == "{"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_demo_on_a_busy_port_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        demo = DemoProcess(tmp_path, busy.getsockname()[1], env={})
        try:
            assert demo.proc.wait(30) == 2
        finally:
            demo.close()
    text = demo.text()
    assert "Traceback" not in text, text
    failed = [json.loads(line) for line in text.splitlines() if "startup_failed" in line]
    assert len(failed) == 1, text
    assert failed[0]["level"] == "error"
    assert "address already in use" in failed[0]["reason"]
    assert "--listen" in failed[0]["reason"]  # what to do about it


def test_serve_on_a_busy_port_says_what_to_do_and_exits_2(tmp_path: Path) -> None:
    # The same start-up path as the demo's (aigw.server.start_or_explain).
    conf = tmp_path / "conf.d"
    conf.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = subprocess.run(
            [sys.executable, "-m", "aigw", "serve", "--conf-dir", str(conf),
             "--listen", f"127.0.0.1:{busy.getsockname()[1]}", "--admin-listen", "off"],
            capture_output=True, text=True, cwd=REPO, timeout=30,
        )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    failed = [json.loads(line) for line in result.stdout.splitlines() if "startup_failed" in line]
    assert len(failed) == 1, result.stdout
    assert "address already in use" in failed[0]["reason"]
    assert "--listen" in failed[0]["reason"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moment", ["serving", "listening"])
def test_demo_stops_cleanly_on_ctrl_c_and_sigterm(
    tmp_path: Path, sig: signal.Signals, moment: str
) -> None:
    """Ctrl-C or SIGTERM while serving on, or while the SDK script still runs."""
    demo = DemoProcess(tmp_path, free_port(), env={})
    try:
        if moment == "serving":
            wait_until(lambda: "press Ctrl-C to stop" in demo.text(), timeout=30)
        else:
            wait_until(lambda: "listening" in demo.events(), timeout=30)
        demo.proc.send_signal(sig)
        assert demo.proc.wait(20) == 0
    finally:
        demo.close()
    text = demo.text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert demo.events()[-2:] == ["stopping", "stopped"], text


def test_demo_uses_the_mocks_key_even_when_a_real_one_is_exported(tmp_path: Path) -> None:
    """A shell set up for ``aigw serve`` against Azure: the demo still talks to its mock."""
    env = {"AZURE_OPENAI_KEY": "a-real-azure-key", "AZURE_INSTANCE": "my-resource"}
    demo = DemoProcess(tmp_path, free_port(), "--once", env=env)
    try:
        assert demo.proc.wait(30) == 0, demo.text()
    finally:
        demo.close()
    assert "Requested: gpt-4.1-mini, Got: gpt-4.1-mini-2025-04-14" in demo.text()


def test_demo_script_failure_is_one_error_line_and_exit_1(tmp_path: Path, conf: Path) -> None:
    """A conf dir without the gpt-4.1-mini route: the SDK script's second call gets a 404."""
    demo = DemoProcess(tmp_path, free_port(), "--once", "--conf-dir", str(conf), env={})
    try:
        assert demo.proc.wait(30) == 1
    finally:
        demo.close()
    text = demo.text()
    assert "Traceback" not in text, text
    failed = [json.loads(line) for line in text.splitlines() if "demo_script_failed" in line]
    assert len(failed) == 1, text
    assert failed[0]["error"].startswith("NotFoundError: ")
    assert demo.events()[-2:] == ["stopping", "stopped"]
