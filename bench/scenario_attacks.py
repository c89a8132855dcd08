"""Scenario 5: the memory and connection attacks of issue 9, against aigw and nginx.

One normal client (``bench/attacks.py probe``: a small non-streaming chat request
20 times a second, each on a fresh connection) runs through each phase while one
attacker (``bench/attacks.py attack``) runs an attack alone:

1. ``baseline``: no attack;
2. ``stalled-bodies``: 60 requests declaring an 8 MiB body send all but one byte,
   then nothing;
3. ``idle-flood``: 1,100 connections that send nothing (past the 1,024 descriptors
   each proxy runs with), reopened as soon as the proxy closes one;
4. ``stalled-readers``: 8 long streams (about 7 MiB each) requested on sockets with a
   4 KiB receive buffer, never read;
5. ``huge-body``: a 240 MiB non-streaming JSON answer, read at full speed, back to back
   (under aigw's default ``--max-response-size`` of 256 MiB, so what is measured is
   the memory of relaying it whole);
6. ``huge-event``: a chat stream whose one event is 64 MiB, back to back.

The upstream is ``bench/attack_upstream.py`` (small answers for the normal client,
the huge ones on their own deployments). Both proxies run 1 worker with
RLIMIT_NOFILE 1,024 (a service's usual soft limit without LimitNOFILE) and the same
5 s deadlines: aigw ``--header-timeout 5 --client-body-timeout 5
--client-send-timeout 5``; nginx ``client_header_timeout``, ``client_body_timeout``,
``send_timeout`` 5 s, ``worker_connections 1024``, proxy buffering as shipped (on).
An aigw that does not enforce a flag yet simply shows what happens without it.

Every phase runs on a freshly started proxy (no phase inherits what an earlier
attack left in the allocator, nor its connections or CPU). Per phase, proxy and
round: the normal client's p50/p99 and errors; the proxy's process-tree RSS just
before (idle, ready), sampled every 100 ms (peak), and again once the proxy has
gone idle after the attacker left (after); the proxy's CPU; how many attack
connections the proxy closed and how long after the attack stalled. Proxies
alternate within every phase (AB, BA, ...); latency ratios are paired with the same
proxy's baseline phase of the same round.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import targets as tg
from context import Context, say
from measure import RssSampler, cpu_seconds, free_port, median, rss_kib

__all__ = ["AIGW_FLAGS", "NGINX_DIRECTIVES", "PHASES", "Phase", "run", "summarise"]

DEADLINE_S = 5
FD_LIMIT = 1024
HUGE_BODY_MIB = 240
HUGE_EVENT_MIB = 64
MAX_BODY = 16 * 1024 * 1024
"""Per-request body cap on both proxies: room for the 8 MiB stalled bodies."""
PROBE_RATE = 20.0
PROBE_TIMEOUT_S = 5.0
SETTLE_MAX_S = 15.0
CLOSE_GRACE_S = 3.0
"""Extra time the stalled-connection attacks wait for the proxy to close them.

Their stall starts only once the proxy has taken the body or started the stream
(up to ~3.5 s for nginx writing 480 MiB to temp files on a busy machine): a close
right at the deadline must still be seen. They end early once every one is closed.
"""

AIGW_FLAGS = (
    f"--header-timeout {DEADLINE_S} --client-body-timeout {DEADLINE_S} "
    f"--client-send-timeout {DEADLINE_S}"
)
NGINX_DIRECTIVES = (
    f"client_header_timeout {DEADLINE_S}s; client_body_timeout {DEADLINE_S}s; "
    f"send_timeout {DEADLINE_S}s; client_max_body_size {MAX_BODY // (1024 * 1024)}m;"
)


@dataclass(frozen=True, slots=True)
class Phase:
    """One attack (or none) and the deployment its requests go to."""

    key: str
    title: str
    deployment: str = tg.DEPLOYMENT


PHASES = (
    Phase("baseline", "baseline (no attack)"),
    Phase("stalled-bodies", "60 stalled 8 MiB request bodies"),
    Phase("idle-flood", "1,100 idle connections (fd limit 1,024)"),
    Phase("stalled-readers", "8 stalled stream readers", "long-stream"),
    Phase("huge-body", f"{HUGE_BODY_MIB} MiB JSON answer", "huge-body"),
    Phase("huge-event", f"one {HUGE_EVENT_MIB} MiB SSE event", "huge-event"),
)
_DEPLOYMENTS = (tg.DEPLOYMENT, "long-stream", "huge-body", "huge-event")

# Run the proxy under a fixed descriptor limit; exec keeps the pid (RSS and CPU are read by pid).
_FD_WRAPPER = (
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT})); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def _limited(cmd: list[str]) -> list[str]:
    return [tg.PYTHON, "-c", _FD_WRAPPER, *cmd]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("STATE_DIRECTORY", None)  # would turn on aigw's last-known-good persistence
    env.update(extra)
    return env


# -- processes ------------------------------------------------------------------------------


def _start_upstream(ctx: Context) -> tg.Target:
    workdir = ctx.workdir / "attack-upstream"
    workdir.mkdir(parents=True, exist_ok=True)
    port_file, log = workdir / "port", workdir / "upstream.log"
    cmd = [tg.PYTHON, str(tg.BENCH_DIR / "attack_upstream.py"), "--port-file", str(port_file)]
    cmd += ["--huge-body-mib", str(HUGE_BODY_MIB), "--huge-event-mib", str(HUGE_EVENT_MIB)]
    with log.open("wb") as out:
        proc = ctx.procs.spawn(cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT, cwd=tg.REPO)
    url = f"http://127.0.0.1:{tg.wait_for_port_file(proc, port_file, log, 'attack upstream')}"
    return tg.Target(key="upstream-attack", name="attack upstream", url=url, proc=proc, log=log)


def _start_aigw(ctx: Context, upstream: tg.Target) -> tg.Target:
    workdir = ctx.workdir / "attack-aigw"
    conf = workdir / "conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    for deployment in _DEPLOYMENTS:
        tg.write_route_file(conf, deployment, max_request_body_size=MAX_BODY)
    port = free_port()
    log, err = workdir / "access.log", workdir / "stderr.log"
    cmd = [tg.PYTHON, "-m", "aigw", "serve", "--conf-dir", str(conf)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--azure-base-url", upstream.url]
    cmd += ["--log-level", "info", "--admin-listen", "off", *AIGW_FLAGS.split()]
    stdout: int = subprocess.DEVNULL
    if tg.aigw_supports_log_file():
        cmd += ["--log-file", str(log)]
    else:
        stdout = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    env = _env(AZURE_OPENAI_KEY=tg.UPSTREAM_KEY, AZURE_INSTANCE="bench")
    with err.open("ab") as errf:
        proc = ctx.procs.spawn(_limited(cmd), env=env, stdout=stdout, stderr=errf, cwd=tg.REPO)
    if stdout != subprocess.DEVNULL:
        os.close(stdout)
    target = tg.Target(key="aigw-1", name="aigw 1 worker", url=f"http://127.0.0.1:{port}")
    target.proc, target.log = proc, log
    target.extra["stderr"] = str(err)
    tg.wait_ready(target, path=tg.chat_path(), body=tg.request_body(), logs=err)
    return target


def _nginx_conf(workdir: Path, port: int, upstream: str) -> str:
    scratch = tg.nginx_scratch_paths(workdir)
    # The suite's other nginx targets are tuned for throughput (16,384 connections,
    # 65,536 descriptors); this one runs under the same descriptor limit as aigw.
    return f"""
worker_processes 1;
worker_rlimit_nofile {FD_LIMIT};
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections {FD_LIMIT}; }}
http {{
  access_log off;
  server_tokens off;
  {scratch}
  {NGINX_DIRECTIVES}
  upstream up {{ server {upstream.removeprefix("http://")}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header api-key "{tg.UPSTREAM_KEY}";
      proxy_read_timeout 600s;
    }}
  }}
}}
"""


def _start_nginx(ctx: Context, upstream: tg.Target) -> tg.Target:
    workdir = ctx.workdir / "attack-nginx"
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # nginx's workers run as nobody and write temp files here
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(_nginx_conf(workdir, port, upstream.url))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    check = subprocess.run([nginx, "-t", "-q", "-c", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected {conf}: {check.stderr.strip()}")
    with (workdir / "stderr.log").open("ab") as err:
        proc = ctx.procs.spawn(_limited([nginx, "-c", str(conf)]), stderr=err)
    target = tg.Target(key="nginx", name="nginx reverse proxy", url=f"http://127.0.0.1:{port}")
    target.proc, target.log = proc, workdir / "error.log"
    tg.wait_ready(target, path=tg.chat_path(), body=tg.request_body())
    return target


# -- one phase --------------------------------------------------------------------------------


def _settle(pid: int) -> float:
    """Seconds until the proxy is idle again (under 5% of a core), at most SETTLE_MAX_S."""
    start = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - start < SETTLE_MAX_S:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        if now - last < 0.0125:
            break
        last = now
    return time.monotonic() - start


def _client(ctx: Context, args: list[str], out: Path) -> subprocess.Popen[bytes]:
    cmd = [tg.PYTHON, str(tg.BENCH_DIR / "attacks.py"), *args, "--out", str(out)]
    with out.with_suffix(".stderr").open("wb") as err:
        return ctx.procs.spawn(cmd, stderr=err, cwd=tg.REPO)


def _finish(ctx: Context, proc: subprocess.Popen[bytes], out: Path, timeout: float) -> Any:
    try:
        proc.wait(timeout)
    finally:
        ctx.procs.stop(proc)
    if proc.returncode != 0 or not out.exists():
        stderr = out.with_suffix(".stderr").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{out.stem} failed ({proc.returncode}): {stderr}")
    return json.loads(out.read_text())


def _phase(
    ctx: Context, target: tg.Target, phase: Phase, round_index: int, seconds: float
) -> dict[str, Any]:
    assert target.pid is not None
    pid = target.pid
    api_key = tg.client_headers(target)["api-key"]
    stem = ctx.workdir / "attack-runs" / f"r{round_index}-{phase.key}-{target.key}"
    stem.parent.mkdir(exist_ok=True)
    common = [target.url, "--api-key", api_key]
    before = float(rss_kib(pid))
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    with RssSampler(pid) as sampler:
        attacker = None
        if phase.key != "baseline":
            path = tg.chat_path(phase.deployment)
            grace = CLOSE_GRACE_S if phase.key in ("stalled-bodies", "stalled-readers") else 0
            attack_args = ["attack", phase.key, *common, "--path", path]
            attack_args += ["--duration", str(seconds + grace)]
            attacker = _client(ctx, attack_args, stem.with_suffix(".attack.json"))
        probe_args = ["probe", *common, "--path", tg.chat_path(), "--body", tg.request_body()]
        probe_args += ["--duration", str(seconds), "--rate", str(PROBE_RATE)]
        probe_args += ["--timeout", str(PROBE_TIMEOUT_S)]
        prober = _client(ctx, probe_args, stem.with_suffix(".probe.json"))
        limit = seconds + CLOSE_GRACE_S + PROBE_TIMEOUT_S + 60
        probe = _finish(ctx, prober, stem.with_suffix(".probe.json"), limit)
        attack = None
        if attacker is not None:
            attack = _finish(ctx, attacker, stem.with_suffix(".attack.json"), limit)
    wall = time.monotonic() - t0
    cores = (cpu_seconds(pid) - cpu0) / wall
    busy_after = _settle(pid)
    after = float(rss_kib(pid))
    exited = target.proc is not None and target.proc.poll() is not None
    probe.pop("latencies_ms", None)  # the distribution is kept; the raw list is not needed
    return {
        "round": round_index,
        "probe": probe,
        "attack": attack,
        "rss_before_kib": before,
        "rss_peak_kib": sampler.peak_kib,
        "rss_after_kib": after,
        "proxy_cores": cores,
        "busy_after_s": busy_after,
        "proxy_exited": exited,
        "wall_s": wall,
    }


def _line(key: str, row: dict[str, Any]) -> str:
    lat = row["probe"]["latency_ms"]

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    attack = row["attack"] or {}
    closed = (
        f", closed {attack['closed_by_proxy']}/{attack['connections']}"
        if "closed_by_proxy" in attack
        else ""
    )
    if "relayed_whole" in attack:
        closed = (
            f", {attack['relayed_whole']}/{attack['requests']} relayed whole"
            f" ({attack['unfinished_at_phase_end']} unfinished)"
        )
    errors = sum(row["probe"]["errors"].values())
    return (
        f"{key:6} p50 {ms(lat['p50'])} p99 {ms(lat['p99'])} ms, {errors} errors, "
        f"RSS peak {row['rss_peak_kib'] / 1024:.0f} MiB, after {row['rss_after_kib'] / 1024:.0f}"
        f" MiB, {row['proxy_cores']:.2f} cores, idle after {row['busy_after_s']:.1f} s{closed}"
    )


# -- summary ----------------------------------------------------------------------------------


def _pct(row: dict[str, Any], q: str) -> float:
    value = row["probe"]["latency_ms"][q]
    return math.nan if value is None else float(value)


def _closed_detail(attacks: list[dict[str, Any]]) -> dict[str, Any]:
    """Attack connections the proxy closed, and after how long (from the stall)."""
    total = sum(a["connections"] for a in attacks)
    closed = sum(a["closed_by_proxy"] for a in attacks)
    after = [a["close_after_s"] for a in attacks if a["close_after_s"]["n"]]
    return {
        "closed": closed,
        "connections": total,
        "close_after_p50_s": median(float(d["p50"]) for d in after),
        "close_after_max_s": max((float(d["max"]) for d in after), default=math.nan),
    }


def _answers(attacks: list[dict[str, Any]]) -> str:
    merged: dict[str, int] = {}
    for attack in attacks:
        for status, count in attack.get("answers", {}).items():
            merged[status] = merged.get(status, 0) + count
    return ", ".join(f"{status} \u00d7 {count}" for status, count in sorted(merged.items()))


def _detail(phase: str, attacks: list[dict[str, Any]]) -> str:
    """What the attacker saw, in a few words (every round together)."""
    if phase == "stalled-bodies":
        sent = sum(a["body_sent"] for a in attacks)
        total = sum(a["connections"] for a in attacks)
        return f"bodies sent {sent}/{total}; answers: {_answers(attacks)}"
    if phase == "stalled-readers":
        return f"answers: {_answers(attacks)}"
    if phase == "idle-flood":
        held = max(a["proxy_held_max"] for a in attacks)
        queued = max(a["listen_queue_max"] for a in attacks)
        reopened = sum(a["reopened"] for a in attacks)
        failed = sum(a["connect_failed"] for a in attacks)
        return (
            f"proxy held ≤ {held:,}, listen queue ≤ {queued:,}; "
            f"{reopened:,} reopened, {failed:,} connects failed"
        )
    requests = sum(a["requests"] for a in attacks)
    whole = sum(a["relayed_whole"] for a in attacks)
    cut = sum(a["refused_or_cut"] for a in attacks)
    unfinished = sum(a["unfinished_at_phase_end"] for a in attacks)
    statuses = sorted({s for a in attacks for s in a["statuses"]})
    first = median(float(a["first_byte_s"]["p50"] or math.nan) for a in attacks)
    whole_s = median(float(a["total_s"]["p50"] or math.nan) for a in attacks)
    text = f"{requests} requests (HTTP {'/'.join(map(str, statuses))}): {whole} whole"
    errored = sum(a["error_in_body"] for a in attacks)
    if cut:
        text += f", {cut} refused or cut"
    if errored:
        text += f" ({errored} with an error in the body)"
    if unfinished:
        text += f", {unfinished} unfinished at phase end"
    return text + f"; first body byte p50 {_secs(first)}, end p50 {_secs(whole_s)}"


def _secs(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 0.1 else f"{value:.2f} s"


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per phase and proxy: medians over rounds, ratios paired with the round's baseline."""
    out: dict[str, dict[str, Any]] = {}
    for phase, by_proxy in runs.items():
        out[phase] = {}
        for key, rows in by_proxy.items():
            base = {r["round"]: r for r in runs.get("baseline", {}).get(key, [])}
            paired = [(r, base[r["round"]]) for r in rows if r["round"] in base]
            errors: dict[str, int] = {}
            for row in rows:
                for kind, count in row["probe"]["errors"].items():
                    errors[kind] = errors.get(kind, 0) + count
            summary: dict[str, Any] = {
                "p50_ms": median(_pct(r, "p50") for r in rows),
                "p99_ms": median(_pct(r, "p99") for r in rows),
                "max_ms": max((_pct(r, "max") for r in rows), default=math.nan),
                "x_p50": median(_pct(r, "p50") / _pct(b, "p50") for r, b in paired),
                "x_p99": median(_pct(r, "p99") / _pct(b, "p99") for r, b in paired),
                "sent": sum(r["probe"]["sent"] for r in rows),
                "errors": sum(errors.values()),
                "error_kinds": errors,
                "rss_before_mib": median(r["rss_before_kib"] / 1024 for r in rows),
                "rss_peak_mib": median(r["rss_peak_kib"] / 1024 for r in rows),
                "rss_above_mib": median(
                    (r["rss_peak_kib"] - r["rss_before_kib"]) / 1024 for r in rows
                ),
                "rss_after_mib": median(r["rss_after_kib"] / 1024 for r in rows),
                "proxy_cores": median(r["proxy_cores"] for r in rows),
                "busy_after_s": max(r["busy_after_s"] for r in rows),
                "proxy_exited": any(r["proxy_exited"] for r in rows),
            }
            attacks = [r["attack"] for r in rows if r["attack"]]
            if attacks and "closed_by_proxy" in attacks[0]:
                summary.update(_closed_detail(attacks))
            if attacks:
                summary["detail"] = _detail(phase, attacks)
            out[phase][key] = summary
    return out


def run(ctx: Context, *, rounds: int, seconds: float) -> dict[str, Any]:
    """Runs every phase against aigw and nginx; returns raw runs, summary and settings."""
    result: dict[str, Any] = {
        "rounds": rounds,
        "phase_s": seconds,
        "probe": f"{PROBE_RATE:g} req/s, fresh connection each, {PROBE_TIMEOUT_S:g} s timeout",
        "fd_limit": FD_LIMIT,
        "deadline_s": DEADLINE_S,
        "close_grace_s": CLOSE_GRACE_S,
        "aigw_flags": AIGW_FLAGS,
        "nginx_directives": NGINX_DIRECTIVES + f" worker_connections {FD_LIMIT};",
        "max_request_body_size": MAX_BODY,
        "huge_body_mib": HUGE_BODY_MIB,
        "huge_event_mib": HUGE_EVENT_MIB,
        "phases": {p.key: p.title for p in PHASES},
        "targets": {},
    }
    say("scenario 5: starting the attack upstream, aigw and nginx")
    upstream = _start_upstream(ctx)
    starters = {"aigw-1": _start_aigw, "nginx": _start_nginx}
    live: dict[str, tg.Target] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p.key: {} for p in PHASES}
    try:
        turn = 0
        for round_index in range(rounds):
            for phase in PHASES:
                say(f"scenario 5: round {round_index + 1}, {phase.title}")
                for key in ctx.order(list(starters), turn):
                    # A fresh proxy per phase: no phase inherits the memory an earlier
                    # attack left in the allocator, nor its connections or CPU.
                    target = live[key] = starters[key](ctx, upstream)
                    result["targets"][key] = {"name": target.name}
                    row = _phase(ctx, target, phase, round_index, seconds)
                    assert target.proc is not None
                    ctx.procs.stop(target.proc)
                    del live[key]
                    runs[phase.key].setdefault(key, []).append(row)
                    say("  " + _line(key, row))
                turn += 1
    finally:
        for target in live.values():
            if target.proc is not None:
                ctx.procs.stop(target.proc)
        if upstream.proc is not None:
            ctx.procs.stop(upstream.proc)
    result["runs"] = runs
    result["summary"] = summarise(runs)
    return result
