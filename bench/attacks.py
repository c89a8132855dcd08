"""The attack scenario's two clients: a normal client that times requests, and the attacker.

    python bench/attacks.py probe ORIGIN --path P --body JSON --api-key K
        [--rate 20] [--duration 10] [--timeout 5] [--out FILE]
    python bench/attacks.py attack KIND ORIGIN --path P --api-key K [--duration 10]
        [--connections N] [--size BYTES] [--out FILE]

ORIGIN is ``http://127.0.0.1:PORT``. Each command prints one JSON document (or
writes it to ``--out``). They run as two processes so that the attacker's own
work (sending 480 MiB, reading a 240 MiB body) is not charged to the normal
client's latency by a shared event loop.

``probe``: one small non-streaming chat request every 1/``--rate`` seconds on a
fixed schedule (open loop: a slow answer does not delay the next request, so a
stall shows up as latency instead of as fewer samples), each on a fresh
connection (a client arriving, as an attacker holding connections would shut
out). Latency is from before the connect to the end of the body; an answer other
than a complete 200 within ``--timeout`` is an error, counted by kind.

``attack KIND``, for ``--duration`` seconds, then every attack socket is closed:

* ``stalled-bodies``: ``--connections`` (60) requests declaring
  ``Content-Length: --size`` (8 MiB) that send all but the last byte, then
  nothing; each socket is read until the proxy closes it (and what it answered);
* ``idle-flood``: ``--connections`` (1,100) connections that never send a byte;
  one the proxy closes is opened again 0.5 s later, so the pressure lasts the phase.
  How many the proxy holds (accepted) and leaves in its listen queue is sampled
  from ``/proc/net/tcp`` (a socket not yet accepted has no inode);
* ``stalled-readers``: ``--connections`` (8) stream requests on sockets with a
  4 KiB receive buffer that are never read. Whether the proxy closed its side is
  read from ``/proc/net/tcp`` (its socket leaves ESTABLISHED): the FIN of a
  proxy that gives up queues behind the unread bytes, so the client never sees it;
* ``huge-body`` / ``huge-event``: one request at a time, back to back, each read
  as fast as it arrives; per request: status, bytes, time to the first body byte
  and to the end, whether it ended by its own framing, ``[DONE]`` and any
  ``"error"`` in the body.

Everything is 127.0.0.1; the attacker raises its own open-file limit to the hard
limit first (1,100 sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools
from measure import percentile

__all__ = ["main"]

MiB = 1024 * 1024
_ESTABLISHED, _LISTEN = 0x01, 0x0A
REOPEN_DELAY_S = 0.5


# -- shared ---------------------------------------------------------------------------------


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _head(path: str, host: str, port: int, api_key: str, length: int, close: bool) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"api-key: {api_key}",
        f"Content-Length: {length}",
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _dist(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def pct(q: float) -> float | None:
        return percentile(ordered, q) if ordered else None  # null in the JSON, not NaN

    return {"n": len(ordered), "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)}


def server_sockets(port: int) -> dict[int, tuple[int, int]]:
    """The server side of every TCP connection to 127.0.0.1:*port*: peer port → (state, inode).

    A connection still in the listen queue (not yet accepted) has inode 0.
    """
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/net/tcp", "rb") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local[local.index(b":") + 1 :], 16) != port:
                continue
            state = int(fields[3], 16)
            if state == _LISTEN:
                continue
            out[int(remote[remote.index(b":") + 1 :], 16)] = (state, int(fields[9]))
    return out


class _Response:
    """httptools callbacks: status, body size and timing, [DONE] and "error" markers."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.first_byte_s: float | None = None
        self.body_bytes = 0
        self.complete = False
        self.done = False
        self.error_in_body = False
        self._tail = b""

    def on_body(self, body: bytes) -> None:
        if self.first_byte_s is None:
            self.first_byte_s = time.perf_counter() - self.t0
        self.body_bytes += len(body)
        # A marker may straddle two reads: also search the seam between them.
        for text in (self._tail + body[:16], body):
            self.done |= b"data: [DONE]" in text
            self.error_in_body |= b'"error"' in text
        self._tail = body[-16:]

    def on_message_complete(self) -> None:
        self.complete = True


async def _read_response(reader: asyncio.StreamReader, seen: _Response, chunk: int = 65536) -> int:
    """Reads one response to its end (or the connection's) into *seen*; returns the status."""
    parser = httptools.HttpResponseParser(seen)
    while not seen.complete:
        data = await reader.read(chunk)
        if not data:
            with contextlib.suppress(httptools.HttpParserError):
                parser.feed_data(b"")
            break
        parser.feed_data(data)
    try:
        return int(parser.get_status_code())
    except httptools.HttpParserError:
        return 0  # no status line came


# -- the normal client ------------------------------------------------------------------------


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Open-loop requests at a fixed rate on fresh connections; latency and errors."""
    url = urlsplit(args.origin)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = args.body.encode()
    request = _head(args.path, host, port, args.api_key, len(body), close=True) + body
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one() -> None:
        t0 = time.perf_counter()
        seen = _Response(t0)
        writer = None
        error: str | None = None
        try:
            async with asyncio.timeout(args.timeout):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                status = await _read_response(reader, seen)
            if status != 200:
                error = f"HTTP {status or 'none'}"
            elif not seen.complete:
                error = "cut"
        except TimeoutError:
            error = "timeout"
        except OSError as exc:
            error = type(exc).__name__
        finally:
            if writer is not None:
                writer.close()
        if error is None:
            latencies.append((time.perf_counter() - t0) * 1000)
        else:
            errors[error] = errors.get(error, 0) + 1

    start = time.perf_counter()
    count = round(args.duration * args.rate)
    tasks = []
    for index in range(count):
        await asyncio.sleep(max(0.0, start + index / args.rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return {
        "sent": count,
        "ok": len(latencies),
        "errors": errors,
        "latency_ms": _dist(latencies),
        "latencies_ms": [round(v, 3) for v in latencies],
    }


# -- attacks ----------------------------------------------------------------------------------


class _Attack:
    """What every attack has: the proxy's address, the request, the phase deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.origin)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.args = args
        self.deadline: float = time.perf_counter() + args.duration

    def left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    async def until_deadline(self, work: Awaitable[object]) -> bool:
        """Runs *work* until the phase ends; False if the phase ended first."""
        try:
            async with asyncio.timeout(self.left()):
                await work
        except TimeoutError:
            return False
        return True


def _closed_summary(connections: int, closed_after: list[float]) -> dict[str, Any]:
    return {
        "connections": connections,
        "closed_by_proxy": len(closed_after),
        "close_after_s": _dist(closed_after),
    }


async def stalled_bodies(attack: _Attack) -> dict[str, Any]:
    """Declares --size bytes, sends all but one, then waits for the proxy to give up."""
    args = attack.args
    prefix = b'{"model":"gpt-4o","messages":[{"role":"user","content":"'
    padding = memoryview(b"x" * MiB)
    head = _head(args.path, attack.host, attack.port, args.api_key, args.size, close=False)
    closed_after: list[float] = []
    statuses: dict[str, int] = {}
    sent_s: list[float] = []
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(attack.host, attack.port)
        writers.append(writer)
        writer.write(head + prefix)
        left = args.size - 1 - len(prefix)
        try:
            while left:
                piece = padding[: min(left, MiB)]
                writer.write(piece)
                left -= len(piece)
                await writer.drain()
        except OSError:
            pass  # closed while sending: read what the proxy said
        stalled = time.perf_counter()
        if not left:
            sent_s.append(stalled - t0)
        answer = b""
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                answer += data[: 64 - len(answer)]
        closed_after.append(time.perf_counter() - stalled)
        status = answer[9:12].decode("latin-1") if answer.startswith(b"HTTP/1.") else "none"
        statuses[status] = statuses.get(status, 0) + 1

    tasks = [asyncio.create_task(one()) for _ in range(args.connections)]
    await attack.until_deadline(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        task.cancel()
    for writer in writers:
        writer.close()
    summary = _closed_summary(args.connections, closed_after)
    summary.update(
        body_sent=len(sent_s), send_s=_dist(sent_s), answers=statuses, declared_bytes=args.size
    )
    return summary


async def idle_flood(attack: _Attack) -> dict[str, Any]:
    """Holds --connections idle connections; one closed by the proxy is opened again."""
    args = attack.args
    loop = asyncio.get_running_loop()
    first_closed_after: list[float] = []
    counts = {"connected": 0, "connect_failed": 0, "closures": 0}
    held: list[int] = []
    queued: list[int] = []
    sockets: set[socket.socket] = set()

    async def slot() -> None:
        first = True
        while attack.left() > 0:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sockets.add(sock)
            try:
                async with asyncio.timeout(min(3.0, attack.left())):
                    await loop.sock_connect(sock, (attack.host, attack.port))
            except (OSError, TimeoutError):
                counts["connect_failed"] += 1
                sockets.discard(sock)
                sock.close()
                await asyncio.sleep(0.1)
                continue
            counts["connected"] += 1
            t0 = time.perf_counter()
            with contextlib.suppress(OSError):
                while await loop.sock_recv(sock, 4096):
                    pass
            counts["closures"] += 1
            if first:
                first_closed_after.append(time.perf_counter() - t0)
                first = False
            sockets.discard(sock)
            sock.close()
            # A pause before reopening: without it, a proxy that evicts idle connections
            # when full (nginx) turns the flood into a connect-rate storm, another attack.
            await asyncio.sleep(REOPEN_DELAY_S)

    async def sample() -> None:
        while True:
            states = server_sockets(attack.port).values()
            held.append(sum(1 for s, inode in states if s == _ESTABLISHED and inode))
            queued.append(sum(1 for s, inode in states if s == _ESTABLISHED and not inode))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    tasks = [asyncio.create_task(slot()) for _ in range(args.connections)]
    await attack.until_deadline(asyncio.gather(*tasks, return_exceptions=True))
    sampler.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(sampler, *tasks, return_exceptions=True)
    for sock in sockets:
        sock.close()
    summary = _closed_summary(args.connections, first_closed_after)
    summary.update(
        counts,
        reopened=max(0, counts["connected"] - args.connections),
        proxy_held_max=max(held, default=0),
        listen_queue_max=max(queued, default=0),
    )
    return summary


async def stalled_readers(attack: _Attack) -> dict[str, Any]:
    """Stream requests that are never read; watches the proxy's side of each socket."""
    args = attack.args
    loop = asyncio.get_running_loop()
    body = json.dumps(
        {"model": "long-stream", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    ).encode()
    request = _head(args.path, attack.host, attack.port, args.api_key, len(body), False) + body
    sent_at: dict[int, float] = {}
    closed_after: list[float] = []
    sockets: list[socket.socket] = []
    for _ in range(args.connections):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect, so the window the proxy sees is small from the first byte.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        sockets.append(sock)
        await loop.sock_connect(sock, (attack.host, attack.port))
        await loop.sock_sendall(sock, request)
        sent_at[sock.getsockname()[1]] = time.perf_counter()
    open_ports = set(sent_at)
    answers: dict[str, int] = {}
    while open_ports and attack.left() > 0:
        await asyncio.sleep(min(0.1, attack.left()))
        states = server_sockets(attack.port)
        now = time.perf_counter()
        for peer in list(open_ports):
            state = states.get(peer)
            if state is None or state[0] != _ESTABLISHED:
                closed_after.append(now - sent_at[peer])
                open_ports.discard(peer)
    for sock in sockets:
        # Peek, not read: what the proxy answered before it stalled (or gave up).
        try:
            head = sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            head = b""
        status = head[9:12].decode("latin-1") if head.startswith(b"HTTP/1.") else "none"
        answers[status] = answers.get(status, 0) + 1
        sock.close()
    summary = _closed_summary(args.connections, closed_after)
    summary["answers"] = answers
    return summary


async def _fetch(attack: _Attack, request: bytes) -> dict[str, Any]:
    """One request read at full speed until its end or the phase's."""
    t0 = time.perf_counter()
    seen = _Response(t0)
    status, error, finished = 0, None, False
    writer = None
    try:
        async with asyncio.timeout(attack.left()):
            reader, writer = await asyncio.open_connection(attack.host, attack.port)
            writer.write(request)
            status = await _read_response(reader, seen, chunk=MiB)
        finished = True
    except TimeoutError:
        pass  # still running when the phase ended: the attacker hangs up
    except OSError as exc:
        error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    return {
        "status": status,
        "finished_in_phase": finished,
        "complete": seen.complete,
        "body_bytes": seen.body_bytes,
        "first_byte_s": seen.first_byte_s,
        "total_s": time.perf_counter() - t0,
        "done_event": seen.done,
        "error_in_body": seen.error_in_body,
        "error": error,
    }


async def huge_answers(attack: _Attack) -> dict[str, Any]:
    """One request at a time to the huge-body or huge-event deployment, read at full speed."""
    args = attack.args
    stream = args.kind == "huge-event"
    payload: dict[str, Any] = {
        "model": args.kind,  # the deployment's name is the attack's
        "messages": [{"role": "user", "content": "go"}],
    }
    if stream:
        payload["stream"] = True
    body = json.dumps(payload).encode()
    request = _head(args.path, attack.host, attack.port, args.api_key, len(body), False) + body
    runs: list[dict[str, Any]] = []
    while attack.left() > 0.5:
        runs.append(await _fetch(attack, request))
    whole = [r for r in runs if r["complete"] and r["status"] == 200 and not r["error_in_body"]]
    unfinished = [r for r in runs if not r["finished_in_phase"]]
    return {
        "connections": len(runs),
        "requests": len(runs),
        "relayed_whole": len(whole),
        "refused_or_cut": len(runs) - len(whole) - len(unfinished),
        "unfinished_at_phase_end": len(unfinished),
        "error_in_body": sum(1 for r in runs if r["error_in_body"]),
        "statuses": sorted({r["status"] for r in runs}),
        "first_byte_s": _dist([r["first_byte_s"] for r in runs if r["first_byte_s"] is not None]),
        "total_s": _dist([r["total_s"] for r in runs if r["finished_in_phase"]]),
        "body_mib": _dist([r["body_bytes"] / MiB for r in runs]),
        "runs": runs,
    }


_ATTACKS: dict[str, Callable[[_Attack], Coroutine[Any, Any, dict[str, Any]]]] = {
    "stalled-bodies": stalled_bodies,
    "idle-flood": idle_flood,
    "stalled-readers": stalled_readers,
    "huge-body": huge_answers,
    "huge-event": huge_answers,
}


async def attack(args: argparse.Namespace) -> dict[str, Any]:
    """Runs one attack for the phase; returns what it saw."""
    started = time.perf_counter()
    doc = await _ATTACKS[args.kind](_Attack(args))
    doc.update(kind=args.kind, wall_s=time.perf_counter() - started)
    return doc


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("probe", "attack"):
        cmd = sub.add_parser(name)
        if name == "attack":
            cmd.add_argument("kind", choices=sorted(_ATTACKS))
        cmd.add_argument("origin")
        cmd.add_argument("--path", required=True)
        cmd.add_argument("--api-key", required=True)
        cmd.add_argument("--duration", type=float, default=10.0)
        cmd.add_argument("--out", type=Path)
    probe_cmd = sub.choices["probe"]
    probe_cmd.add_argument("--body", required=True)
    probe_cmd.add_argument("--rate", type=float, default=20.0)
    probe_cmd.add_argument("--timeout", type=float, default=5.0)
    attack_cmd = sub.choices["attack"]
    attack_cmd.add_argument("--connections", type=int, default=0, help="0: the attack's default")
    attack_cmd.add_argument("--size", type=int, default=8 * MiB, help="declared body (bytes)")
    args = parser.parse_args(argv)
    if args.command == "attack" and not args.connections:
        args.connections = {"stalled-bodies": 60, "idle-flood": 1100, "stalled-readers": 8}.get(
            args.kind, 1
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs ``probe`` or ``attack``; writes the JSON document."""
    args = _parse(argv)
    _raise_nofile()
    run = probe if args.command == "probe" else attack
    try:
        import uvloop
    except ImportError:
        doc = asyncio.run(run(args))
    else:
        doc = uvloop.run(run(args))
    text = json.dumps(doc)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
