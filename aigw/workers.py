"""``aigw serve --workers N``: N gateway processes sharing one port, one supervisor.

Python runs one event loop per process on one core; to use a host's cores,
the supervisor starts N ordinary ``aigw serve`` processes that bind the same
port with ``SO_REUSEPORT`` (the kernel spreads connections across them). Each
worker loads, watches and reloads conf.d on its own, and says which worker it
is in its logs and status endpoint (admin port = base port + worker index).

The supervisor is what systemd sees (``NotifyAccess=main``). It plays systemd
for its workers: each worker gets a private notify socket, so the ordinary
sd_notify code in the worker needs no special mode. The supervisor reports
READY=1 once every worker is ready, forwards SIGHUP (RELOADING=1 ... READY=1
once every worker has reloaded) and SIGTERM (STOPPING=1, then waits for the
workers to drain), pings the watchdog only while every worker pings it, and
restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aigw.logs import get_logger
from aigw.systemd import Notifier

__all__ = ["Supervisor", "worker_argv"]

_log = get_logger("aigw.workers")

_RESTART_DELAY_S = 1.0


def worker_argv(argv: Sequence[str], index: int) -> list[str]:
    """The command line of worker *index*: the supervisor's, minus ``--workers``."""
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        args.append(arg)
    return [sys.executable, "-m", "aigw", *args, "--worker-index", str(index)]


@dataclass(slots=True)
class _Worker:
    index: int
    sock: socket.socket
    address: str
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    reloading: bool = False
    last_ping: float = field(default_factory=time.monotonic)
    status: str = ""


class Supervisor:
    """Starts, watches and stops the worker processes.

    Args:
        argv: The supervisor's own arguments (``serve ... --workers N``).
        count: How many workers.
        drain_timeout: How long workers may take to drain on SIGTERM.
        notifier: The supervisor's link to systemd.
    """

    def __init__(
        self, argv: Sequence[str], count: int, drain_timeout: float, notifier: Notifier
    ) -> None:
        self._argv = list(argv)
        self._drain_timeout = drain_timeout
        self._notifier = notifier
        self._stopping = False
        self._ready_reported = False
        self._workers: list[_Worker] = []
        for index in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Abstract namespace: nothing on disk to clean up or to protect.
            address = f"\0aigw-{os.getpid()}-{index}-{time.monotonic_ns()}"
            sock.bind(address)
            sock.setblocking(False)
            self._workers.append(_Worker(index=index, sock=sock, address=address))

    async def run(self) -> int:
        """Runs the workers until SIGTERM/SIGINT; returns the exit code."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_reload)
        loop.add_signal_handler(signal.SIGUSR1, self._forward, signal.SIGUSR1)
        for worker in self._workers:
            loop.add_reader(worker.sock.fileno(), self._on_message, worker)
            self._spawn(worker)
        watchdog = loop.create_task(self._watchdog(stop), name="supervisor-watchdog")
        monitor = loop.create_task(self._monitor(stop), name="supervisor-monitor")
        await stop.wait()
        self._stopping = True
        self._notifier.stopping()
        _log.info("stopping", workers=len(self._workers))
        self._forward(signal.SIGTERM)
        code = await asyncio.to_thread(self._wait_all)
        for task in (watchdog, monitor):
            task.cancel()
        for worker in self._workers:
            loop.remove_reader(worker.sock.fileno())
            worker.sock.close()
        return code

    # -- workers ------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = "@" + worker.address[1:]
        env["AIGW_WORKER"] = str(worker.index)
        interval = self._notifier.watchdog_interval
        if interval is not None:
            # Workers ping at half of this, the supervisor checks every interval.
            env["WATCHDOG_USEC"] = str(int(interval * 2 * 1_000_000))
            env.pop("WATCHDOG_PID", None)
        else:
            env.pop("WATCHDOG_USEC", None)
        worker.ready = False
        worker.last_ping = time.monotonic()
        worker.process = subprocess.Popen(worker_argv(self._argv, worker.index), env=env)
        _log.info("worker_started", worker=worker.index, pid=worker.process.pid)

    async def _monitor(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(0.2)
            for worker in self._workers:
                process = worker.process
                if process is None or process.poll() is None or self._stopping:
                    continue
                _log.error(
                    "worker_exited", worker=worker.index, pid=process.pid, code=process.returncode
                )
                worker.process = None
                await asyncio.sleep(_RESTART_DELAY_S)
                if not self._stopping:
                    self._spawn(worker)

    def _forward(self, sig: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(sig)

    def _forward_reload(self) -> None:
        self._notifier.reloading()
        for worker in self._workers:
            worker.reloading = True
        self._forward(signal.SIGHUP)

    def _wait_all(self) -> int:
        deadline = time.monotonic() + self._drain_timeout + 5
        code = 0
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.error("worker_killed", worker=worker.index, pid=process.pid)
                process.kill()
                process.wait()
            if process.returncode not in (0, -signal.SIGTERM):
                code = 1
        return code

    # -- notifications --------------------------------------------------------

    def _on_message(self, worker: _Worker) -> None:
        try:
            data = worker.sock.recv(4096)
        except BlockingIOError:
            return
        fields = dict(
            line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line
        )
        if "WATCHDOG" in fields:
            worker.last_ping = time.monotonic()
        if "STATUS" in fields:
            worker.status = fields["STATUS"]
        if fields.get("RELOADING") == "1":
            worker.reloading = True
        if fields.get("READY") == "1":
            worker.ready = True
            worker.reloading = False
            worker.last_ping = time.monotonic()
            self._report()

    def _report(self) -> None:
        if not all(w.ready and not w.reloading for w in self._workers):
            return
        statuses = "; ".join(f"worker {w.index}: {w.status}" for w in self._workers)
        self._notifier.ready(f"{len(self._workers)} workers ready; {statuses}")
        if not self._ready_reported:
            self._ready_reported = True
            _log.info("workers_ready", workers=len(self._workers))

    async def _watchdog(self, stop: asyncio.Event) -> None:
        interval = self._notifier.watchdog_interval
        if interval is None:
            return
        while not stop.is_set():
            await asyncio.sleep(interval)
            now = time.monotonic()
            # A worker whose loop is stuck stops pinging; the supervisor then
            # stops pinging too and systemd restarts the whole service.
            if all(now - w.last_ping < 2 * interval for w in self._workers):
                self._notifier.watchdog_ping()
