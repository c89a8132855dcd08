"""Scenario 7 (issue 12): what a balanced route costs, and what a failover costs.

    bench/run.sh --only balancer                  # in the suite
    .venv/bin/python bench/scenario_balancer.py   # alone (3 rounds of 5 s)

Regions are nginx instances: the suite's fixed-body upstream (``west``), a second
one started alike (``east``), and two that answer every request 429 with Azure's
body: ``throttled`` with ``retry-after: 1`` and ``retry-after-ms: 1000``, as an
Azure deployment past its quota does, and ``throttled-nowait`` without them (not
Azure's behaviour: the worst case). Each answers the suite's 20 ms deployment
after a 20 ms ``echo_sleep``, 429s included, so a failover there pays a real round
trip to the throttled region.

Targets, in alternating rounds (ABCDE, EDCBA, ...):

* ``direct``: ``west`` without a proxy: at the 20 ms point, one upstream round trip;
* ``one``: the suite's route file, one target (``west``), no balancer: the chain of
  every other scenario (``credentials > relay``);
* ``rr2``: the same route as a pool of two targets, round-robin, weights 100:100,
  ``failover_criteria: [error, timeout, http_429, non_idempotent]``: ``west`` and
  another deployment of the same nginx (see `VARIANTS` for why); ``rr2-regions``:
  the same pool over ``west`` and ``east``;
* ``rr2-429``: the pool of ``throttled`` and ``west``: ``throttled`` cools down for
  a second after each 429, so about one request a second pays a failover;
* ``rr2-429-nowait``: the pool of ``throttled-nowait`` and ``west``: it never cools
  down, so every other request is sent there first and fails over.

Load points: the proxy scenario's c=32 against the instant upstream (CPU per
request and requests/s: what aigw itself costs), and c=1 against the 20 ms one
(the latency one request sees, with no queueing in it). Per run, as in the proxy
scenario: aigw's CPU time per request served (user + sys from /proc),
requests/s, latency percentiles and mean; per round each target is paired with
the same round's ``one`` run (ratios, added latency), then the median over rounds
is taken. Bars: ``rr2``'s CPU per request within 5 % of ``one`` at c=32;
``rr2-429``'s added mean latency at c=1 below one upstream round trip
(``direct``'s p50 there). Any answer but 200 fails the scenario: every request
must end at a healthy region.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scenario_proxy as sp
import targets as tg
from context import Context, say
from measure import free_port
from scenario_proxy import POINTS, Point, _run_point, _warm_up, fmt, summarise_paired

__all__ = ["VARIANTS", "Variant", "render", "run"]

BASELINE = "one"
_AZURE_429 = (
    '{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation '
    "under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your "
    'current OpenAI S0 pricing tier. Please retry after 1 second."}}'
)


@dataclass(frozen=True, slots=True)
class Variant:
    """One aigw set-up.

    Attributes:
        key: Short id (JSON, progress lines).
        name: Label in the report.
        regions: The pool's regions in order (first the throttled one, if any);
            empty: the suite's one-target route, no balancer.
        points: The load points it is measured at.
    """

    key: str
    name: str
    regions: tuple[str, ...] = ()
    points: tuple[str, ...] = ("c32", "c1-20ms")


VARIANTS = (
    Variant("one", "one target, no balancer"),
    Variant("rr2", "two targets, round-robin (one nginx)", ("west", "west-b"), ("c32",)),
    Variant("rr2-regions", "two targets, round-robin (two nginx)", ("west", "east"), ("c32",)),
    Variant("rr2-429", "two targets, one answering 429 (retry-after 1 s)", ("throttled", "west")),
    Variant(
        "rr2-429-nowait",
        "two targets, one answering 429 without retry-after",
        ("throttled-nowait", "west"),
    ),
)
"""``rr2`` is the CPU bar's pool: its second target is another deployment of the same
nginx process (``west-b``), so that both routes' upstream work lands on one busy
nginx worker. ``rr2-regions`` spreads it over two nginx processes, as two regions
are: on a 2-core machine each is then idle more often, and every send to it pays
the wake-up of a sleeping process in aigw's system time, which a remote region
would not cost."""

LATENCY_POINT = Point("c1-20ms", "concurrency 1, 20 ms upstream", 1, tg.SLOW_DEPLOYMENT)
"""One request at a time to the 20 ms deployment: its latency has no queueing in it."""

_TARGET = """\
        - route_type: llm/v1/chat
          read_timeout: 120000
          auth:
            header_name: api-key
            header_value: ${{AZURE_OPENAI_KEY}}
          logging:
            log_statistics: true
          model:
            provider: azure
            name: {model}
            options:
              azure_instance: {instance}
              azure_deployment_id: {deployment}
              upstream_url: {url}/openai/deployments/{deployment}/chat/completions
"""

_POOL_ROUTE = """\
# Benchmark pool route: one deployment in two regions.
route:
  name: bench-pool-{deployment}
  paths: [/openai/deployments/{deployment}/chat/completions]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:
      balancer:
        algorithm: round-robin
        failover_criteria: [error, timeout, http_429, non_idempotent]
      targets:
{targets}"""


def pool_route(deployment: str, regions: list[tuple[str, str, str]]) -> str:
    """The suite's route for *deployment* as a pool of (region name, origin URL, suffix).

    A region's target is the deployment named *deployment* plus its suffix.
    """
    targets = "".join(
        _TARGET.format(model=deployment, deployment=deployment + suffix, instance=name, url=url)
        for name, url, suffix in regions
    )
    return _POOL_ROUTE.format(deployment=deployment, targets=targets)


def start_throttled(procs: tg.Processes, workdir: Path, *, retry_after: bool) -> tg.Target:
    """An nginx answering every request 429 with Azure's body, after 20 ms on the slow path."""
    port = free_port()
    headers = (
        "add_header retry-after 1 always;\n      add_header retry-after-ms 1000 always;"
        if retry_after
        else ""
    )
    server = f"""
    listen 127.0.0.1:{port} backlog=4096;
    location /openai/deployments/{tg.SLOW_DEPLOYMENT}/ {{
      default_type application/json;
      {headers}
      echo_status 429;
      echo_sleep 0.02;
      echo -n '{_AZURE_429}';
    }}
    location / {{
      default_type application/json;
      {headers}
      return 429 '{_AZURE_429}';
    }}"""
    key = "throttled" if retry_after else "throttled-nowait"
    conf = tg._nginx_conf(workdir, server, echo=True)
    target = tg._start_nginx(procs, workdir, conf, key, f"nginx answering 429 ({key})", port)
    status = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status = tg._post(target, tg.chat_path(), tg.request_body(), timeout=2.0)
        except OSError:
            status = 0
        if status == 429:
            return target
        time.sleep(0.05)
    raise RuntimeError(f"{target.name} did not answer 429 (last: {status})")


def start_variant(
    ctx: Context, upstream: tg.Target, variant: Variant, origins: dict[str, tuple[str, str]]
) -> tg.Target:
    """One ``aigw serve`` with its own conf.d: a route file per deployment measured."""
    workdir = ctx.workdir / f"balancer-{variant.key}"
    conf = workdir / "conf.d"
    conf.mkdir(parents=True)
    for deployment in (tg.DEPLOYMENT, tg.SLOW_DEPLOYMENT):
        if not variant.regions:
            tg.write_route_file(conf, deployment)
        else:
            regions = [(name, *origins[name]) for name in variant.regions]
            (conf / f"{deployment}.yaml").write_text(pool_route(deployment, regions))
    target = tg.start_aigw(ctx.procs, workdir, upstream.url, workers=1, deployments=())
    target.key, target.name = variant.key, variant.name
    target.extra["points"] = variant.points
    return target


# -- summary and report ----------------------------------------------------------------


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians per target, and ratios and added latency paired per round with ``one``."""
    return summarise_paired(runs, BASELINE)


def verdicts(res: dict[str, Any]) -> dict[str, Any]:
    """The two bars: rr2's CPU per request vs one; rr2-429's added mean latency vs a round trip."""
    c32 = res["points"]["c32"]["summary"]
    c1 = res["points"][LATENCY_POINT.key]["summary"]
    cpu_ratio = c32.get("rr2", {}).get("cpu_x_one", math.nan)
    round_trip = c1.get("direct", {}).get("p50_ms", math.nan)
    added = c1.get("rr2-429", {}).get("added_mean_ms", math.nan)
    return {
        "cpu_ratio": cpu_ratio,
        "cpu_pass": cpu_ratio <= 1.05,
        "round_trip_ms": round_trip,
        "failover_added_mean_ms": added,
        "failover_pass": added < round_trip,
    }


def render(res: dict[str, Any]) -> list[str]:
    """The report section (markdown lines)."""
    names = {v.key: v.name for v in VARIANTS}
    names["direct"] = "direct (no proxy)"
    out = [
        "## 7. Balancing and failover (issue 12)",
        "",
        f"{res['rounds']} alternating rounds of {res['duration']} s per load point; ratios "
        "and added latency paired per round with `one` (one target, no balancer).",
    ]
    for key in ("c32", LATENCY_POINT.key):
        point = res["points"][key]
        out += [
            "",
            f"### {point['title']}",
            "",
            "| target | req/s | CPU per request | CPU / one | req/s / one | p50 | mean "
            "| p99 | added p50 | added mean |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for target, s in point["summary"].items():
            out.append(
                f"| {names.get(target, target)} | {fmt(s['rps'], ',.0f')} "
                f"| {fmt(s['cpu_us_per_request'], '.1f', ' µs')} "
                f"| {fmt(s['cpu_x_one'], '.3f')} | {fmt(s['rps_x_one'], '.3f')} "
                f"| {fmt(s['p50_ms'], '.3f', ' ms')} | {fmt(s['mean_ms'], '.3f', ' ms')} "
                f"| {fmt(s['p99_ms'], '.3f', ' ms')} | {fmt(s['added_p50_ms'], '+.3f', ' ms')} "
                f"| {fmt(s['added_mean_ms'], '+.3f', ' ms')} |"
            )
    v = res["verdicts"]
    out += [
        "",
        f"Bar (two-target round-robin within 5 % of one target, CPU per request at c=32): "
        f"**{'PASS' if v['cpu_pass'] else 'MISS'}** ({v['cpu_ratio']:.3f} of one).",
        "Bar (one target answering 429 with retry-after costs less than one upstream round "
        "trip, added mean latency at c=1, 20 ms upstream): "
        f"**{'PASS' if v['failover_pass'] else 'MISS'}** "
        f"({v['failover_added_mean_ms']:+.3f} ms vs a {v['round_trip_ms']:.3f} ms round trip).",
        "",
    ]
    return out


def run(ctx: Context, upstream: tg.Target) -> dict[str, Any]:
    """Starts the other regions and one aigw per variant, runs the rounds."""
    if not upstream.extra.get("echo"):
        raise RuntimeError("needs nginx's echo module (libnginx-mod-http-echo) for 20 ms regions")
    points = [next(p for p in POINTS if p.key == "c32"), LATENCY_POINT]
    regions = [
        tg.start_nginx_upstream(ctx.procs, ctx.workdir / "east"),
        start_throttled(ctx.procs, ctx.workdir / "throttled", retry_after=True),
        start_throttled(ctx.procs, ctx.workdir / "throttled-nowait", retry_after=False),
    ]
    # Region -> (origin, suffix of the deployment's name there).
    origins = {
        "west": (upstream.url, ""),
        "west-b": (upstream.url, "-b"),
        "east": (regions[0].url, ""),
        "throttled": (regions[1].url, ""),
        "throttled-nowait": (regions[2].url, ""),
    }
    live: list[tg.Target] = [tg.direct(upstream)]
    result: dict[str, Any] = {"rounds": ctx.rounds, "duration": ctx.duration, "points": {}}
    try:
        for variant in VARIANTS:
            live.append(start_variant(ctx, upstream, variant, origins))
        served: dict[str, int] = {}
        if ctx.warmup:
            say("scenario balancer: warm-up")
            _warm_up(ctx, live, upstream, points[0], served)
        for point in points:
            say(f"scenario balancer: {point.title}, {ctx.rounds} rounds of {ctx.duration} s")
            measured = [t for t in live if point.key in t.extra.get("points", (point.key,))]
            runs = _run_point(ctx, point, measured, upstream, served)
            sp.refuse_errors(runs)
            result["points"][point.key] = {
                "title": point.title,
                "connections": point.connections,
                "runs": runs,
                "summary": summarise(runs),
            }
        # Proof that logging was on: one access-log line per request served.
        result["access_log_lines"] = {
            t.key: tg.count_access_lines(t.log) for t in live if t.log is not None
        }
        result["wrk_requests"] = served
    finally:
        tg.stop_targets(ctx.procs, [t for t in live if t.key != "direct"])
        tg.stop_targets(ctx.procs, regions)
    result["verdicts"] = verdicts(result)
    return result


def main() -> None:
    """Runs this scenario alone and prints its report section."""
    import argparse

    from suite import ensure_tools

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per target")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    notes: list[str] = []
    ensure_tools(notes)
    with sp.standalone(
        "aigw-balancer-",
        rounds=args.rounds,
        duration=args.duration,
        warmup=args.warmup,
        notes=notes,
    ) as (ctx, upstream):
        result = run(ctx, upstream)
    sp.report(result, render(result), args.json)


if __name__ == "__main__":
    main()
