"""aigw benchmark suite: every scenario, every baseline, one command.

    bench/run.sh              # full run, about 15 minutes on 2 cores
    bench/run.sh --quick      # smoke run, about 3 minutes
    .venv/bin/python bench/suite.py --only proxy --only reload   # a subset

(``bench/run.sh`` is this script run by the project's .venv python.) It installs
what it needs from Debian when missing (``apt-get install -y wrk nginx-light``,
plus ``libnginx-mod-http-echo`` if nginx-light did not pull it in; ``apt-get
update`` only if that fails) and runs everything on 127.0.0.1 on free ports:

1. ``proxy``: non-streaming chat with wrk at concurrency 1, 32, 256, and
   sustained load against a 20 ms upstream (``scenario_proxy.py``);
2. ``streams``: 1,000 concurrent SSE streams, 64 deltas 20 ms apart
   (``scenario_streams.py``, ``sse_load.py``);
3. ``routes``: route-table scale, 10 to 10,000 routes (``scenario_routes.py``);
4. ``reload``: reload under load (``scenario_reload.py``);
5. ``attacks``: issue 9's memory and connection attacks against aigw and nginx
   while a normal client measures latency (``scenario_attacks.py``, ``attacks.py``,
   ``attack_upstream.py``), 2 rounds of 10 s phases (1 round with ``--quick``),
   about 5 minutes;
6. ``access``: CPU per request of a plain route, of the same route with
   key-auth + acl + a local token limit (1,000 consumers in conf.d), and with the
   token limit in a ``redis-server`` started on a free port (``scenario_access.py``;
   installs the Debian package ``redis-server`` when missing);
7. ``balancer``: CPU per request of a two-target round-robin route against one
   target, and latency while one of two targets answers 429 to every request
   (``scenario_balancer.py``; nginx regions, 20 ms ones for latency);
8. ``models``: CPU per request of the same chat request through a model route
   (``route.models``, asked on ``/openai/v1/chat/completions``) against a path route
   (``scenario_models.py``; the bar: within 5 %).

Targets side by side: direct (the upstream alone), nginx reverse proxy, bare
aiohttp proxy (and on uvloop), aigw 1 worker and ``--workers 2`` (reported as
skipped when ``aigw serve --help`` has no ``--workers``); LiteLLM is listed as
not run. Targets alternate in every round (ABC, CBA, ...), at least 3 rounds
(1 with ``--quick``), and the report gives medians, ratios and differences
against the same round's baseline, never a lone absolute time.

Output: the markdown report on stdout (progress on stderr), the raw numbers in
``bench/results/latest.json`` and the report in ``bench/results/latest.md``.
Every child process is stopped on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import importlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SCENARIOS = ("proxy", "streams", "routes", "reload", "attacks", "access", "balancer", "models")
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


def _reexec_in_venv() -> None:
    """Re-runs this script with the project's .venv python when aigw is not importable."""
    try:
        import aigw  # noqa: F401
    except ImportError:
        venv = REPO / ".venv" / "bin" / "python"
        if venv.exists() and Path(sys.executable).resolve() != venv.resolve():
            os.execv(str(venv), [str(venv), __file__, *sys.argv[1:]])
        raise SystemExit("aigw is not importable: run `make test` (creates .venv) first") from None


def _apt_install(packages: list[str]) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", *packages]
    # apt's chatter goes to stderr: stdout is the report.
    if subprocess.run(cmd, env=env, stdout=sys.stderr, check=False).returncode == 0:
        return True
    subprocess.run(["apt-get", "update", "-q"], env=env, stdout=sys.stderr, check=False)
    return subprocess.run(cmd, env=env, stdout=sys.stderr, check=False).returncode == 0


def ensure_tools(notes: list[str]) -> None:
    """Installs wrk and nginx-light (and nginx's echo module) from Debian when missing."""
    required = []
    if shutil.which("wrk") is None:
        required.append("wrk")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        required.append("nginx-light")
    if required:
        if os.geteuid() != 0:
            raise SystemExit(f"missing {' '.join(required)}; run as root or apt-get install them")
        print(f"installing {' '.join(required)} ...", file=sys.stderr)
        if not _apt_install(required):
            raise SystemExit(f"apt-get install {' '.join(required)} failed")
    if not ECHO_MODULE.exists() and os.geteuid() == 0:
        # Debian's nginx-light depends on it; a separately installed nginx may not.
        _apt_install(["libnginx-mod-http-echo"])
    if not ECHO_MODULE.exists():
        notes.append(
            "nginx's echo module is missing: the 20 ms and SSE upstreams are the Python mock."
        )


def ensure_redis() -> None:
    """Installs Debian's redis-server when missing (the ``access`` scenario starts one)."""
    import scenario_access

    if scenario_access.redis_server_exe() is not None:
        return
    if os.geteuid() != 0:
        raise SystemExit("missing redis-server; run as root or apt-get install redis-server")
    print("installing redis-server ...", file=sys.stderr)
    if not _apt_install(["redis-server"]):
        raise SystemExit("apt-get install redis-server failed")


def _raise_nofile() -> None:
    # 1,000 streams through a proxy hold 2,000+ sockets; children inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _git() -> str:
    def out(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return proc.stdout.strip()

    rev = out("rev-parse", "--short", "HEAD") or "unknown"
    return rev + ("+dirty" if out("status", "--porcelain", "--", "aigw") else "")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _clean(value: Any) -> Any:
    """NaN is not JSON: becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.sh", description="aigw benchmark suite (see bench/suite.py's docstring)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run, about 3 minutes")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="repeatable")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3, quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5, quick 1)")
    parser.add_argument("--streams", type=int, help="concurrent SSE streams (default 1000)")
    parser.add_argument(
        "--sse-upstream",
        choices=("nginx", "mock"),
        default="nginx",
        help="paced SSE source: nginx's echo module (default) or the Azure mock",
    )
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "latest.json")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    parser.add_argument(
        "--render",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="only print the report of saved results (scenarios of later files win)",
    )
    return parser.parse_args(argv)


def _on_signal(signum: int, _frame: object) -> NoReturn:
    # SystemExit unwinds through every finally, which stops the child processes.
    raise SystemExit(128 + signum)


def _render(paths: list[Path]) -> int:
    """Prints the report of saved result files (scenarios of later files win)."""
    import report
    import scenario_proxy

    merged: dict[str, Any] = {}
    for path in paths:
        merged.update(report.load(path.read_text()))
    # Summaries are recomputed from the raw runs, so columns added since a
    # file was saved appear in its report too.
    for point in merged.get("proxy", {}).get("points", {}).values():
        for rows in point["runs"].values():
            for row in rows:  # the JSON stores NaN as null
                row.update({k: math.nan for k, v in row.items() if v is None})
        point["summary"] = scenario_proxy.summarise_point(point["runs"])
    print(_with_access(report.render(merged), merged))
    return 0


def _with_access(text: str, results: dict[str, Any]) -> str:
    """The report with the access, balancer and models sections (rendered by their own
    modules) added."""
    for name in ("access", "balancer", "models"):
        if name in results:
            module = importlib.import_module(f"scenario_{name}")
            text += "\n" + "\n".join(module.render(results[name]))
    return text


def main(argv: list[str] | None = None) -> int:
    """Runs the suite; returns the exit code (1 if a scenario failed to run)."""
    _reexec_in_venv()
    args = _parse_args(argv)
    sys.path.insert(0, str(BENCH))
    if args.render:
        return _render(args.render)
    import aiohttp
    import report
    import targets as tg
    from context import Context, say
    from wrk import wrk_version

    notes: list[str] = []
    ensure_tools(notes)
    if "access" in (args.only or SCENARIOS):
        ensure_redis()
    _raise_nofile()
    try:
        uvloop_version = version("uvloop")
    except PackageNotFoundError:
        uvloop_version = "not installed"
    procs = tg.Processes()
    atexit.register(procs.stop_all)
    # Ctrl-C must stop the children even when started from a shell that ignores
    # SIGINT for background jobs (Python keeps an inherited SIG_IGN otherwise).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
    workdir.chmod(0o755)  # nginx workers run as nobody and must reach their temp dirs
    quick = args.quick
    ctx = Context(
        quick=quick,
        rounds=args.rounds or (1 if quick else 3),
        duration=args.duration or (1 if quick else 5),
        warmup=0 if quick else 1,
        streams=args.streams or (200 if quick else 1000),
        stream_duration=2.0 if quick else 3.0,
        route_sizes=(10, 1000) if quick else (10, 1000, 10000),
        workdir=workdir,
        procs=procs,
        uvloop=uvloop_version != "not installed",
        sse_upstream=args.sse_upstream,
        notes=notes,
    )
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if quick else "full",
        "rounds": ctx.rounds,
        "duration": ctx.duration,
        "git": _git(),
        "cpus": os.cpu_count(),
        "loadavg_start": _loadavg(),
        "python": f"Python {platform.python_version()}",
        "aiohttp": aiohttp.__version__,
        "uvloop": uvloop_version,
        "nginx": tg.nginx_version(),
        "wrk": wrk_version(),
        "aigw_workers_flag": tg.aigw_supports_workers(),
        "notes": notes,
    }
    results: dict[str, Any] = {"meta": meta}
    failed = False
    selected = args.only or list(SCENARIOS)
    try:
        upstream = None
        if {"proxy", "streams", "reload", "access", "balancer", "models"} & set(selected):
            upstream = tg.start_nginx_upstream(procs, workdir / "upstream")
            say(f"upstream: nginx fixed body on {upstream.url} (echo: {upstream.extra['echo']})")
        for name in SCENARIOS:
            if name not in selected:
                continue
            try:
                if name == "proxy":
                    import scenario_proxy

                    assert upstream is not None
                    results[name] = scenario_proxy.run(ctx, upstream)
                elif name == "streams":
                    import scenario_streams

                    assert upstream is not None
                    results[name] = scenario_streams.run(ctx, upstream)
                elif name == "routes":
                    import scenario_routes

                    results[name] = scenario_routes.run(ctx)
                elif name == "attacks":
                    import scenario_attacks

                    # Its own defaults: 6 phases x 2 proxies per round keep 2 rounds ~5 min.
                    rounds = args.rounds or (1 if quick else 2)
                    results[name] = scenario_attacks.run(ctx, rounds=rounds, seconds=10.0)
                elif name in ("access", "balancer", "models"):
                    # scenario_access / _balancer / _models: the same signature.
                    module = importlib.import_module(f"scenario_{name}")
                    assert upstream is not None
                    results[name] = module.run(ctx, upstream)
                else:
                    import scenario_reload

                    assert upstream is not None
                    results[name] = scenario_reload.run(ctx, upstream)
            except Exception as exc:  # one broken scenario must not lose the others
                failed = True
                say(f"scenario {name} FAILED: {exc}")
                traceback.print_exc(file=sys.stderr)
                notes.append(f"scenario {name} failed: {str(exc).splitlines()[0][:300]}")
    finally:
        procs.stop_all()
        if args.keep_workdir:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["loadavg_end"] = _loadavg()
    text = _with_access(report.render(results), results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_clean(results), indent=1) + "\n")
    args.json.with_suffix(".md").write_text(text + "\n")
    print(text)
    say(f"raw numbers: {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # main()'s finally has already stopped every child process.
        print("interrupted: child processes stopped, no report written", file=sys.stderr)
        sys.exit(130)
