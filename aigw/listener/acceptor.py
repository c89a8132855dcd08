"""Accepting client connections under a cap: idle ones make room, else the listen queue waits.

Without a cap every connection is accepted while the process has a file
descriptor left, and then libuv (under uvloop) accepts and at once closes
whatever is queued, so with 512 descriptors 520 idle connections made
legitimate requests fail with resets (issue 9). Like nginx's
``worker_connections``, the :class:`Acceptor` never holds more than its limit,
so the descriptors the process needs for its upstream connections, log file
and admin listener stay free. At the limit, with a new connection waiting:

1. SECURITY: **reclaim idle connections**, as nginx reuses its "reusable"
   ones. The connections idle between requests with no byte of a next
   request (keep-alive after a response, or connected and silent) are closed,
   longest idle first, a batch at a time, and the waiting connections take
   their slots. Without this, a flood of idle connections fills the limit and
   every new client waits in the listen queue until a deadline frees a slot
   (measured: half of a normal client's requests timed out behind 1,100 idle
   connections). A connection with a request in flight, even one head byte,
   is never reclaimed, nor one whose request is already waiting unread.
2. Only when none is reclaimable, **stop accepting**: new connections wait in
   the listen queue (``backlog``) and are accepted, in order, as open ones
   close, or as busy ones go idle (looked for again every
   ``_RECHECK_MIN_S`` or more). Nothing is refused while the queue has room.

Neither asyncio's nor uvloop's ``Server`` can pause accepting, so the
listening sockets are bound here and accepted from with public event-loop API
only: ``loop.add_reader`` / ``remove_reader`` on the listening socket to start
and stop, ``sock.accept()`` in the callback, ``loop.connect_accepted_socket``
to hand each connection to its protocol. That costs one small task per
*connection*, not per request: PERF, measured on uvloop with connections
that each carry one byte, about 75 us of CPU per connection against 35 us
for uvloop's own accept loop (which cannot stop: it accepts everything queued,
and on EMFILE accepts and closes it). A keep-alive client pays it once.

PERF: reclaiming costs nothing per request. The order comes from aiohttp's
keep-alive deadline (computed anyway), and the open connections are scanned
only at the limit with a connection waiting: one pass over them
(``ClientConnection.reclaim_order``, a few attribute reads each) closes up to
``_RECLAIM_BATCH`` connections, an eighth of the reclaimable ones at most (as
nginx's ``ngx_drain_connections``), so under a flood a scan is paid once per
batch of accepted connections, not once per connection.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import resource
import socket
import time
from collections.abc import Callable

from aigw.listener.connection import ClientConnection
from aigw.logs import get_logger
from aigw.metrics import ListenerSeries

__all__ = ["Acceptor", "ProtocolFactory", "bind", "default_max_connections"]

_log = get_logger("aigw.listener")

ProtocolFactory = Callable[[Callable[[], None]], ClientConnection]
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

# Unsent bytes the kernel takes for one client connection (TCP_NOTSENT_LOWAT,
# inherited by accepted sockets from the listening one). Without it Linux grows
# a connection's send buffer up to net.ipv4.tcp_wmem's maximum (4 MiB) even when
# the client reads nothing: measured, about 3 MiB of a stream went into the
# kernel for each client that had stopped reading, relayed (split into events,
# observed, written) before the write pause and the send deadline could engage,
# a burst of CPU the other clients waited behind, and kernel memory held until
# the deadline. Bytes in flight (sent, not yet acknowledged) do not count, so a
# fast reader keeps its full window; the relay tops up the queue as it drains.
_UNSENT_LIMIT = 128 * 1024

# Most idle connections closed per scan, and at most this share of the
# reclaimable ones (nginx: min(32, reusable / 8)): the longest idle go, the
# ones just accepted (whose request may be on its way) stay.
_RECLAIM_BATCH = 32
_RECLAIM_SHARE = 8
# At the limit with nothing reclaimable, look again after this long (busy
# connections go idle without closing), or after this many times the last
# scan's duration if longer, so fruitless scans take at most 1/_RECHECK_COST_RATIO
# of the CPU however many connections are open.
_RECHECK_MIN_S = 0.1
_RECHECK_COST_RATIO = 50


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
    port); and ``TCP_NOTSENT_LOWAT``, which accepted sockets inherit (see
    ``_UNSENT_LIMIT``). Non-blocking, listening with *backlog*.

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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, _UNSENT_LIMIT)
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

    At the limit, with a connection waiting, it reclaims idle connections to
    make room, or stops accepting if none is idle (see the module docstring).

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
        "_connections",
        "_factory",
        "_full",
        "_loop",
        "_name",
        "_recheck",
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
        # At the limit with nothing to reclaim (counted once per episode).
        self._full = False
        self._retry: asyncio.TimerHandle | None = None  # after descriptor exhaustion
        self._recheck: asyncio.TimerHandle | None = None  # at the limit, for idle connections
        # Connections accepted whose transport is not wired up yet.
        self._starting: set[asyncio.Task[None]] = set()
        # Connections wired up and not lost yet: the ones reclaiming looks at.
        self._connections: set[ClientConnection] = set()

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
        for timer in (self._retry, self._recheck):
            if timer is not None:
                timer.cancel()
        self._retry = self._recheck = None
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
        for accepted in range(_ACCEPT_BATCH):
            if series.open >= series.limit:
                if accepted == 0:
                    # Readable at the limit: a connection is waiting.
                    self._at_limit()
                # Else the limit was reached just now: stay registered, so
                # the next call comes when a connection is waiting, not before
                # (reclaiming then would close idle connections for nobody).
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

    def _at_limit(self) -> None:
        """A connection is waiting and every slot is taken: make room, or wait for one."""
        # Paused either way: reclaimed connections close on a later loop
        # iteration, and their release resumes accepting; meanwhile the
        # listening socket stays readable and must not be polled in a spin.
        self._pause()
        started = time.perf_counter()
        if self._reclaim_idle():
            self._full = False
            return
        # SECURITY: the cap. Whatever is queued stays in the kernel's listen
        # queue until a connection closes or goes idle.
        if not self._full:
            self._full = True
            self._series.limit_reached.value += 1
        if self._recheck is None and self._retry is None:
            scan = time.perf_counter() - started
            delay = max(_RECHECK_MIN_S, scan * _RECHECK_COST_RATIO)
            self._recheck = self._loop.call_later(delay, self._recheck_now)

    def _reclaim_idle(self) -> int:
        """Closes the longest-idle reclaimable connections, a batch at most; how many."""
        candidates = [
            (order, index, connection)
            for index, connection in enumerate(self._connections)
            if (order := connection.reclaim_order()) is not None
        ]
        batch = max(1, min(_RECLAIM_BATCH, len(candidates) // _RECLAIM_SHARE))
        heapq.heapify(candidates)
        reclaimed = 0
        while candidates and reclaimed < batch:
            _order, _index, connection = heapq.heappop(candidates)
            if connection.reclaim():
                reclaimed += 1
        self._series.reclaimed.value += reclaimed
        return reclaimed

    def _recheck_now(self) -> None:
        self._recheck = None
        # Accepting again: if a connection is still waiting, the socket is
        # readable and _on_readable, at the limit, scans once more.
        self._resume()

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
        if series.open >= series.limit:
            return
        self._full = False
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._retry is None:
            self._resume()

    async def _start(self, conn: socket.socket) -> None:
        released = False
        connection: ClientConnection | None = None

        def release() -> None:
            # Once per connection, whichever of the protocol and the failure
            # path below gets here first.
            nonlocal released
            if not released:
                released = True
                if connection is not None:
                    self._connections.discard(connection)
                self._release()

        def make_protocol() -> ClientConnection:
            nonlocal connection
            connection = self._factory(release)
            self._connections.add(connection)
            return connection

        try:
            await self._loop.connect_accepted_socket(make_protocol, conn)
        except BaseException as exc:
            conn.close()
            release()
            if not isinstance(exc, Exception):
                raise
            # One connection's failure (reset before it was wired up) is not the listener's.
            _log.debug("connection_setup_failed", listener=self._name, error=str(exc))
