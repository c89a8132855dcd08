"""CPU per request and req/s of aigw built from several source trees, side by side.

The proxy scenario's c=32 load point (bench/scenario_proxy.py: wrk, one
connection per client, the fixed-body nginx upstream answering at once) run
against one ``aigw serve`` per tree, all started at once, in alternating
order (A B, then B A) for a few rounds so that machine drift and a busy
neighbour fall on every tree alike. Per run: requests/s, and the aigw
process's CPU time divided by the requests it served (the figure least
disturbed by noise). Medians over the rounds are printed at the end.

    git worktree add /tmp/aigw-before c80bf45
    .venv/bin/python bench/compare_trees.py /tmp/aigw-before . --rounds 5 --duration 5

Each tree's aigw runs in this interpreter (the same dependencies) with
``PYTHONSAFEPATH=1 PYTHONPATH=<tree>``, so only the aigw package differs.
Needs wrk and nginx (``apt-get install -y wrk nginx-light``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import targets as tg
from measure import cpu_seconds, free_port
from wrk import run_wrk, write_script


def _start(procs: tg.Processes, tree: Path, workdir: Path, upstream: str, label: str) -> tg.Target:
    conf = workdir / "conf.d"
    conf.mkdir(parents=True)
    tg.write_route_file(conf, tg.DEPLOYMENT)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    env.update(
        AZURE_OPENAI_KEY=tg.UPSTREAM_KEY,
        AZURE_INSTANCE="bench",
        PYTHONSAFEPATH="1",  # no current directory on sys.path: PYTHONPATH decides
        PYTHONPATH=str(tree),
    )
    log = workdir / "access.log"
    cmd = [
        *(tg.PYTHON, "-m", "aigw", "serve", "--conf-dir", str(conf)),
        *("--listen", f"127.0.0.1:{port}", "--azure-base-url", upstream),
        *("--log-level", "info", "--admin-listen", "off", "--log-file", str(log)),
    ]
    with (workdir / "stderr.log").open("wb") as err:
        proc = procs.spawn(cmd, env=env, stderr=err, cwd=tree)
    target = tg.Target(key=label, name=label, url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    tg.wait_ready(target, path=tg.chat_path(), body=tg.request_body())
    return target


def _run(target: tg.Target, script: Path, connections: int, duration: int) -> tuple[float, float]:
    """One wrk run: (requests/s, aigw CPU µs per request)."""
    cpu_before = cpu_seconds(target.pid)
    result = run_wrk(
        target.url + tg.chat_path(), script=script, connections=connections, duration_s=duration
    )
    cpu = cpu_seconds(target.pid) - cpu_before
    if result.error_count:
        raise RuntimeError(f"{target.name}: {result.error_count} errors: {result.errors}")
    return result.rps, cpu / result.requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path, help="aigw source trees to compare")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    procs = tg.Processes()
    workdir = Path(tempfile.mkdtemp(prefix="aigw-compare-"))
    labels = [f"{i}:{tree}" for i, tree in enumerate(args.trees)]
    try:
        upstream = tg.start_nginx_upstream(procs, workdir / "upstream")
        live = [
            _start(procs, tree.resolve(), workdir / f"aigw-{i}", upstream.url, label)
            for i, (tree, label) in enumerate(zip(args.trees, labels, strict=True))
        ]
        scripts = {
            t.key: write_script(
                workdir / f"wrk-{i}.lua",
                method="POST",
                body=tg.request_body(),
                headers=tg.client_headers(t),
            )
            for i, t in enumerate(live)
        }
        for t in live:  # warm-up: pool opened, first-request costs paid
            _run(t, scripts[t.key], 256, 2)
        rows: dict[str, list[tuple[float, float]]] = {t.key: [] for t in live}
        for round_index in range(args.rounds):
            order = live if round_index % 2 == 0 else list(reversed(live))
            for t in order:
                rps, cpu_us = _run(t, scripts[t.key], args.connections, args.duration)
                rows[t.key].append((rps, cpu_us))
                print(
                    f"round {round_index + 1}  {t.key:30}  {rps:8.0f} req/s  "
                    f"{cpu_us:6.1f} µs CPU/request",
                    file=sys.stderr,
                    flush=True,
                )
        print(f"\nc={args.connections}, {args.rounds} rounds of {args.duration} s, medians:")
        first = rows[live[0].key]
        for key, values in rows.items():
            rps = statistics.median(v[0] for v in values)
            cpu_us = statistics.median(v[1] for v in values)
            # Paired per round with the first tree: drift between rounds cancels.
            cpu_ratio = statistics.median(v[1] / f[1] for v, f in zip(values, first, strict=True))
            rps_ratio = statistics.median(v[0] / f[0] for v, f in zip(values, first, strict=True))
            print(
                f"  {key:30}  {rps:8.0f} req/s  {cpu_us:6.1f} µs CPU/request  "
                f"(x first, paired per round: req/s {rps_ratio:.3f}, CPU/request {cpu_ratio:.3f})"
            )
        commits = {
            key: subprocess.run(
                ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()[:70]
            for key, tree in zip(rows, args.trees, strict=True)
        }
        for key, commit in commits.items():
            print(f"  {key}: {commit}")
    finally:
        procs.stop_all()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
