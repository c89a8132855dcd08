"""Scenario 3: route-table scale at 10, 1,000 and 10,000 routes.

* lookup: ns per ``Router.match`` (static hit, parameter hit, miss) and per path
  normalisation, via ``bench_router.py``'s tables and loop-overhead subtraction;
* load: ``aigw check --conf-dir`` wall time on a generated conf.d (a whole process:
  interpreter start, imports, load, print; ``aigw --version`` is timed alongside as
  the start-up floor), and in-process ``Reloader(...).load_initial()``;
* reload: ``Reloader.reload`` after one file of the directory changed (parse one,
  rebuild and publish) and after one file was only touched (scan and hash all);
* RSS: the loading process's VmRSS before and after the load (table held).

Sizes are interleaved in every round, and every measurement is a fresh process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from typing import Any

import targets as tg
from context import Context, say
from measure import median
from route_scale import generate

__all__ = ["run"]


def _worker(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [tg.PYTHON, str(tg.BENCH_DIR / "route_scale.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tg.REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"route_scale {args[0]} failed: {proc.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = (time.perf_counter() - started) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-1000:]}")
    return wall


def run(ctx: Context) -> dict[str, Any]:
    """Runs the scale scenario; returns per-round raw numbers and medians per size."""
    from bench_config_load import ENV

    env = dict(os.environ, **ENV)
    dirs = {}
    for size in ctx.route_sizes:
        dirs[size] = ctx.workdir / f"routes-{size}"
        generate(dirs[size], size)
    say(f"scenario 3: generated conf.d dirs of {', '.join(map(str, ctx.route_sizes))} files")
    rows: dict[int, list[dict[str, Any]]] = {size: [] for size in ctx.route_sizes}
    lookups: list[dict[str, Any]] = []
    startup: list[float] = []
    reloads = 3 if not ctx.quick else 1
    for round_index in range(ctx.rounds):
        startup.append(_wall([tg.PYTHON, "-m", "aigw", "--version"], env))
        sizes = [str(s) for s in ctx.route_sizes]
        for key in ctx.order(sizes, round_index):
            size = int(key)
            doc = _worker("load", str(dirs[size]), "--reloads", str(reloads))
            # A 10,000-file check takes ~12 s here: once is enough to place it, and it
            # keeps the whole suite near its 10-minute budget.
            doc["check_ms"] = (
                _wall([tg.PYTHON, "-m", "aigw", "check", "--conf-dir", str(dirs[size])], env)
                if size < 5000 or round_index == 0
                else math.nan
            )
            doc["round"] = round_index
            rows[size].append(doc)
            say(
                f"  round {round_index + 1} {size:>6} files: load {doc['load_ms']:8.1f} ms, "
                f"check {doc['check_ms']:8.1f} ms, reload (1 changed) "
                f"{doc['reload_changed_ms']:7.1f} ms, RSS +"
                f"{(doc['rss_after_kib'] - doc['rss_before_kib']) / 1024:.1f} MiB"
            )
        lookups.append(_worker("lookup", "--rounds", "5" if ctx.quick else "11"))
    summary: dict[str, dict[str, float]] = {}
    for size, docs in rows.items():
        summary[str(size)] = {
            "routes": float(docs[0]["routes"]),
            "load_ms": median(d["load_ms"] for d in docs),
            "check_ms": median(d["check_ms"] for d in docs),
            "reload_changed_ms": median(d["reload_changed_ms"] for d in docs),
            "reload_changed_build_ms": median(d["reload_changed_build_ms"] for d in docs),
            "reload_touched_ms": median(d["reload_touched_ms"] for d in docs),
            "rss_delta_mib": median(
                (d["rss_after_kib"] - d["rss_before_kib"]) / 1024 for d in docs
            ),
            "rss_after_mib": median(d["rss_after_kib"] / 1024 for d in docs),
        }
        for case in ("static hit", "param hit", "miss", "normalise"):
            summary[str(size)][f"lookup_ns_{case}"] = median(
                lk["ns"][str(size)][case] for lk in lookups if str(size) in lk["ns"]
            )
    return {
        "sizes": list(ctx.route_sizes),
        "startup_ms": median(startup),
        "rows": {str(k): v for k, v in rows.items()},
        "lookups": lookups,
        "summary": summary,
    }
