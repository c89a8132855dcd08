"""Scenario 2: N concurrent SSE chat streams (default 1,000) through each target.

Upstream: 64 deltas paced 20 ms apart (the peers' streaming method), from nginx's
echo module by default (the mock's own events, replayed in C), or from the Azure
mock (``--sse-upstream mock``). Why nginx by default: at 1,000 streams the Python
mock needs about a core of its own on this 2-core machine and falls behind its own
pacing (the calibration table measures it). The load is ``bench/sse_load.py`` in
its own process, N streams kept open (see its docstring for what is timed).

Per target and round: TTFT and inter-token-gap percentiles over the measured streams,
errors, and the proxy's VmRSS idle (just before) and peak (during). Reported: added
TTFT and added gap p50/p99 against the same round's direct run, and RSS per open
stream = (peak - idle) / N.

A calibration table (first round only) shows what the harness itself can do at N
streams: the default client against direct, aiohttp's client against direct, and
direct against the Azure mock, so a reader can see whether the numbers measure
the proxy or the load generator.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from typing import Any

import targets as tg
from context import Context, say
from measure import RssSampler, cpu_seconds, median, rss_kib

__all__ = ["run"]


def _sse(
    ctx: Context,
    target: tg.Target,
    streams: int,
    duration: float,
    *,
    engine: str = "raw",
) -> dict[str, Any]:
    url = target.url + tg.chat_path(tg.SSE_DEPLOYMENT)
    out = ctx.workdir / "sse.json"
    cmd = [
        tg.PYTHON,
        str(tg.BENCH_DIR / "sse_load.py"),
        url,
        "--streams",
        str(streams),
        "--duration",
        str(duration),
        "--deployment",
        tg.SSE_DEPLOYMENT,
        "--header",
        f"api-key:{tg.client_headers(target)['api-key']}",
        "--engine",
        engine,
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"sse_load failed: {proc.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _measure(
    ctx: Context, target: tg.Target, upstream: tg.Target, streams: int, duration: float
) -> dict[str, Any]:
    before = float(rss_kib(target.pid)) if target.pid is not None else math.nan
    cpu0, up0, t0 = cpu_seconds(target.pid), cpu_seconds(upstream.pid), time.monotonic()
    with RssSampler(target.pid) as sampler:
        doc = _sse(ctx, target, streams, duration)
    wall = time.monotonic() - t0
    doc["proxy_cores"] = (cpu_seconds(target.pid) - cpu0) / wall
    doc["upstream_cores"] = (cpu_seconds(upstream.pid) - up0) / wall
    doc["wall_s"] = wall
    doc["rss_before_kib"] = before
    doc["rss_peak_kib"] = sampler.peak_kib
    return doc


def _line(key: str, doc: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.1f}"

    return (
        f"  {key:12} ttft p50 {ms(doc['ttft_ms']['p50'])} p99 {ms(doc['ttft_ms']['p99'])} ms, "
        f"gap p50 {ms(doc['gap_ms']['p50'])} p99 {ms(doc['gap_ms']['p99'])} ms, "
        f"{doc['steady_streams']} steady, {doc['errors']} errors"
    )


def summarise(
    runs: dict[str, list[dict[str, Any]]], idle_kib: dict[str, float], streams: int
) -> dict[str, dict[str, float]]:
    """Medians over rounds; added TTFT and gaps paired per round with direct.

    RSS per open stream is (highest peak of any round - RSS idle) / the streams served
    at once in that round (at most N), with the idle RSS read once, before the target's
    first stream: an allocator keeps what a round grew, so a later round's "before"
    would already hold most of the streams' memory.
    """
    direct = {row["round"]: row for row in runs.get("direct", [])}

    def get(row: dict[str, Any], dist: str, q: str) -> float:
        value = row[dist][q]
        return math.nan if value is None else float(value)

    out: dict[str, dict[str, float]] = {}
    for key, rows in runs.items():
        paired = [(r, direct[r["round"]]) for r in rows if r["round"] in direct]
        # The round whose RSS peaked (NaN for direct, which has no proxy process).
        peak = max(rows, key=lambda r: -1.0 if math.isnan(r["rss_peak_kib"]) else r["rss_peak_kib"])
        summary = {
            "errors": float(sum(r["errors"] for r in rows)),
            "steady_streams": median(float(r["steady_streams"]) for r in rows),
            "open_mean": median(float(r["open_streams"]["mean"] or math.nan) for r in rows),
            "served_mean": median(float(r["served_streams"]["mean"] or math.nan) for r in rows),
            "rss_idle_mib": idle_kib.get(key, math.nan) / 1024,
            "rss_peak_mib": peak["rss_peak_kib"] / 1024,
            # Per stream the proxy really held: one that leaves connections in its
            # accept queue holds fewer than N, and its memory is theirs alone.
            "rss_per_stream_kib": (peak["rss_peak_kib"] - idle_kib.get(key, math.nan))
            / min(float(streams), peak["served_streams"]["mean"] or float(streams)),
            "rss_per_requested_stream_kib": (peak["rss_peak_kib"] - idle_kib.get(key, math.nan))
            / streams,
            "new_conn_ttft_ms_p99": median(get(r, "new_conn_ttft_ms", "p99") for r in rows),
            "new_conn_ttft_ms_max": max(
                (get(r, "new_conn_ttft_ms", "max") for r in rows), default=math.nan
            ),
            "new_conn_unanswered": median(float(r["new_conn_unanswered"]) for r in rows),
            "client_cpu_s": median(r["client_cpu_s"] for r in rows),
            "client_cores": median(r["client_cpu_s"] / r["wall_s"] for r in rows),
            "proxy_cores": median(r["proxy_cores"] for r in rows),
            "upstream_cores": median(r["upstream_cores"] for r in rows),
        }
        for dist in ("ttft_ms", "gap_ms"):
            for q in ("p50", "p99"):
                summary[f"{dist}_{q}"] = median(get(r, dist, q) for r in rows)
                summary[f"added_{dist}_{q}"] = median(
                    get(r, dist, q) - get(d, dist, q) for r, d in paired
                )
        out[key] = summary
    return out


def run(ctx: Context, nginx_upstream: tg.Target) -> dict[str, Any]:
    """Runs the streaming scenario; returns raw runs, summary and calibration."""
    streams, duration = ctx.streams, ctx.stream_duration
    use_nginx = ctx.sse_upstream == "nginx" and bool(nginx_upstream.extra.get("echo"))
    mock = tg.start_mock(
        ctx.procs,
        ctx.workdir / "mock-sse",
        token_delay_ms=20.0,
        tokens=64,
        deployments=(tg.SSE_DEPLOYMENT,),
    )
    upstream = nginx_upstream if use_nginx else mock
    result: dict[str, Any] = {
        "streams": streams,
        "duration_s": duration,
        "upstream": "nginx echo module (mock's events, 64 x 20 ms)"
        if use_nginx
        else "Azure mock --token-delay-ms 20 --tokens 64 --uvloop",
        "targets": {},
        "calibration": {},
    }
    say(f"scenario 2: starting targets in front of {upstream.name}")
    live_all = tg.start_proxies(
        ctx.procs,
        ctx.workdir / "s2",
        upstream,
        uvloop=ctx.uvloop,
        deployments=(tg.SSE_DEPLOYMENT,),
    )
    live = [t for t in live_all if t.skipped is None]
    by_key = {t.key: t for t in live}
    for t in live_all:
        result["targets"][t.key] = {"name": t.name, "skipped": t.skipped}
    runs: dict[str, list[dict[str, Any]]] = {t.key: [] for t in live}
    # RSS before any stream: the baseline of the per-stream memory.
    idle_kib = {t.key: float(rss_kib(t.pid)) for t in live if t.pid is not None}
    try:
        for target in live if not ctx.quick else ():
            # Warm-up: a tenth of the streams, long enough for every slot to finish one.
            _sse(ctx, target, max(10, streams // 10), 1.5)
        for round_index in range(ctx.rounds):
            for key in ctx.order([t.key for t in live], round_index):
                doc = _measure(ctx, by_key[key], upstream, streams, duration)
                doc["round"] = round_index
                runs[key].append(doc)
                say(f"  round {round_index + 1}" + _line(key, doc))
            if round_index == 0 and not ctx.quick and "direct" in runs:
                baseline = {"raw client, direct (the suite's baseline, round 1)": runs["direct"][0]}
                result["calibration"] = baseline | _calibrate(ctx, upstream, mock, use_nginx)
    finally:
        tg.stop_targets(ctx.procs, live)
        if mock.proc is not None:
            ctx.procs.stop(mock.proc)
    result["runs"] = runs
    result["summary"] = summarise(runs, idle_kib, streams)
    result["idle_kib"] = idle_kib
    result["measured_streams"] = median(
        float(r["steady_streams"]) for rows in runs.values() for r in rows
    )
    return result


def _calibrate(
    ctx: Context, upstream: tg.Target, mock: tg.Target, use_nginx: bool
) -> dict[str, Any]:
    """The harness alone at N streams: which part would saturate first."""
    streams, duration = ctx.streams, ctx.stream_duration
    cal: dict[str, Any] = {}
    say("scenario 2: calibration (harness alone)")
    cal["aiohttp client, direct"] = _sse(
        ctx, tg.direct(upstream), streams, duration, engine="aiohttp"
    )
    say(_line("aiohttp-cli", cal["aiohttp client, direct"]))
    if use_nginx:
        cpu0, t0 = cpu_seconds(mock.pid), time.monotonic()
        doc = _sse(ctx, tg.direct(mock), streams, duration)
        doc["upstream_cores"] = (cpu_seconds(mock.pid) - cpu0) / (time.monotonic() - t0)
        cal["raw client, direct to the Azure mock"] = doc
        say(_line("mock-direct", cal["raw client, direct to the Azure mock"]))
    return cal
