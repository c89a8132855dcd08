"""Route-table scale worker: one fresh process per measurement, JSON on stdout.

    python bench/route_scale.py generate DIR N        # write N route files
    python bench/route_scale.py load DIR [--reloads K]
    python bench/route_scale.py lookup [--rounds R]

``load`` times ``aigw.reload.Reloader(...).load_initial()`` on DIR, reads this
process's VmRSS before and after (the table held), then times ``Reloader.reload``
K times after (a) rewriting one file with alternating content (parse one file,
rebuild and publish the table) and (b) touching one file's mtime only (every
file is still read and hashed; nothing is published). A fresh process per size
keeps one size's garbage out of the next size's RSS.

``lookup`` reuses ``bench/bench_router.py`` (the same tables, cases and
loop-overhead subtraction) with fewer rounds, interleaving sizes in each round.

The suite (``scenario_routes.py``) drives these; they can be run by hand as well.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench_config_load import ENV, TEMPLATE

__all__ = ["generate", "main"]


def _rss_kib() -> int:
    with open("/proc/self/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def file_name(i: int) -> str:
    """Name of route file *i* (lexical order = numeric order)."""
    return f"route-{i:05}.yaml"


def generate(conf_dir: Path, count: int) -> None:
    """Writes *count* typical route files (bench_config_load's template) to *conf_dir*."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (conf_dir / file_name(i)).write_text(TEMPLATE.format(i=i))


def _load(conf_dir: Path, reloads: int) -> dict[str, Any]:
    from aigw.logs import configure_logging
    from aigw.reload import Reloader

    # The reload events would land on stdout, which carries this worker's JSON.
    configure_logging("critical", stream=open(os.devnull, "w"))  # noqa: SIM115
    gc.collect()
    rss_before = _rss_kib()
    started = time.perf_counter()
    reloader = Reloader(conf_dir, ENV)
    report = reloader.load_initial()
    load_ms = (time.perf_counter() - started) * 1000
    gc.collect()
    rss_after = _rss_kib()
    assert not report.rejected, report.rejected[:1]
    count = report.routes
    target = conf_dir / file_name(count // 2)
    original = target.read_text()

    async def timed_reloads() -> tuple[list[float], list[float], list[float]]:
        changed, touched, build = [], [], []
        for k in range(reloads):
            target.write_text(original + f"# revision {k % 2}\n")
            t0 = time.perf_counter()
            rep = await reloader.reload("watch")
            changed.append((time.perf_counter() - t0) * 1000)
            build.append(rep.build_ms)
            assert rep.published and rep.routes == count, rep
        for _ in range(reloads):
            os.utime(target)
            t0 = time.perf_counter()
            rep = await reloader.reload("watch")
            touched.append((time.perf_counter() - t0) * 1000)
            assert not rep.published, rep
        return changed, touched, build

    try:
        changed, touched, build = asyncio.run(timed_reloads())
    finally:
        target.write_text(original)
    return {
        "routes": count,
        "load_ms": round(load_ms, 2),
        "load_build_ms": report.build_ms,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "reload_changed_ms": statistics.median(changed) if changed else None,
        "reload_changed_build_ms": statistics.median(build) if build else None,
        "reload_touched_ms": statistics.median(touched) if touched else None,
    }


def _lookup(rounds: int) -> dict[str, Any]:
    import bench_router as br

    calls = {size: br.cases(size) for size in br.SIZES}
    baseline = partial(len, "")
    samples: dict[tuple[int, str], list[float]] = {(s, c): [] for s in br.SIZES for c in br.CASES}
    overhead: list[float] = []
    # Interleaved like bench_router.main: a burst of machine noise hits every column.
    for _ in range(rounds):
        overhead.append(br.time_round(baseline))
        for size in br.SIZES:
            for case in br.CASES:
                samples[size, case].append(br.time_round(calls[size][case]))
    base = statistics.median(overhead)
    return {
        "loop_overhead_ns": base,
        "param_routes": len(br.PARAM_ROUTES),
        "ns": {
            str(size): {case: statistics.median(samples[size, case]) - base for case in br.CASES}
            for size in br.SIZES
        },
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description="route-table scale worker")
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("dir", type=Path)
    gen.add_argument("count", type=int)
    load = sub.add_parser("load")
    load.add_argument("dir", type=Path)
    load.add_argument("--reloads", type=int, default=3)
    lookup = sub.add_parser("lookup")
    lookup.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        generate(args.dir, args.count)
        return 0
    result = _load(args.dir, args.reloads) if args.cmd == "load" else _lookup(args.rounds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
