"""Scenario 6 (issue 11): what consumer keys, ACLs and token quotas cost per request.

    bench/run.sh --only access                               # in the suite
    .venv/bin/python bench/scenario_access.py --breakdown   # plugin by plugin

Three ``aigw serve`` processes (1 worker each) in front of the suite's fixed-body
nginx upstream (its answer carries ``usage``: 20 total tokens, so the limiter
charges every request), measured at the proxy scenario's c=32 point in
alternating rounds (ABC, CBA, ...):

* ``plain``: the route as every other scenario writes it, no access plugins (the
  baseline);
* ``local``: the same route file plus ``key-auth`` (``key_names: [api-key,
  authorization]``), ``acl`` (``allow: [chat]``) and ``ai-rate-limiting-advanced``
  (``identifier: consumer``, ``strategy: local``, sliding windows of 60 s and
  1 day with limits no run can reach); conf.d also holds a ``consumers:`` file of
  1,000 consumers, the client's key being one in the middle of it;
* ``redis``: as ``local`` with ``strategy: redis`` against a ``redis-server``
  started here on a free port (no persistence).

Every target gets the very same wrk script: the suite's client sends
``api-key: client-key-not-for-upstream``, which the plain route replaces with the
upstream key, and which the consumers file gives to one consumer. Per run: the
aigw process's CPU time per request served (user + sys from /proc, as in the
proxy scenario), requests/s and latency; per round, each target's figures are
paired with the same round's ``plain`` run (ratios and added latency), then the
median is taken. A run with any non-2xx answer (a 401 or a 429 would make the
run cheaper, not dearer) fails the scenario.

Proof that the plugins worked: after the rounds, one request per target reads
the ``x-ratelimit-*`` headers (present on ``local`` and ``redis``, remaining
below the limit, i.e. charged), and a request with an unknown key must be
refused with 401. For ``redis``: the redis-server's own CPU per request and the
commands it ran per request (``INFO commandstats``).
"""

from __future__ import annotations

import hashlib
import http.client
import math
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import scenario_proxy as sp
import targets as tg
from context import Context, say
from measure import cpu_seconds, free_port
from scenario_proxy import POINTS, _run_point, _warm_up, fmt, summarise_paired

__all__ = [
    "BREAKDOWN",
    "CONSUMERS",
    "VARIANTS",
    "Variant",
    "redis_server_exe",
    "render",
    "run",
    "start_variant",
]

CONSUMERS = 1000
"""Consumers in conf.d: key lookup must not depend on how many there are."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One aigw set-up: which access plugins the route file gets, and how many consumers.

    Attributes:
        key: Short id (JSON, progress lines).
        name: Label in the report.
        plugins: Among ``key-auth``, ``acl``, ``limit`` (the token limit).
        strategy: The token limit's ``strategy`` (``local`` or ``redis``).
        consumers: Consumers in conf.d (0: no consumers file).
        hide_headers: The token limit's ``hide_client_headers``.
    """

    key: str
    name: str
    plugins: tuple[str, ...] = ()
    strategy: str = "local"
    consumers: int = CONSUMERS
    hide_headers: bool = False


_ALL = ("key-auth", "acl", "limit")
VARIANTS = (
    Variant("plain", "plain route (no access plugins)", consumers=0),
    Variant("local", "key-auth + acl + token limit, strategy local", _ALL),
    Variant("redis", "key-auth + acl + token limit, strategy redis", _ALL, "redis"),
)
"""What the suite runs: the issue's three set-ups."""

BREAKDOWN = (
    VARIANTS[0],
    Variant("key-auth", "key-auth", ("key-auth",)),
    Variant("key-auth+acl", "key-auth + acl", ("key-auth", "acl")),
    VARIANTS[1],
    Variant("local-1c", "as local, 1 consumer in conf.d", _ALL, consumers=1),
    Variant("local-nohdr", "as local, hide_client_headers", _ALL, hide_headers=True),
)
"""What ``scenario_access.py --breakdown`` runs: each plugin's share, and 1 vs 1,000
consumers (the key lookup is a digest's dict probe: the count must not matter)."""

BASELINE = "plain"

# Limits no run reaches (at ~10k req/s x 20 tokens, 1e12 tokens last 57 days):
# the limiter admits, counts and charges every request, and never refuses one.
_LIMITS = (10**12, 10**13)
_WINDOWS = (60, 86400)

_PLUGIN_ENTRIES = {
    "key-auth": """\
  - name: key-auth
    config:
      key_names: [api-key, authorization]
""",
    "acl": """\
  - name: acl
    config:
      allow: [chat]
""",
    "limit": """\
  - name: ai-rate-limiting-advanced
    config:
      identifier: consumer
      strategy: {strategy}
      window_type: sliding
      tokens_count_strategy: total_tokens
      llm_providers:
        - name: azure
          limit: [{limits}]
          window_size: [{windows}]{options}
""",
}


def access_plugins(variant: Variant, redis_port: int | None = None) -> str:
    """The plugin entries appended to the route file's ``plugins:`` list."""
    options = ""
    if variant.strategy == "redis":
        assert redis_port is not None
        options += f"\n      redis: {{host: 127.0.0.1, port: {redis_port}, timeout: 50}}"
    if variant.hide_headers:
        options += "\n      hide_client_headers: true"
    return "".join(
        _PLUGIN_ENTRIES[name].format(
            strategy=variant.strategy,
            limits=", ".join(str(n) for n in _LIMITS),
            windows=", ".join(str(n) for n in _WINDOWS),
            options=options,
        )
        for name in variant.plugins
    )


def consumers_file(count: int, client_key: str) -> str:
    """A decK-style ``consumers:`` list; consumer ``count // 2`` holds *client_key*.

    Every other consumer's key is stored as its digest (``key_hash``), the rest in
    plain text (hashed at load), so both credential forms are in the index.
    """
    lines = ["# Benchmark consumers: the client's key is one in the middle.", "consumers:"]
    for index in range(count):
        key = client_key if index == count // 2 else f"bench-consumer-key-{index:05d}"
        lines.append(f"  - username: team-{index:05d}")
        lines.append("    keyauth_credentials:")
        if index % 2 and index != count // 2:
            lines.append(f"      - key_hash: sha256:{hashlib.sha256(key.encode()).hexdigest()}")
        else:
            lines.append(f"      - key: {key}")
        lines.append("    acls:")
        lines.append("      - group: chat")
    return "\n".join(lines) + "\n"


# -- redis-server ------------------------------------------------------------------------


def redis_server_exe() -> str | None:
    """Path of ``redis-server`` (Debian's package puts it in /usr/bin), or None."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def _redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One command in RESP over a fresh connection; the raw reply (bulk or simple)."""
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
            if reply.startswith((b"+", b"-", b":")) and reply.endswith(b"\r\n"):
                return reply
            if reply.startswith(b"$"):
                head, _, rest = reply.partition(b"\r\n")
                if len(rest) >= int(head[1:]) + 2:
                    return rest[: int(head[1:])]
    return reply


def start_redis(procs: tg.Processes, workdir: Path) -> tg.Target:
    """``redis-server`` on a free port, no persistence, waited for until it answers PING.

    Raises:
        RuntimeError: not installed, or not answering within 10 s.
    """
    exe = redis_server_exe()
    if exe is None:
        raise RuntimeError("redis-server is missing: apt-get install -y redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "redis.log"
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir), "--logfile", str(log), "--daemonize", "no"]
    proc = procs.spawn(cmd)
    target = tg.Target(
        key="redis", name="redis-server", url=f"redis://127.0.0.1:{port}", proc=proc, log=log
    )
    target.extra["port"] = port
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if _redis_command(port, "PING") == b"+PONG\r\n":
                version = _redis_command(port, "INFO", "server").decode()
                target.extra["version"] = next(
                    (
                        ln.split(":", 1)[1].strip()
                        for ln in version.splitlines()
                        if ln.startswith("redis_version:")
                    ),
                    "?",
                )
                return target
        except OSError:
            pass
        time.sleep(0.05)
    procs.stop(proc)
    tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
    raise RuntimeError(f"redis-server did not start on port {port}:\n{tail}")


def _redis_calls(port: int) -> int:
    """Commands the server has run since start (sum of ``INFO commandstats`` calls)."""
    total = 0
    for line in _redis_command(port, "INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_") and not line.startswith(("cmdstat_info", "cmdstat_ping")):
            total += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


# -- targets -----------------------------------------------------------------------------


def start_variant(
    ctx: Context, upstream: tg.Target, variant: Variant, redis_port: int | None
) -> tg.Target:
    """One ``aigw serve`` with its own conf.d: the suite's route file, plus the plugins."""
    workdir = ctx.workdir / f"access-{variant.key}"
    conf = workdir / "conf.d"
    conf.mkdir(parents=True)
    route = tg.write_route_file(conf, tg.DEPLOYMENT)
    # The suite's route file ends with the plugins list: entries appended to it
    # make the very same route with the access plugins in front.
    with route.open("a") as fh:
        fh.write(access_plugins(variant, redis_port))
    if variant.consumers:
        text = consumers_file(variant.consumers, tg.CLIENT_KEY)
        (conf / "consumers.yaml").write_text(text)
    # The route files are in place: start_aigw writes none (no deployments) and
    # waits for a 200 with the suite's client headers, i.e. with the consumer key.
    target = tg.start_aigw(ctx.procs, workdir, upstream.url, workers=1, deployments=())
    target.key, target.name = variant.key, variant.name
    target.extra["variant"] = variant
    return target


def _probe(target: tg.Target, api_key: str) -> dict[str, Any]:
    """One chat request with *api_key*: its status and ``x-ratelimit-*`` headers."""
    host, port = target.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {**tg.CLIENT_HEADERS, "api-key": api_key}
        conn.request("POST", tg.chat_path(), body=tg.request_body().encode(), headers=headers)
        response = conn.getresponse()
        response.read()
        found = {k.lower(): v for k, v in response.getheaders()}
        return {
            "status": response.status,
            **{k: v for k, v in found.items() if k.startswith("x-ratelimit-")},
        }
    finally:
        conn.close()


def _check_plugins(live: list[tg.Target]) -> dict[str, Any]:
    """Proof the plugins ran: quota headers (charged), and a stranger refused."""
    checks: dict[str, Any] = {}
    for target in live:
        good = _probe(target, tg.CLIENT_KEY)
        stranger = _probe(target, "not-a-consumer-key")
        checks[target.key] = {"consumer_key": good, "unknown_key_status": stranger["status"]}
        variant: Variant = target.extra["variant"]
        plugins = variant.plugins
        if "key-auth" in plugins and stranger["status"] != 401:
            raise RuntimeError(f"{target.key}: unknown key answered {stranger['status']}, not 401")
        if "limit" not in plugins:
            continue
        limit = good.get("x-ratelimit-limit-tokens")
        remaining = good.get("x-ratelimit-remaining-tokens")
        if variant.hide_headers:
            continue
        if limit is None or remaining is None or not int(remaining) < int(limit):
            raise RuntimeError(f"{target.key}: the limiter did not charge: {good}")
    return checks


# -- summary and report ----------------------------------------------------------------


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians per target, and ratios and added latency paired per round with ``plain``."""
    return summarise_paired(runs, BASELINE)


def render(res: dict[str, Any]) -> list[str]:
    """The report section (markdown lines)."""
    out = [
        "## 6. Consumers and token quotas (issue 11): CPU per request at c=32",
        "",
        f"conf.d of `local` and `redis` also holds {res['consumers']:,} consumers; "
        f"{res['rounds']} alternating rounds of {res['duration']} s; ratios and added "
        "latency paired per round with `plain`.",
        "",
        "| target | req/s | CPU per request | CPU / plain | added CPU | req/s / plain "
        "| p50 | p99 | added p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {v.key: v.name for v in (*VARIANTS, *BREAKDOWN)}
    for key, s in res["summary"].items():
        out.append(
            f"| {names.get(key, key)} | {fmt(s['rps'], ',.0f')} "
            f"| {fmt(s['cpu_us_per_request'], '.1f', ' µs')} | {fmt(s['cpu_x_plain'], '.3f')} "
            f"| {fmt(s['cpu_added_us'], '+.1f', ' µs')} | {fmt(s['rps_x_plain'], '.3f')} "
            f"| {fmt(s['p50_ms'], '.2f', ' ms')} | {fmt(s['p99_ms'], '.2f', ' ms')} "
            f"| {fmt(s['added_p50_ms'], '+.2f', ' ms')} |"
        )
    local = res["summary"].get("local", {}).get("cpu_x_plain", math.nan)
    verdict = "PASS" if local <= 1.10 else "MISS"
    out += [
        "",
        f"Bar (local within 10 % of plain, CPU per request): **{verdict}** ({local:.3f} of plain).",
    ]
    redis = res.get("redis")
    if redis:
        out.append(
            f"redis-server {redis['version']}: {fmt(redis['cpu_us_per_request'], '.1f', ' µs')} "
            f"of its own CPU and {fmt(redis['commands_per_request'], '.2f')} commands per "
            "request of the `redis` target."
        )
    out.append("")
    return out


def run(
    ctx: Context, upstream: tg.Target, variants: tuple[Variant, ...] = VARIANTS
) -> dict[str, Any]:
    """Starts redis-server and one aigw per variant, runs the rounds; raw runs and summary."""
    point = next(p for p in POINTS if p.key == "c32")
    redis = start_redis(ctx.procs, ctx.workdir / "redis")
    say(f"scenario access: redis-server {redis.extra['version']} on {redis.url}")
    live: list[tg.Target] = []
    try:
        for variant in variants:
            live.append(start_variant(ctx, upstream, variant, redis.extra["port"]))
        served: dict[str, int] = {}
        if ctx.warmup:
            say("scenario access: warm-up")
            _warm_up(ctx, live, upstream, point, served)
        calls0, redis_cpu0 = _redis_calls(redis.extra["port"]), cpu_seconds(redis.pid)
        redis_served0 = served.get("redis", 0)
        say(f"scenario access: {point.title}, {ctx.rounds} rounds of {ctx.duration} s")
        runs = _run_point(ctx, point, live, upstream, served)
        redis_requests = served.get("redis", 0) - redis_served0
        redis_cpu = cpu_seconds(redis.pid) - redis_cpu0
        calls = _redis_calls(redis.extra["port"]) - calls0
        sp.refuse_errors(runs)
        checks = _check_plugins(live)
        lines = {t.key: tg.count_access_lines(t.log) for t in live}
    finally:
        tg.stop_targets(ctx.procs, live)
        if redis.proc is not None:
            ctx.procs.stop(redis.proc)
    return {
        "consumers": CONSUMERS,
        "variants": {v.key: asdict(v) for v in variants},
        "rounds": ctx.rounds,
        "duration": ctx.duration,
        "connections": point.connections,
        "limits": list(_LIMITS),
        "windows": list(_WINDOWS),
        "runs": runs,
        "summary": summarise(runs),
        "checks": checks,
        "access_log_lines": lines,
        "wrk_requests": served,
        "redis": None
        if redis_requests == 0
        else {
            "version": redis.extra["version"],
            "cpu_us_per_request": redis_cpu / redis_requests * 1e6 if redis_requests else math.nan,
            "commands_per_request": calls / redis_requests if redis_requests else math.nan,
        },
    }


def main() -> None:
    """Runs this scenario alone; ``--breakdown`` runs each plugin's share instead."""
    import argparse

    from suite import ensure_redis, ensure_tools

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--breakdown", action="store_true", help="plugin by plugin")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    notes: list[str] = []
    ensure_tools(notes)
    ensure_redis()
    with sp.standalone(
        "aigw-access-", rounds=args.rounds, duration=args.duration, warmup=1, notes=notes
    ) as (ctx, upstream):
        result = run(ctx, upstream, BREAKDOWN if args.breakdown else VARIANTS)
    sp.report(result, render(result), args.json)


if __name__ == "__main__":
    main()
