"""SSE load client: N concurrent chat streams, per-stream TTFT and every inter-token gap.

    python bench/sse_load.py URL --streams 1000 --duration 3 [--ramp 1.3] [--out FILE]

URL is the full chat-completions URL (path and ``api-version`` included). Each of
the N slots opens a stream, reads it to ``data: [DONE]`` and opens the next one,
so N streams stay open (a slot is between streams only for one request set-up).

Which streams are measured: those *started* inside the window from the end of the
ramp to ``--duration``, except each slot's first stream. The first starts are
spread over ``--ramp`` seconds (default: one stream's length at the peers' pacing,
64 x 20 ms) so the streams' 20 ms ticks are spread out, as real traffic is, rather
than 1,000 streams writing on the same tick. A slot's first stream also pays for a
new connection, which a saturated server may leave in its accept queue for a long
time; those first streams are summarised on their own (``new_conn_ttft_ms``). After
the window the slots keep opening unmeasured filler streams until every measured
stream has ended, so each measured stream lives its whole life under N open
streams; the fillers are then cut (not counted as errors). A measured stream still
open ``--max-tail`` seconds after the window is cut and counted as an error, so a
stalled proxy cannot hold the run for ever.

Measured per stream, with ``time.perf_counter`` in this process:

* TTFT: from just before the request is sent to the arrival of the first event
  that carries generated text (``"delta":{"content":"<non-empty>"``);
* inter-token gaps: between consecutive such events. Events that arrive in the
  same read share one arrival time (gap 0): that is what a client sees when a
  proxy coalesces or falls behind, so it is counted, not hidden.

Two engines, same measurements: ``raw`` (default), a minimal HTTP/1.1 keep-alive
client on an asyncio protocol, and ``aiohttp``, aiohttp's client. At 1,000 streams
x 50 tokens/s aiohttp's client saturates its own core and starts coalescing events
by itself (the suite's calibration table shows it), so the default is the raw
engine. Either runs on uvloop when it is importable. The client's own overhead is
in every number it reports, so the suite runs it against ``direct`` as well and
reports differences against that run, where the client's share cancels.

Prints one JSON document (percentiles over the measured streams, counts, errors,
client CPU time) on stdout, or writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp

# Generated text is the first key of a chat chunk's delta in Azure's (sorted) shape;
# the role chunk's delta starts with an empty content, which the check below skips.
_MARK = b'"delta":{"content":"'
_EMPTY = ord('"')
_DONE = b"data: [DONE]"

__all__ = ["StreamRecord", "main", "run", "summarise"]


@dataclass(slots=True)
class StreamRecord:
    """One stream as the client saw it (times in seconds since the run started)."""

    started: float
    measured: bool = False
    ended: float = 0.0
    ttft_ms: float | None = None
    gaps_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    done: bool = False
    aborted: bool = False  # a filler stream the client cut at the end of the run
    reused: bool = False  # sent on a kept-alive connection (not a fresh one)
    error: str | None = None


class _Plan:
    """The run's clock: ramp, measurement window, and when the load may stop."""

    def __init__(self, streams: int, duration: float, ramp: float) -> None:
        self.streams = streams
        self.ramp = ramp
        self.origin = time.perf_counter()
        self.window = (self.origin + ramp, self.origin + duration)
        self.measuring = 0  # measured streams still open
        self.in_flight = 0  # requests sent and not finished
        self.served = 0  # of those, answered: the proxy accepted and responded
        self.open_samples: list[int] = []
        self.served_samples: list[int] = []
        self.finished = asyncio.Event()
        self.max_tail = 10.0

    def begin(self, first: bool) -> bool:
        """A stream starts (*first*: the slot's first); returns whether it is measured."""
        self.in_flight += 1
        now = time.perf_counter()
        measured = not first and self.window[0] <= now < self.window[1]
        if measured:
            self.measuring += 1
        return measured

    def end(self, measured: bool) -> None:
        """A stream ended; the run is over once the window closed and none is measured."""
        self.in_flight -= 1
        if measured:
            self.measuring -= 1
        if not self.measuring and time.perf_counter() >= self.window[1]:
            self.finished.set()

    async def watch(self) -> None:
        """Samples how many streams are open during the window; ends an idle run."""
        while not self.finished.is_set():
            now = time.perf_counter()
            if now >= self.window[0]:
                self.open_samples.append(self.in_flight)
                self.served_samples.append(self.served)
            if now >= self.window[1] and not self.measuring:
                self.finished.set()
            if now >= self.window[1] + self.max_tail:
                self.finished.set()  # measured streams still open are cut: errors
            await asyncio.sleep(0.05)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    rank = (len(values) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def _dist(values: list[float]) -> dict[str, float | int | None]:
    values = sorted(values)
    return {
        "n": len(values),
        "p50": _pct(values, 50),
        "p90": _pct(values, 90),
        "p99": _pct(values, 99),
        "p999": _pct(values, 99.9),
        "max": values[-1] if values else None,
    }


class _Counter:
    """Counts token events in a byte stream, timing each; marks may span reads."""

    __slots__ = ("_last", "_t0", "_tail", "rec")

    def __init__(self, rec: StreamRecord, t0: float) -> None:
        self.rec = rec
        self._t0 = t0
        self._last = 0.0
        self._tail = b""

    def feed(self, payload: bytes, now: float) -> None:
        rec = self.rec
        text = self._tail + payload if self._tail else payload
        keep_from = len(text) - len(_MARK)
        at = text.find(_MARK)
        while at >= 0:
            nxt = at + len(_MARK)
            if nxt >= len(text):
                keep_from = at  # the byte after the mark has not arrived yet
                break
            if text[nxt] != _EMPTY:
                if rec.tokens == 0:
                    rec.ttft_ms = (now - self._t0) * 1000
                else:
                    rec.gaps_ms.append((now - self._last) * 1000)
                self._last = now
                rec.tokens += 1
            at = text.find(_MARK, nxt)
        if not rec.done and _DONE in text:
            rec.done = True
        # Keep enough bytes to find a mark (or [DONE]) cut by a read boundary.
        self._tail = text[max(keep_from, 0) :]


# -- raw engine ---------------------------------------------------------------------------


class _RawStream(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client for one slot: send, time, count, repeat.

    PERF: this is the point of the ``raw`` engine. Each read costs one callback, one
    chunked-framing step and a ``bytes.find``: no parser objects, no stream reader,
    no task wake-up per read. That keeps the client well below one core at 1,000
    streams x 50 tokens/s.
    """

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self._answered = False
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.cutting = False
        self._counter: _Counter | None = None
        self._waiter: asyncio.Future[StreamRecord] | None = None
        self._origin = 0.0
        self._head = b""
        self._in_body = False
        self._chunked = True
        self._length = 0  # Content-Length bodies (error answers)
        self._frame = b""  # undecoded chunked framing
        self._left = 0  # bytes left in the current chunk
        self._skip = 0  # the CRLF after a chunk's data
        self._status = 0
        self._keep_alive = True
        self.requests = 0  # requests sent on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._counter is not None:
            self._finish(f"connection lost: {exc or 'closed by peer'}")

    def start(self, request: bytes, origin: float, measured: bool) -> asyncio.Future[StreamRecord]:
        """Sends one request; the future resolves with its record at the body's end."""
        assert self.transport is not None
        self._origin = origin
        t0 = time.perf_counter()
        rec = StreamRecord(started=t0 - origin, measured=measured, reused=self.requests > 0)
        self._counter = _Counter(rec, t0)
        self.requests += 1
        self._waiter = asyncio.get_running_loop().create_future()
        self._head, self._in_body, self._frame = b"", False, b""
        self._left = self._skip = 0
        self.transport.write(request)
        return self._waiter

    def cut(self) -> None:
        """Ends a stream still open at the end of the run."""
        if self._counter is not None and self.transport is not None:
            self.cutting = True
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self._counter is None:
            return
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end].lower(), self._head[end + 4 :]
            self._answered = True
            self._plan.served += 1
            self._status = int(head[9:12])
            self._chunked = b"transfer-encoding: chunked" in head
            self._keep_alive = b"connection: close" not in head
            if not self._chunked:
                at = head.find(b"content-length:")
                self._length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            self._in_body = True
        if self._chunked:
            self._dechunk(data, now)
            return
        self._length -= len(data)
        self._counter.feed(data, now)
        if self._length <= 0:
            self._finish(None)

    def _dechunk(self, data: bytes, now: float) -> None:
        counter = self._counter
        assert counter is not None
        buf = self._frame + data if self._frame else data
        i, n = 0, len(buf)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                counter.feed(buf[i : i + take], now)
                i += take
                self._left -= take
                if not self._left:
                    self._skip = 2
                continue
            if self._skip:
                take = min(self._skip, n - i)
                i += take
                self._skip -= take
                continue
            eol = buf.find(b"\r\n", i)
            if eol < 0:
                break
            size = int(buf[i:eol].split(b";", 1)[0], 16)
            i = eol + 2
            if size == 0:
                # The last chunk; no server here sends trailers.
                self._frame = b""
                self._finish(None)
                return
            self._left = size
        self._frame = buf[i:]

    def _finish(self, error: str | None) -> None:
        counter, waiter = self._counter, self._waiter
        self._counter = self._waiter = None
        if counter is None or waiter is None:
            return
        rec = counter.rec
        rec.ended = time.perf_counter() - self._origin
        if self._answered:
            self._answered = False
            self._plan.served -= 1
        if self.cutting:
            rec.aborted, error = True, "still open at the end of the run (cut)"
        elif error is None and self._status != 200:
            error = f"HTTP {self._status}"
        elif error is None and not rec.done:
            error = "stream ended without [DONE]"
        rec.error = error
        if not self._keep_alive and self.transport is not None:
            self.transport.close()
        if not waiter.done():
            waiter.set_result(rec)


def _raw_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "", ""]
    return host, port, "\r\n".join(lines).encode() + body


async def _run_raw(
    url: str, plan: _Plan, body: bytes, headers: dict[str, str], records: list[StreamRecord]
) -> None:
    host, port, request = _raw_request(url, body, headers)
    loop = asyncio.get_running_loop()
    active: set[_RawStream] = set()

    async def slot(index: int) -> None:
        await asyncio.sleep(plan.ramp * index / plan.streams)
        proto: _RawStream | None = None
        first = True
        while not plan.finished.is_set():
            measured = plan.begin(first)
            first = False
            try:
                if proto is None or proto.closed:
                    _, proto = await loop.create_connection(lambda: _RawStream(plan), host, port)
                active.add(proto)
                records.append(await proto.start(request, plan.origin, measured))
            except OSError as exc:
                rec = StreamRecord(started=time.perf_counter() - plan.origin, measured=measured)
                rec.error, rec.ended = f"{type(exc).__name__}: {exc}"[:200], rec.started
                records.append(rec)
                proto = None
            finally:
                if proto is not None:
                    active.discard(proto)
                plan.end(measured)
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    async def cut_fillers() -> None:
        await plan.finished.wait()
        for proto in list(active):
            proto.cut()

    await asyncio.gather(plan.watch(), cut_fillers(), *(slot(i) for i in range(plan.streams)))


# -- aiohttp engine -------------------------------------------------------------------------


async def _aiohttp_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    plan: _Plan,
    measured: bool,
    first: bool,
) -> StreamRecord:
    t0 = time.perf_counter()
    # aiohttp keeps the slot's connection alive: only a slot's first stream opens one.
    rec = StreamRecord(started=t0 - plan.origin, measured=measured, reused=not first)
    answered = False
    counter = _Counter(rec, t0)
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            plan.served += 1
            answered = True
            if resp.status != 200:
                text = (await resp.read())[:200].decode("utf-8", "replace")
                rec.error = f"HTTP {resp.status}: {text}"
                return rec
            async for chunk in resp.content.iter_any():
                counter.feed(chunk, time.perf_counter())
            if not rec.done:
                rec.error = "stream ended without [DONE]"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        rec.ended = time.perf_counter() - plan.origin
        if answered:
            plan.served -= 1
    return rec


async def _run_aiohttp(
    url: str, plan: _Plan, body: bytes, headers: dict[str, str], records: list[StreamRecord]
) -> None:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    # No total timeout: a stream takes as long as it takes. A 60 s read gap is a hang.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def slot(index: int) -> None:
            await asyncio.sleep(plan.ramp * index / plan.streams)
            first = True
            while not plan.finished.is_set():
                measured = plan.begin(first)
                try:
                    rec = await _aiohttp_stream(session, url, body, headers, plan, measured, first)
                    first = False
                    records.append(rec)
                finally:
                    plan.end(measured)

        # Fillers run to their end here: this engine is only the calibration reference.
        await asyncio.gather(plan.watch(), *(slot(i) for i in range(plan.streams)))


_Runner = Callable[[str, _Plan, bytes, dict[str, str], list[StreamRecord]], Awaitable[None]]
_ENGINES: dict[str, _Runner] = {"raw": _run_raw, "aiohttp": _run_aiohttp}


async def run(
    url: str,
    *,
    streams: int,
    duration: float,
    ramp: float,
    body: bytes,
    headers: dict[str, str],
    engine: str = "raw",
    max_tail: float = 10.0,
) -> tuple[list[StreamRecord], list[tuple[int, int]]]:
    """Runs the load; returns every stream and the (open, served) samples of the window."""
    plan = _Plan(streams, duration, ramp)
    plan.max_tail = max_tail
    records: list[StreamRecord] = []
    await _ENGINES[engine](url, plan, body, headers, records)
    return records, list(zip(plan.open_samples, plan.served_samples, strict=True))


def summarise(
    records: list[StreamRecord],
    samples: list[tuple[int, int]],
    *,
    streams: int,
    duration: float,
    ramp: float,
    engine: str,
) -> dict[str, Any]:
    """The JSON document: percentiles over the measured streams, counts and errors."""
    measured = [r for r in records if r.measured and r.error is None]
    # A run too short to have a window (a smoke test) still reports something.
    basis = measured or [r for r in records if r.error is None]
    # A cut filler is no error; a cut measured stream is (it stalled past --max-tail).
    errors = [r.error for r in records if r.error is not None and (r.measured or not r.aborted)]
    new_conn = [r.ttft_ms for r in records if not r.reused and r.ttft_ms is not None]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "streams": streams,
        "duration_s": duration,
        "ramp_s": ramp,
        "started": len(records),
        "completed": sum(1 for r in records if r.error is None),
        "cut_fillers": sum(1 for r in records if r.aborted),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "steady_streams": len(measured),
        "basis": "measured" if measured else "all",
        "tokens_per_stream": _pct(sorted(float(r.tokens) for r in basis), 50),
        "stream_ms": _dist([(r.ended - r.started) * 1000 for r in basis]),
        "ttft_ms": _dist([r.ttft_ms for r in basis if r.ttft_ms is not None]),
        "new_conn_ttft_ms": _dist(new_conn),
        "new_conn_unanswered": sum(1 for r in records if not r.reused and r.ttft_ms is None),
        "gap_ms": _dist([g for r in basis for g in r.gaps_ms]),
        # Requests in flight, and those the server had answered (accepted and started
        # responding): a server that cannot keep up leaves the difference unaccepted.
        "open_streams": {
            "mean": sum(o for o, _ in samples) / len(samples) if samples else None,
            "min": min(o for o, _ in samples) if samples else None,
        },
        "served_streams": {
            "mean": sum(s for _, s in samples) / len(samples) if samples else None,
            "min": min(s for _, s in samples) if samples else None,
        },
        "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "uvloop": "uvloop" in sys.modules,
        "engine": engine,
    }


def _raise_nofile() -> None:
    # 1,000 streams need 1,000 sockets; a 1,024 soft limit would be cut close.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description="SSE load client (see module docstring)")
    parser.add_argument("url")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=3.0, help="end of the window (s)")
    parser.add_argument("--ramp", type=float, default=1.3, help="spread first starts (s)")
    parser.add_argument(
        "--max-tail", type=float, default=10.0, help="wait for measured streams at most (s)"
    )
    parser.add_argument("--deployment", default="gpt-4o", help="the body's model field")
    parser.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="repeatable"
    )
    parser.add_argument("--engine", choices=sorted(_ENGINES), default="raw")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)
    _raise_nofile()
    headers = {"Content-Type": "application/json"}
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "Say this is a test"}],
            "model": args.deployment,
            "stream": True,
        }
    ).encode()
    coro = run(
        args.url,
        streams=args.streams,
        duration=args.duration,
        ramp=args.ramp,
        body=body,
        headers=headers,
        engine=args.engine,
        max_tail=args.max_tail,
    )
    uvloop: Any = None
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            uvloop = None
    records, samples = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    doc = summarise(
        records,
        samples,
        streams=args.streams,
        duration=args.duration,
        ramp=args.ramp,
        engine=args.engine,
    )
    text = json.dumps(doc)
    if args.out is not None:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
