"""Where the access scenario's added CPU goes: py-spy on aigw under wrk c=32.

Starts the nginx upstream (and redis-server) and one aigw per chosen variant of
``scenario_access`` (same route, same consumers file), then for each: a warm-up,
one wrk run at c=32 while ``py-spy record --format raw`` samples the aigw
process, and the aigw CPU per request of that run from /proc. Each function's
inclusive share of the samples times that CPU per request gives its cost in µs
per request; the functions of the given modules (default: the consumer and quota
stages) are listed with their self and inclusive cost.

    .venv/bin/python bench/profile_access.py --variant local --duration 10
    .venv/bin/python bench/profile_access.py --variant redis --match aigw/quotas

Needs wrk, nginx, redis-server (for ``redis``) and py-spy (``pip install py-spy``);
py-spy attaching to another process needs root or ptrace permission.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import scenario_access as sa
import targets as tg
from measure import cpu_seconds
from scenario_proxy import POINTS, standalone
from wrk import run_wrk, write_script


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    return found


def _frames(raw: Path) -> tuple[Counter[str], Counter[str], int]:
    """(inclusive samples per function, self samples per function, total samples)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")]  # drop line numbers
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return inclusive, own, total


def profile(target: tg.Target, script: Path, duration: int, rate: int, out: Path) -> float:
    """Records *target* under wrk c=32; returns the run's aigw CPU µs per request."""
    assert target.pid is not None
    # --nonblocking: the sampled process is not paused, so its CPU per request holds.
    cmd = [_py_spy(), "record", "--format", "raw", "--rate", str(rate), "--nonblocking"]
    spy = subprocess.Popen(
        [*cmd, "-d", str(duration + 1), "-p", str(target.pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    cpu0 = cpu_seconds(target.pid)
    point = next(p for p in POINTS if p.key == "c32")
    result = run_wrk(
        target.url + tg.chat_path(),
        script=script,
        connections=point.connections,
        duration_s=duration,
    )
    cpu = cpu_seconds(target.pid) - cpu0
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    if result.error_count:
        raise RuntimeError(f"{target.key}: {result.errors}")
    return cpu / result.requests * 1e6


def _print_diff(profiles: dict[str, tuple[Counter[str], int, float]], top: int) -> None:
    """Self µs per request of every function, the first variant against each other one.

    Async stages show little inclusive time (a coroutine is on the stack only while it
    runs), so the added cost is best found as differences of self time.
    """
    (base_key, (base_own, base_total, base_cpu)), *others = profiles.items()
    for key, (own, total, cpu_us) in others:
        print(f"\nself µs per request, {key} minus {base_key} ({cpu_us - base_cpu:+.1f} µs in all)")
        frames = set(own) | set(base_own)
        diff = {f: own[f] / total * cpu_us - base_own[f] / base_total * base_cpu for f in frames}
        for frame in sorted(frames, key=lambda f: -abs(diff[f]))[:top]:
            print(f"{diff[frame]:+8.1f}  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    by_key = {v.key: v for v in (*sa.VARIANTS, *sa.BREAKDOWN)}
    keys = list(by_key)
    parser.add_argument("--variant", action="append", choices=keys, help="repeatable")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument(
        "--match", action="append", help="path fragments of the frames to list (repeatable)"
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    matches = args.match or ["aigw/consumers", "aigw/quotas"]
    with standalone("aigw-profile-", rounds=1, duration=args.duration, warmup=2) as (
        ctx,
        upstream,
    ):
        redis = sa.start_redis(ctx.procs, ctx.workdir / "redis")
        profiles: dict[str, tuple[Counter[str], int, float]] = {}
        for key in args.variant or ["plain", "local"]:
            variant = by_key[key]
            target = sa.start_variant(ctx, upstream, variant, redis.extra["port"])
            script = write_script(
                ctx.workdir / f"wrk-{key}.lua",
                method="POST",
                body=tg.request_body(),
                headers=tg.client_headers(target),
            )
            run_wrk(target.url + tg.chat_path(), script=script, connections=256, duration_s=2)
            raw = ctx.workdir / f"{key}.raw"
            cpu_us = profile(target, script, args.duration, args.rate, raw)
            inclusive, own, total = _frames(raw)
            profiles[key] = (own, total, cpu_us)
            print(f"\n{variant.name}: {cpu_us:.1f} µs CPU per request, {total} samples")
            print(f"{'inclusive':>10} {'self':>8}  function (µs per request)")
            listed = [f for f in inclusive if any(m in f for m in matches)]
            for frame in sorted(listed, key=lambda f: -inclusive[f])[: args.top]:
                print(
                    f"{inclusive[frame] / total * cpu_us:10.1f} "
                    f"{own[frame] / total * cpu_us:8.1f}  {frame}"
                )
            if target.proc is not None:
                ctx.procs.stop(target.proc)
        if len(profiles) > 1:
            _print_diff(profiles, args.top)


if __name__ == "__main__":
    main()
