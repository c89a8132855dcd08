"""Accepting client connections under a cap; past it, the kernel's listen queue holds them.

Without a cap every connection is accepted while the process has a file
descriptor left, and then libuv (under uvloop) accepts and at once closes
whatever is queued, so with 512 descriptors 520 idle connections made
legitimate requests fail with resets (issue 9). Like nginx's
``worker_connections``, the :class:`Acceptor` stops accepting at its limit:
new connections wait in the listen queue (``backlog``) and are accepted, in
order, as open ones close. Nothing is refused while the queue has room, and
the descriptors the process needs for its upstream connections, log file and
admin listener stay free.

Neither asyncio's nor uvloop's ``Server`` can pause accepting, so the
listening sockets are bound here and accepted from with public event-loop API
only: ``loop.add_reader`` / ``remove_reader`` on the listening socket to start
and stop, ``sock.accept()`` in the callback, ``loop.connect_accepted_socket``
to hand each connection to its protocol. That costs one small task per
*connection*, not per request: PERF, measured on uvloop with connections
that each carry one byte, about 75 us of CPU per connection against 35 us
for uvloop's own accept loop (which cannot stop: it accepts everything queued,
and on EMFILE accepts and closes it). A keep-alive client pays it once.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
from collections.abc import Callable

from aigw.logs import get_logger
from aigw.metrics import ListenerSeries

__all__ = ["Acceptor", "ProtocolFactory", "bind", "default_max_connections"]

_log = get_logger("aigw.listener")

ProtocolFactory = Callable[[Callable[[], None]], asyncio.Protocol]
"""Builds the protocol of one accepted connection; the argument is the callback
the protocol must call once, when its connection is lost, to free the slot."""

# Descriptors the process holds besides its client and upstream connections:
# stdio, the log file, the event loop's epoll, eventfd and signal pipe, the
# conf.d watcher, the listening sockets, the systemd socket, files read during
# a reload and the sockets of DNS look-ups in flight (a handful of executor
# threads). Measured at about 20; the rest is headroom.
_FIXED_DESCRIPTORS = 64
# What RLIM_INFINITY counts as: the Linux default for fs.nr_open.
_UNLIMITED_DESCRIPTORS = 1 << 20

# Connections accepted per readiness callback before yielding to the loop,
# so a burst cannot starve requests in flight on other connections.
_ACCEPT_BATCH = 64
# Seconds to stop accepting after the process or system ran out of
# descriptors or memory anyway (asyncio's selector loop waits 1 s too).
_RETRY_AFTER_EXHAUSTION = 1.0
_EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def default_max_connections(*, upstream_connections: int = 0, reserved: int = 0) -> int:
    """The client-connection limit a worker derives from its open-file limit.

    ``RLIMIT_NOFILE`` (the soft limit: what ``accept()`` is actually refused
    at) bounds every descriptor of the process. The formula::

        available = soft limit - 64 (fixed: stdio, log file, event loop,
                    watcher, listening sockets, DNS look-ups) - reserved
        upstream  = min(upstream_connections, ceil(available / 2))
        limit     = max(1, available - upstream)

    Each client connection has at most one request in flight, so it holds at
    most one upstream connection; the pool never opens more than
    ``upstream_connections`` (its limit) nor, therefore, more than the number
    of client connections. ``limit + min(upstream_connections, limit)`` then
    never exceeds ``available``. With the default pool of 1,000 and the admin
    listener's 17 reserved: 1,024 descriptors give 471 client connections (and
    so at most 471 upstream ones), 65,536 give 64,455.

    Args:
        upstream_connections: The upstream pool's limit (``ServeSettings.pool_size``).
        reserved: Descriptors kept for other listeners (the admin port's
            connection limit and its listening socket).
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = _UNLIMITED_DESCRIPTORS
    available = soft - _FIXED_DESCRIPTORS - reserved
    upstream = min(upstream_connections, (available + 1) // 2)
    return max(1, available - upstream)


async def bind(host: str, port: int, *, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for *host*:*port*, one per address it resolves to.

    The same options as ``loop.create_server``: ``SO_REUSEADDR``, IPv6
    sockets IPv6-only, ``SO_REUSEPORT`` when asked (several workers on one
    port). Non-blocking, listening with *backlog*.

    Raises:
        OSError: An address cannot be bound.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: "
                    f"{(exc.strerror or '').lower()}",
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Acceptor:
    """Accepts on *sockets* while fewer than ``series.limit`` connections are open.

    Args:
        sockets: Bound, listening, non-blocking sockets (see :func:`bind`);
            the acceptor owns and closes them.
        protocol_factory: Builds each connection's protocol (see
            :data:`ProtocolFactory`).
        series: The listener's connection metrics; ``series.open`` is the
            count the limit applies to, ``series.limit`` the limit.
        name: The listener's name in log lines.
    """

    __slots__ = (
        "_accepting",
        "_closed",
        "_factory",
        "_loop",
        "_name",
        "_retry",
        "_series",
        "_sockets",
        "_starting",
    )

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: ProtocolFactory,
        series: ListenerSeries,
        *,
        name: str,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._factory = protocol_factory
        self._series = series
        self._name = name
        self._accepting = False
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        # Connections accepted whose transport is not wired up yet.
        self._starting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Starts accepting."""
        self._resume()

    def close(self) -> None:
        """Stops accepting and closes the listening sockets: new connections are refused.

        Connections already accepted are left to their protocols.
        """
        if self._closed:
            return
        self._pause()
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self._sockets:
            sock.close()

    async def wait_started(self) -> None:
        """Waits until every accepted connection has met its protocol."""
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)

    # -- accepting -----------------------------------------------------------

    def _resume(self) -> None:
        if self._accepting or self._closed:
            return
        self._accepting = True
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _pause(self) -> None:
        if not self._accepting:
            return
        self._accepting = False
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())

    def _on_readable(self, sock: socket.socket) -> None:
        series = self._series
        for _ in range(_ACCEPT_BATCH):
            if series.open >= series.limit:
                # SECURITY: the cap. Whatever else is queued stays in the
                # kernel's listen queue until a connection closes.
                self._pause()
                series.limit_reached.value += 1
                return
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # reset while queued: nothing to serve
            except OSError as exc:
                self._on_accept_error(exc)
                return
            series.open += 1
            task = self._loop.create_task(self._start(conn))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    def _on_accept_error(self, exc: OSError) -> None:
        if exc.errno not in _EXHAUSTION_ERRNOS:
            _log.error("accept_failed", listener=self._name, error=str(exc))
            return
        # Out of descriptors despite the limit (set above what the open-file
        # limit allows, or taken elsewhere): leave the queue alone and retry,
        # instead of spinning on a socket that stays readable.
        _log.warning(
            "accept_paused",
            listener=self._name,
            error=exc.strerror,
            retry_after_s=_RETRY_AFTER_EXHAUSTION,
            open_connections=self._series.open,
        )
        self._pause()
        if self._retry is None:
            self._retry = self._loop.call_later(_RETRY_AFTER_EXHAUSTION, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._resume()

    def _release(self) -> None:
        series = self._series
        series.open -= 1
        if not self._accepting and self._retry is None and series.open < series.limit:
            self._resume()

    async def _start(self, conn: socket.socket) -> None:
        released = False

        def release() -> None:
            # Once per connection, whichever of the protocol and the failure
            # path below gets here first.
            nonlocal released
            if not released:
                released = True
                self._release()

        factory = self._factory
        try:
            await self._loop.connect_accepted_socket(lambda: factory(release), conn)
        except BaseException as exc:
            conn.close()
            release()
            if not isinstance(exc, Exception):
                raise
            # One connection's failure (reset before it was wired up) is not the listener's.
            _log.debug("connection_setup_failed", listener=self._name, error=str(exc))
