"""Scenario 4: reload under load.

wrk at concurrency 32 against aigw (1 worker) while a background thread rewrites
the route file that serves the benchmarked path every 100 ms, in place and with
alternating content (``read_timeout`` flips, so every write is a real change: a
parse, a new table and a publish). The same run without rewrites is the reference.
Runs alternate (with, without, without, with, ...). wrk's socket errors and
non-2xx/3xx responses must all be zero; the admin status endpoint's generation
before and after says how many reloads were published during the run.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import targets as tg
from context import Context, say
from measure import median
from wrk import run_wrk, write_script

__all__ = ["run"]


def _generation(admin: str) -> int:
    with urllib.request.urlopen(admin + "/status", timeout=5) as response:
        return int(json.load(response)["generation"])


class _Rewriter(threading.Thread):
    """Rewrites one route file every *interval* seconds until stopped."""

    def __init__(self, conf_dir: Path, interval: float = 0.1) -> None:
        super().__init__(name="conf-rewriter", daemon=True)
        self.conf_dir = conf_dir
        self.interval = interval
        self.writes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            # In place, as an editor or `cp` would; aigw's settle time must cope.
            tg.write_route_file(self.conf_dir, tg.DEPLOYMENT, read_timeout=120000 + self.writes % 2)
            self.writes += 1
            next_at += self.interval
            self._stop_event.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        """Stops after the current write and waits for the thread."""
        self._stop_event.set()
        self.join()


def run(ctx: Context, upstream: tg.Target) -> dict[str, Any]:
    """Runs the reload-under-load scenario."""
    say("scenario 4: starting aigw (1 worker, admin on) in front of the fixed-body upstream")
    aigw = tg.start_aigw(
        ctx.procs,
        ctx.workdir / "s4",
        upstream.url,
        workers=1,
        deployments=(tg.DEPLOYMENT,),
        admin=True,
    )
    admin = str(aigw.extra["admin"])
    conf_dir = Path(str(aigw.extra["conf_dir"]))
    script = write_script(
        ctx.workdir / "wrk-reload.lua",
        method="POST",
        body=tg.request_body(),
        headers=tg.client_headers(aigw),
    )
    url = aigw.url + tg.chat_path()
    runs: dict[str, list[dict[str, Any]]] = {"steady": [], "reloading": []}
    try:
        if ctx.warmup:
            run_wrk(url, script=script, connections=32, duration_s=ctx.warmup)
        for round_index in range(ctx.rounds):
            for mode in ctx.order(["reloading", "steady"], round_index):
                gen0 = _generation(admin)
                rewriter = _Rewriter(conf_dir) if mode == "reloading" else None
                if rewriter is not None:
                    rewriter.start()
                try:
                    result = run_wrk(url, script=script, connections=32, duration_s=ctx.duration)
                finally:
                    if rewriter is not None:
                        rewriter.stop()
                time.sleep(0.3)  # let the last write settle and publish before reading
                row = result.as_json()
                row.update(
                    round=round_index,
                    writes=rewriter.writes if rewriter is not None else 0,
                    reloads=_generation(admin) - gen0,
                )
                runs[mode].append(row)
                say(
                    f"  round {round_index + 1} {mode:9} {result.rps:8.0f} req/s, "
                    f"errors {result.errors}, {row['writes']} writes, "
                    f"{row['reloads']} reloads published"
                )
    finally:
        if aigw.proc is not None:
            ctx.procs.stop(aigw.proc)
    steady = {r["round"]: r for r in runs["steady"]}
    summary = {
        mode: {
            "rps": median(r["rps"] for r in rows),
            "p50_ms": median(r["p50_us"] / 1000 for r in rows),
            "p99_ms": median(r["p99_us"] / 1000 for r in rows),
            "errors": float(sum(sum(r["errors"].values()) for r in rows)),
            "writes": float(sum(r["writes"] for r in rows)),
            "reloads": float(sum(r["reloads"] for r in rows)),
            "x_steady": median(
                r["rps"] / steady[r["round"]]["rps"] for r in rows if r["round"] in steady
            ),
        }
        for mode, rows in runs.items()
    }
    return {"runs": runs, "summary": summary, "access_log_lines": tg.count_access_lines(aigw.log)}
