"""A real ``redis-server`` for tests: on a free port of 127.0.0.1, no persistence.

It can be stopped (SIGTERM) or killed (SIGKILL) mid-test and started again on
the same port, to test what aigw does while Redis is gone and when it comes
back. Tests are skipped, saying how to install it, only when ``redis-server``
is not installed.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server_binary", "running_redis"]

_INSTALL_HINT = (
    "redis-server is not installed; the Redis quota tests need it "
    "(Debian/Ubuntu: sudo apt-get install redis-server)"
)


def redis_server_binary() -> str:
    """The path of ``redis-server``; skips the calling test when it is missing."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if path is None:
        pytest.skip(_INSTALL_HINT)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process; :meth:`start` again after :meth:`kill` reuses the port."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = redis_server_binary()
        self.port = port if port is not None else _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Starts the server and waits until it answers PING."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                self.process = None
                raise RuntimeError(f"redis-server exited at start: {error[-500:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"redis-server did not answer PING on {self.port}")
            time.sleep(0.02)

    def ping(self) -> bool:
        """True when the server answers PING now."""
        return self.command("PING") == "+PONG"

    def command(self, *args: str) -> str | None:
        """Sends one command; returns its reply's first line (a bulk string's value instead),
        None when the server cannot be reached."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                encoded = f"*{len(args)}\r\n" + "".join(
                    f"${len(arg.encode())}\r\n{arg}\r\n" for arg in args
                )
                sock.sendall(encoded.encode())
                data = b""
                while data.count(b"\r\n") < (2 if data.startswith(b"$") else 1):
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    data += piece
                    if data.startswith(b"$-1\r\n"):
                        return None  # a nil bulk string
                lines = data.split(b"\r\n")
                return (lines[1] if data.startswith(b"$") else lines[0]).decode()
        except OSError:
            return None

    def kill(self) -> None:
        """Kills the server at once (SIGKILL), as a crash would."""
        self._end(kill=True)

    def stop(self) -> None:
        """Stops the server (SIGTERM) and waits for it."""
        self._end(kill=False)

    def _end(self, *, kill: bool) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            process.kill()  # SIGKILL also ends a paused process
        else:
            process.terminate()
            process.send_signal(signal.SIGCONT)  # a paused server handles SIGTERM once resumed
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def pause(self) -> None:
        """Freezes the server (SIGSTOP): connections stay open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Lets a paused server go on (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Starts the server again on the same port (after a kill or stop)."""
        self.start()


def running_redis() -> Iterator[RedisServer]:
    """Body of a fixture: a started server, killed at teardown."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()
