"""Scenario 1: non-streaming chat through each target, with wrk.

Load points:

* concurrency 1, 32 and 256 against the fixed-body nginx upstream (it answers at
  once, so what is measured is the proxy);
* concurrency 32 *paced*: each connection waits 0-64 ms (32 on average) after
  every answer (about 1,000 req/s offered, below every target's capacity). wrk's closed loop at c=32
  saturates a one-core Python proxy, and its "added latency" is then queueing
  (32 / throughput), not what the proxy adds to one request; paced, it is;
* sustained load at concurrency 256 against a 20 ms upstream (the peers' "sustained
  RPS @ 20 ms"): the upper bound is 256 / 20 ms = 12,800 req/s, which ``direct``
  shows the upstream stand-in reaches, so the proxies are what limits.

Every target first gets a warm-up run, then each load point gets ``rounds``
measured runs per target in alternating order. Per run: wrk's requests/s, latency
p50/p90/p99/p99.9 and errors; the proxy's process-tree VmRSS sampled every 100 ms
(peak) and right after the run (after); the CPU the proxy and the upstream used.
Added latency is computed per round against that round's direct run (so both see
the same machine noise), then the median over rounds is taken.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import targets as tg
from context import Context, say
from measure import RssSampler, cpu_seconds, median, rss_kib
from wrk import WrkResult, run_wrk, write_script

__all__ = ["POINTS", "Point", "run"]


@dataclass(frozen=True, slots=True)
class Point:
    """One load point: how many connections, and which upstream behaviour."""

    key: str
    title: str
    connections: int
    deployment: str
    delay_ms: int = 0
    """Pause of each connection between an answer and its next request (0: none)."""


POINTS = (
    Point("c1", "concurrency 1", 1, tg.DEPLOYMENT),
    Point("c32", "concurrency 32", 32, tg.DEPLOYMENT),
    Point(
        "c32paced",
        "concurrency 32, paced (0-64 ms pause per connection: ~1,000 req/s offered)",
        32,
        tg.DEPLOYMENT,
        delay_ms=32,
    ),
    Point("c256", "concurrency 256", 256, tg.DEPLOYMENT),
    Point("sustained", "sustained, 20 ms upstream, concurrency 256", 256, tg.SLOW_DEPLOYMENT),
)


def _one_run(
    target: tg.Target, upstream: tg.Target, point: Point, duration: int, script: Path
) -> tuple[WrkResult, dict[str, float]]:
    # A target may be asked on a path of its own (scenario_models: the v1 path).
    url = target.url + target.extra.get("path", tg.chat_path(point.deployment))
    cpu0, up0, t0 = cpu_seconds(target.pid), cpu_seconds(upstream.pid), time.monotonic()
    with RssSampler(target.pid) as sampler:
        result = run_wrk(url, script=script, connections=point.connections, duration_s=duration)
    wall = time.monotonic() - t0
    extra = {
        "proxy_cores": (cpu_seconds(target.pid) - cpu0) / wall,
        "upstream_cores": (cpu_seconds(upstream.pid) - up0) / wall,
        "rss_peak_kib": sampler.peak_kib,
        "rss_after_kib": math.nan,
    }
    if target.pid is not None:
        time.sleep(0.1)  # let the last responses flush and connections close
        extra["rss_after_kib"] = float(rss_kib(target.pid))
    return result, extra


def _script(ctx: Context, point: Point, target: tg.Target) -> Path:
    return write_script(
        ctx.workdir / f"wrk-{point.deployment}-{point.delay_ms}-{target.key}.lua",
        method="POST",
        body=tg.request_body(point.deployment),
        headers=tg.client_headers(target),
        delay_ms=point.delay_ms,
    )


def _warm_up(
    ctx: Context, live: list[tg.Target], upstream: tg.Target, point: Point, served: dict[str, int]
) -> None:
    """One short run per target at the highest concurrency before anything is measured.

    It opens the upstream pool as wide as any later run needs and gets every process
    past its first-request costs (lazy imports, cache fills, allocator growth).
    """
    warm = Point("warmup", "warm-up", 256, point.deployment)
    for target in live:
        script = _script(ctx, warm, target)
        result, _ = _one_run(target, upstream, warm, ctx.warmup, script)
        served[target.key] = served.get(target.key, 0) + result.requests


def _run_point(
    ctx: Context,
    point: Point,
    live: list[tg.Target],
    upstream: tg.Target,
    served: dict[str, int],
) -> dict[str, list[dict[str, Any]]]:
    scripts = {t.key: _script(ctx, point, t) for t in live}
    by_key = {t.key: t for t in live}
    runs: dict[str, list[dict[str, Any]]] = {t.key: [] for t in live}
    for round_index in range(ctx.rounds):
        for key in ctx.order([t.key for t in live], round_index):
            result, extra = _one_run(by_key[key], upstream, point, ctx.duration, scripts[key])
            served[key] = served.get(key, 0) + result.requests
            row = result.as_json()
            row.update(extra, round=round_index)
            runs[key].append(row)
            say(
                f"  {point.key:9} round {round_index + 1} {key:12} {result.rps:9.0f} req/s "
                f"p50 {result.p50_us / 1000:7.2f} ms p99 {result.p99_us / 1000:7.2f} ms "
                f"errors {result.error_count}"
            )
    return runs


def summarise_point(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians over rounds, with ratios and added latency paired per round with direct."""
    direct = {row["round"]: row for row in runs.get("direct", [])}
    out: dict[str, dict[str, float]] = {}
    for key, rows in runs.items():
        paired = [(row, direct[row["round"]]) for row in rows if row["round"] in direct]
        out[key] = {
            "rps": median(r["rps"] for r in rows),
            "p50_ms": median(r["p50_us"] / 1000 for r in rows),
            "p99_ms": median(r["p99_us"] / 1000 for r in rows),
            "x_direct": median(r["rps"] / d["rps"] for r, d in paired if d["rps"]),
            "added_p50_ms": median((r["p50_us"] - d["p50_us"]) / 1000 for r, d in paired),
            "added_p99_ms": median((r["p99_us"] - d["p99_us"]) / 1000 for r, d in paired),
            "errors": float(sum(sum(r["errors"].values()) for r in rows)),
            "rss_peak_mib": median(r["rss_peak_kib"] / 1024 for r in rows),
            "rss_after_mib": median(r["rss_after_kib"] / 1024 for r in rows),
            "proxy_cores": median(r["proxy_cores"] for r in rows),
            # The least noise-sensitive figure: CPU the proxy spent per request served.
            "cpu_us_per_request": median(
                r["proxy_cores"] / r["rps"] * 1e6 for r in rows if r["rps"]
            ),
            "upstream_cores": median(r["upstream_cores"] for r in rows),
        }
    # Ratios against the baselines, paired per round as well.
    for base in ("nginx", "bare", "aigw-1"):
        base_rows = {row["round"]: row for row in runs.get(base, [])}
        for key, rows in runs.items():
            pairs = [(r, base_rows[r["round"]]) for r in rows if r["round"] in base_rows]
            out[key][f"x_{base}"] = median(r["rps"] / b["rps"] for r, b in pairs if b["rps"])
    return out


def cpu_us(row: dict[str, Any]) -> float:
    """aigw's CPU microseconds per request served in one run (NaN when nothing was served)."""
    return float(row["proxy_cores"] / row["rps"] * 1e6) if row["rps"] else math.nan


def summarise_paired(
    runs: dict[str, list[dict[str, Any]]], baseline: str
) -> dict[str, dict[str, float]]:
    """Medians per target, and ratios and added figures paired per round with *baseline*
    (the keys name it: ``cpu_x_{baseline}``, ``rps_x_{baseline}``)."""
    base = summarise_point(runs)
    by_round = {row["round"]: row for row in runs.get(baseline, [])}
    out: dict[str, dict[str, float]] = {}
    for key, rows in runs.items():
        pairs = [(r, by_round[r["round"]]) for r in rows if r["round"] in by_round]
        s = base[key]
        out[key] = {
            "rps": s["rps"],
            "p50_ms": s["p50_ms"],
            "p99_ms": s["p99_ms"],
            "mean_ms": median(r["mean_us"] / 1000 for r in rows),
            "cpu_us_per_request": s["cpu_us_per_request"],
            "errors": s["errors"],
            "rss_peak_mib": s["rss_peak_mib"],
            f"cpu_x_{baseline}": median(cpu_us(r) / cpu_us(p) for r, p in pairs),
            "cpu_added_us": median(cpu_us(r) - cpu_us(p) for r, p in pairs),
            f"rps_x_{baseline}": median(r["rps"] / p["rps"] for r, p in pairs if p["rps"]),
            "added_p50_ms": median((r["p50_us"] - p["p50_us"]) / 1000 for r, p in pairs),
            "added_p99_ms": median((r["p99_us"] - p["p99_us"]) / 1000 for r, p in pairs),
            "added_mean_ms": median((r["mean_us"] - p["mean_us"]) / 1000 for r, p in pairs),
        }
    return out


def refuse_errors(runs: dict[str, list[dict[str, Any]]]) -> None:
    """Raises if any measured run got a non-2xx answer or a socket error: its numbers
    would not be those of the proxying being measured."""
    errors = {k: sum(sum(r["errors"].values()) for r in rows) for k, rows in runs.items()}
    if any(errors.values()):
        raise RuntimeError(f"non-2xx answers or socket errors during the runs: {errors}")


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """*value* for a report table; an em dash when there is none."""
    return "—" if value is None or math.isnan(value) else f"{value:{spec}}{suffix}"


def run(ctx: Context, upstream: tg.Target) -> dict[str, Any]:
    """Runs every load point; returns raw runs and summaries for the report and JSON."""
    result: dict[str, Any] = {"points": {}, "targets": {}, "upstream": {}}
    groups: list[tuple[tg.Target, list[Point]]] = []
    if upstream.extra.get("echo"):
        groups.append((upstream, list(POINTS)))
        result["upstream"]["sustained"] = "nginx + echo_sleep 20 ms"
    else:
        # No echo module: the 20 ms upstream is the Python mock on uvloop.
        groups.append((upstream, [p for p in POINTS if p.key != "sustained"]))
        mock = tg.start_mock(
            ctx.procs, ctx.workdir / "mock-20ms", latency_ms=20.0, deployments=(tg.SLOW_DEPLOYMENT,)
        )
        groups.append((mock, [p for p in POINTS if p.key == "sustained"]))
        result["upstream"]["sustained"] = "Azure mock --latency-ms 20 --uvloop"
    for group_index, (up, points) in enumerate(groups):
        deployments = (tg.DEPLOYMENT, tg.SLOW_DEPLOYMENT)
        say(f"scenario 1: starting targets in front of {up.name}")
        live_all = tg.start_proxies(
            ctx.procs,
            ctx.workdir / f"s1-{group_index}",
            up,
            uvloop=ctx.uvloop,
            deployments=deployments if up is upstream else (tg.SLOW_DEPLOYMENT,),
        )
        live = [t for t in live_all if t.skipped is None]
        for t in live_all:
            result["targets"][t.key] = {"name": t.name, "skipped": t.skipped}
        served: dict[str, int] = {}
        try:
            if ctx.warmup:
                say("scenario 1: warm-up")
                _warm_up(ctx, live, up, points[0], served)
            for point in points:
                say(f"scenario 1: {point.title}")
                runs = _run_point(ctx, point, live, up, served)
                result["points"][point.key] = {
                    "title": point.title,
                    "connections": point.connections,
                    "runs": runs,
                    "summary": summarise_point(runs),
                }
        finally:
            tg.stop_targets(ctx.procs, live)
        for t in live:
            if t.key.startswith("aigw"):
                # Proof that logging was on: one access-log line per request served.
                lines = tg.count_access_lines(t.log)
                info = result["targets"][t.key]
                info["access_log_lines"] = info.get("access_log_lines", 0) + lines
                info["wrk_requests"] = info.get("wrk_requests", 0) + served.get(t.key, 0)
    return result


@contextmanager
def standalone(
    prefix: str, *, rounds: int, duration: int, warmup: int, notes: list[str] | None = None
) -> Iterator[tuple[Context, tg.Target]]:
    """The context and the nginx upstream of a scenario run on its own (its ``main()``):
    a scratch directory under *prefix* that nginx's workers (nobody) can reach; every
    process is stopped and the directory removed on the way out."""
    procs = tg.Processes()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    ctx = Context(
        quick=False,
        rounds=rounds,
        duration=duration,
        warmup=warmup,
        streams=0,
        stream_duration=0,
        route_sizes=(),
        workdir=workdir,
        procs=procs,
        uvloop=True,
        sse_upstream="nginx",
        notes=[] if notes is None else notes,
    )
    try:
        yield ctx, tg.start_nginx_upstream(procs, workdir / "upstream")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def report(result: dict[str, Any], lines: list[str], json_path: Path | None) -> None:
    """Prints a standalone run's report section; writes its raw *result* to *json_path*."""
    if json_path:
        json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print("\n".join(lines))
