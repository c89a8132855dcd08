"""Run wrk (Debian's ``wrk`` package) and read its results as numbers, not text.

wrk's human summary rounds latencies to two decimals in mixed units, so the
generated Lua script adds a ``done()`` hook that prints one JSON line (prefixed
``WRK_JSON``) with the request count, every error counter and the latency
percentiles in microseconds, straight from wrk's HdrHistogram-like store.

No ``response()`` hook is defined on purpose: defining one makes wrk parse every
response in Lua, which would make the load generator itself slower. wrk still
counts responses with status >= 400 as ``status`` errors (its "Non-2xx or 3xx
responses" line) without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["WrkResult", "run_wrk", "write_script", "wrk_version"]

_MARKER = "WRK_JSON "

_DONE_HOOK = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run, as numbers.

    Attributes:
        requests: Completed requests.
        duration_s: Measured duration.
        errors: wrk's counters: connect, read, write, status (>= 400), timeout.
        p50_us / p90_us / p99_us / p999_us / mean_us / max_us: Latency, microseconds.
    """

    requests: int
    duration_s: float
    errors: dict[str, int]
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    mean_us: float
    max_us: float

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        """Socket errors plus non-2xx/3xx responses."""
        return sum(self.errors.values())

    def as_json(self) -> dict[str, Any]:
        """Raw numbers for latest.json."""
        data = asdict(self)
        data["rps"] = round(self.rps, 1)
        return data


def _lua_string(text: str) -> str:
    """A double-quoted Lua literal; anything but plain printable ASCII as a \\ddd escape."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append(char if 32 <= byte < 127 and char not in '"\\' else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def write_script(
    path: Path, *, method: str, body: str, headers: dict[str, str], delay_ms: int = 0
) -> Path:
    """Writes a wrk Lua script that sends *body* with *headers* and reports JSON.

    With *delay_ms*, each connection waits on average that long after an
    answer before its next request (wrk's ``delay()`` hook): a paced load
    instead of wrk's default closed loop. The pause is uniform in
    [0, 2 x delay_ms]: a fixed pause would keep connections that started
    together in lockstep, arriving in bursts of the whole concurrency.
    """
    lines = [f"wrk.method = {_lua_string(method)}", f"wrk.body = {_lua_string(body)}"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    if delay_ms:
        lines.append(f"function delay() return math.random(0, {2 * int(delay_ms)}) end")
    path.write_text("\n".join(lines) + "\n" + _DONE_HOOK)
    return path


def run_wrk(
    url: str, *, script: Path, connections: int, duration_s: float, threads: int = 1
) -> WrkResult:
    """Runs wrk against *url* (its path and query are what wrk requests).

    One thread by default: wrk in C drives far more than any proxy here reaches
    from one core, and on a 2-core machine every core wrk does not take is one
    the measured proxy can use.

    Raises:
        RuntimeError: wrk failed or printed no result line.
    """
    threads = max(1, min(threads, connections))
    # wrk's -d takes whole seconds at best (its units are s, m, h).
    duration = f"{max(1, round(duration_s))}s"
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARKER):
            raw = json.loads(line[len(_MARKER) :])
            lat = raw["latency_us"]
            return WrkResult(
                requests=int(raw["requests"]),
                duration_s=raw["duration_us"] / 1e6,
                errors={k: int(v) for k, v in raw["errors"].items()},
                p50_us=float(lat["p50"]),
                p90_us=float(lat["p90"]),
                p99_us=float(lat["p99"]),
                p999_us=float(lat["p999"]),
                mean_us=float(lat["mean"]),
                max_us=float(lat["max"]),
            )
    raise RuntimeError(
        f"wrk gave no result (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout}"
    )


def wrk_version() -> str:
    """wrk's version banner, for the report header."""
    exe = shutil.which("wrk")
    if exe is None:
        return "missing"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"
