"""aigw.systemd.Notifier against a fake NOTIFY_SOCKET: what systemd would receive."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from aigw.systemd import Notifier

# sockaddr_un.sun_path holds 108 bytes; pytest's tmp_path can be longer.
_MAX_SOCKET_PATH = 100


class FakeSystemd:
    """The receiving end of a notify socket, as systemd binds it."""

    def __init__(self, address: str) -> None:
        self.address = address  # the NOTIFY_SOCKET value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(2.0)

    def receive(self) -> str:
        """The next datagram; fails the test after 2 s."""
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return messages
        finally:
            self.sock.settimeout(2.0)

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, **extra}


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    directory = str(tmp_path)
    short = None
    if len(directory) > _MAX_SOCKET_PATH - len("/notify"):
        directory = short = tempfile.mkdtemp(prefix="aigw-notify-")
    fake = FakeSystemd(os.path.join(directory, "notify"))
    yield fake
    fake.sock.close()
    if short is not None:
        os.unlink(fake.address)
        os.rmdir(short)


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@aigw-test/{uuid.uuid4().hex}")
    yield fake
    fake.sock.close()


def test_ready_alone_and_with_status(systemd: FakeSystemd) -> None:
    with Notifier.from_env(systemd.env()) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert systemd.receive() == "READY=1"
        assert notifier.ready("2 routes, generation 1")
    # One datagram: systemd applies READY=1 and the status line together.
    assert systemd.receive() == "READY=1\nSTATUS=2 routes, generation 1"


def test_reloading_carries_the_monotonic_clock_in_microseconds(systemd: FakeSystemd) -> None:
    with Notifier.from_env(systemd.env()) as notifier:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = systemd.receive().split("\n")
    assert first == "RELOADING=1"
    key, _, usec = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_stopping_status_and_watchdog_messages(systemd: FakeSystemd) -> None:
    with Notifier.from_env(systemd.env()) as notifier:
        notifier.stopping()
        notifier.status("3 routes, generation 7")
        notifier.watchdog_ping()
        notifier.notify("EXTEND_TIMEOUT_USEC=5000000")
    assert [systemd.receive() for _ in range(4)] == [
        "STOPPING=1",
        "STATUS=3 routes, generation 7",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=5000000",
    ]


def test_status_is_one_line_and_utf8(systemd: FakeSystemd) -> None:
    # A newline would smuggle a second assignment (here READY=1) into the message.
    with Notifier.from_env(systemd.env()) as notifier:
        notifier.status("reloading\nREADY=1 café")
    assert systemd.receive() == "STATUS=reloading READY=1 café"


def test_abstract_socket(abstract_systemd: FakeSystemd) -> None:
    with Notifier.from_env(abstract_systemd.env()) as notifier:
        assert notifier.ready("ok")
    assert abstract_systemd.receive() == "READY=1\nSTATUS=ok"


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}], ids=["unset", "empty"])
async def test_without_notify_socket_everything_is_a_no_op(env: dict[str, str]) -> None:
    notifier = Notifier.from_env({**env, "WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None  # nobody to ping
    assert not notifier.ready("x")
    assert not notifier.reloading()
    assert not notifier.stopping()
    assert not notifier.status("x")
    assert not notifier.watchdog_ping()
    await asyncio.wait_for(notifier.run_watchdog(asyncio.Event()), timeout=1)  # returns at once
    notifier.close()


def test_send_failures_never_raise_and_are_logged_once(tmp_path: Path) -> None:
    with capture_logs() as logs:
        gone = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "no-such-socket")})
        unsupported = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
        assert gone.enabled
        assert not gone.ready()
        assert not gone.watchdog_ping()
        assert not gone.stopping()
        assert not unsupported.enabled
        assert not unsupported.ready()
    gone.close()
    assert [(line["event"], line["log_level"]) for line in logs] == [
        ("sd_notify_failed", "warning"),
        ("sd_notify_failed", "warning"),
    ]
    assert logs[0]["socket"] == "vsock:2:1234"
    assert logs[1]["socket"] == str(tmp_path / "no-such-socket")
    assert logs[1]["message"] == "READY"  # the first failure; later ones are not logged


def test_close_makes_it_silent(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env(systemd.env())
    notifier.close()
    notifier.close()  # idempotent
    assert not notifier.enabled
    assert not notifier.ready()
    assert systemd.pending() == []


@pytest.mark.parametrize(
    ("extra", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<self>"}, 15.0),
        # systemd set it for another process (we inherited the environment).
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_PID": "<self>"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    systemd: FakeSystemd, extra: dict[str, str], interval: float | None
) -> None:
    env = {k: str(os.getpid()) if v == "<self>" else v for k, v in extra.items()}
    with Notifier.from_env(systemd.env(**env)) as notifier:
        assert notifier.watchdog_interval == interval


async def test_run_watchdog_pings_every_interval_until_stopped(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env(systemd.env(WATCHDOG_USEC="100000"))  # ping every 50 ms
    assert notifier.watchdog_interval == pytest.approx(0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop))
    await asyncio.sleep(0.23)
    stop.set()
    await asyncio.wait_for(task, timeout=1)  # stops promptly, without waiting out an interval
    pings = systemd.pending()
    assert 2 <= len(pings) <= 6  # 5 on an idle machine
    assert set(pings) == {"WATCHDOG=1"}
    await asyncio.sleep(0.1)
    assert systemd.pending() == []  # and stays stopped
    notifier.close()


async def test_a_blocked_event_loop_sends_no_pings(systemd: FakeSystemd) -> None:
    # The point of pinging from the loop: if the loop is stuck, systemd stops
    # hearing from us and restarts the service after WatchdogSec.
    notifier = Notifier.from_env(systemd.env(WATCHDOG_USEC="40000"))  # every 20 ms
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop))
    await asyncio.sleep(0.05)
    assert systemd.pending()
    time.sleep(0.2)  # noqa: ASYNC251 -- blocking the loop (ten intervals) is the test
    assert systemd.pending() == []
    await asyncio.sleep(0.05)
    assert systemd.pending()  # back to pinging once the loop runs again
    stop.set()
    await task
    notifier.close()
