"""A small sd_notify client: readiness, reload, stop, status and watchdog messages to systemd.

systemd (``Type=notify``) passes the path of its notification socket in
``$NOTIFY_SOCKET``; a notification is one ``AF_UNIX`` datagram of
newline-separated ``KEY=value`` assignments (sd_notify(3)). The protocol is a
few lines of code, so this module depends on nothing: no libsystemd, no cffi.

Rules it follows:

* Outside systemd (``NOTIFY_SOCKET`` unset) every method is a cheap no-op, so
  the server calls it unconditionally.
* A failed send never raises: losing a status line must not take the gateway
  down. The first failure is logged, later ones are not (a socket that is gone
  stays gone, and the log must not fill with one line per watchdog ping).
* ``RELOADING=1`` carries ``MONOTONIC_USEC=``: systemd ≥ 253
  (``Type=notify-reload``) uses it to match the message to the reload it asked
  for, and without it ``systemctl reload`` waits for its full timeout.
* Watchdog pings are sent by a task on the event loop, so a loop that is
  blocked misses them and systemd restarts the process (``WatchdogSec=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType

from aigw.logs import get_logger

__all__ = ["Notifier"]

_log = get_logger("aigw.systemd")

# A send blocks only while systemd's receive queue is full. Waiting a moment is
# better than dropping READY=1 (systemd would then kill us at TimeoutStartSec),
# and the bound keeps a wedged manager from stalling the event loop for long.
_SEND_TIMEOUT_S = 0.5


def _socket_address(value: str) -> bytes | None:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``, or None when it is not AF_UNIX.

    ``@name`` is a Linux abstract socket: its address is a NUL byte followed by
    the name. systemd ≥ 254 may also pass ``vsock:CID:PORT``, which a service
    on the host never sees; it is treated as unsupported.
    """
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None


def _one_line(text: str) -> str:
    # A newline would end the assignment and start a bogus KEY=value.
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify messages to systemd, or nothing when not run by systemd.

    Build it with :meth:`from_env`. Every message method returns True when a
    datagram was sent, False when disabled, closed or the send failed.

    Args:
        address: Value of ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an
            abstract socket); None disables the notifier.
        watchdog_usec: ``$WATCHDOG_USEC`` meant for this process, or None when
            the unit has no watchdog.
    """

    __slots__ = ("_address", "_display", "_sock", "_warned", "_watchdog_usec")

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._display = address
        self._address = None if not address else _socket_address(address)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._warned = False
        if address and self._address is None:
            self._warn("unsupported NOTIFY_SOCKET address")
        if self._address is not None:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError as exc:
                self._warn(f"cannot create socket: {exc}")
            else:
                sock.settimeout(_SEND_TIMEOUT_S)
                self._sock = sock

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier for the socket and watchdog that systemd passed in *env*.

        ``WATCHDOG_USEC`` is honoured only when ``WATCHDOG_PID`` is unset or is
        this process: systemd sets the PID so that a child that inherited the
        environment does not take over the parent's watchdog.
        """
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=_watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """True when messages go to systemd (``NOTIFY_SOCKET`` set and usable, not closed)."""
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None without one.

        Half the timeout, as sd_watchdog_enabled(3) recommends, so one late ping
        is not yet fatal. None also when there is no socket to ping.
        """
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def notify(self, message: str) -> bool:
        """Sends *message* (``KEY=value`` lines) as one datagram; never raises."""
        sock, address = self._sock, self._address
        if sock is None or address is None:
            return False
        try:
            sock.sendto(message.encode("utf-8", "replace"), address)
        except OSError as exc:  # includes TimeoutError: systemd's queue stayed full
            self._warn(f"send failed: {exc}", message=message.partition("=")[0])
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) finished; with *status* in the same datagram."""
        if status is None:
            return self.notify("READY=1")
        return self.notify(f"READY=1\nSTATUS={_one_line(status)}")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` now; send :meth:`ready` when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun (systemd shows the unit as deactivating)."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """``STATUS=``: one line shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog_ping(self) -> bool:
        """``WATCHDOG=1``: proof of life for ``WatchdogSec=``."""
        return self.notify("WATCHDOG=1")

    async def run_watchdog(self, stop: asyncio.Event) -> None:
        """Pings every :attr:`watchdog_interval` seconds until *stop* is set.

        Returns at once when there is no watchdog. Runs on the event loop on
        purpose: if the loop is blocked, pings stop and systemd restarts us.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        while not stop.is_set():
            self.watchdog_ping()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    def close(self) -> None:
        """Closes the socket; later messages are silent no-ops."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _warn(self, reason: str, **fields: str) -> None:
        if self._warned:
            return
        self._warned = True
        _log.warning("sd_notify_failed", socket=self._display, reason=reason, **fields)


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    usec = _positive_int(env.get("WATCHDOG_USEC"))
    pid = env.get("WATCHDOG_PID")
    if usec is None or (pid and _positive_int(pid) != os.getpid()):
        return None
    return usec


def _positive_int(value: str | None) -> int | None:
    # Malformed values disable the feature rather than failing start-up.
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None
