"""Scenario 8 (issue 13): what routing by the body's ``model`` costs per request.

    bench/run.sh --only models --rounds 5 --duration 4      # in the suite
    .venv/bin/python bench/scenario_models.py --rounds 5    # alone

Three ``aigw serve`` processes (1 worker each) in front of the suite's fixed-body
nginx upstream, measured at the proxy scenario's c=32 point in alternating rounds
(ABC, CBA, ...), every target sent the very same chat body (``"model": "gpt-4o"``)
with the suite's client headers:

* ``path``: the suite's path route (``paths: [/openai/deployments/gpt-4o/chat/completions]``,
  ``route_type: llm/v1/chat``), asked on that path with an api-version: the baseline,
  the route as every other scenario writes it;
* ``model``: the same route file with ``models: [gpt-4o]`` in place of the path (and
  the target's ``route_type`` left to its default, ``auto``), asked on
  ``/openai/v1/chat/completions``: the gateway reads the body, takes its ``model``,
  finds the route and hands it the parsed body (the v1 upstream call has no api-version);
* ``model-classic``: that model route asked on its classic deployment path
  (``/openai/deployments/gpt-4o/chat/completions?api-version=…``): the route's ``auto``
  operation taken from the path.

Per run: the aigw process's CPU time per request served (user + sys from /proc, as in
the proxy scenario), requests/s and latency; per round, each target's figures are
paired with the same round's ``path`` run, then the median is taken. The bar: model
routing within 5 % of path routing in CPU per request. A run with any non-2xx answer
fails the scenario, and each target's last access-log line must name the route and the
path it was asked on (proof the model route, not a fallback, served).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import scenario_proxy as sp
import targets as tg
from context import Context, say
from scenario_proxy import POINTS, _run_point, _warm_up, fmt, summarise_paired

__all__ = ["BAR", "VARIANTS", "Variant", "model_route_file", "render", "run"]

BAR = 1.05
"""Model routing may cost at most 5 % more CPU per request than path routing."""

V1_CHAT_PATH = "/openai/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Variant:
    """One aigw set-up and the path its requests are sent to.

    Attributes:
        key: Short id (JSON, progress lines).
        name: Label in the report.
        model_route: The route file claims ``models: [gpt-4o]`` instead of a path.
        path: Path and query of every request.
    """

    key: str
    name: str
    model_route: bool
    path: str


VARIANTS = (
    Variant("path", "path route, classic path", False, tg.chat_path()),
    Variant("model", "model route, v1 path (body model)", True, V1_CHAT_PATH),
    Variant("model-classic", "model route, classic path", True, tg.chat_path()),
)
BASELINE = "path"


def model_route_file(conf_dir: Path, deployment: str) -> Path:
    """The suite's route file for *deployment*, made a model route: ``models`` in place of
    ``paths``/``methods``, the target's ``route_type`` left to its default (``auto``)."""
    path = tg.write_route_file(conf_dir, deployment)
    text = path.read_text()
    for old, new in (
        (
            f"  paths: [/openai/deployments/{deployment}/chat/completions]\n  methods: [POST]\n",
            f"  models: [{deployment}]\n",
        ),
        ("        - route_type: llm/v1/chat\n          read_timeout", "        - read_timeout"),
    ):
        if old not in text:
            raise RuntimeError(f"the suite's route file changed shape: {old!r} not in it")
        text = text.replace(old, new)
    path.write_text(text)
    return path


def start_variant(ctx: Context, upstream: tg.Target, variant: Variant) -> tg.Target:
    """One ``aigw serve`` with its own conf.d holding the variant's route file."""
    workdir = ctx.workdir / f"models-{variant.key}"
    conf = workdir / "conf.d"
    conf.mkdir(parents=True)
    if variant.model_route:
        model_route_file(conf, tg.DEPLOYMENT)
    else:
        tg.write_route_file(conf, tg.DEPLOYMENT)
    # start_aigw writes no route file (no deployments) and waits for a 200 on the
    # classic path, which a model route serves as well.
    target = tg.start_aigw(ctx.procs, workdir, upstream.url, workers=1, deployments=())
    target.key, target.name = variant.key, variant.name
    target.extra["path"] = variant.path  # scenario_proxy's runs ask this path
    target.extra["variant"] = variant
    return target


def _last_access_line(log: Path | None) -> dict[str, Any]:
    """The last access-log line aigw wrote to *log*."""
    if log is None or not log.exists():
        return {}
    last: dict[str, Any] = {}
    with log.open("rb") as fh:
        for raw in fh:
            if b'"event":"request"' in raw or b'"event": "request"' in raw:
                last = json.loads(raw)
    return last


def _check_routing(live: list[tg.Target]) -> dict[str, Any]:
    """Proof each target was served by the route it was meant to be: route and path."""
    checks: dict[str, Any] = {}
    for target in live:
        line = _last_access_line(target.log)
        variant: Variant = target.extra["variant"]
        seen = {k: line.get(k) for k in ("route", "path", "status", "deployment")}
        checks[target.key] = seen
        expected_path = variant.path.split("?", 1)[0]
        # Its status may be 499: wrk cuts its connections when a run ends.
        if seen["path"] != expected_path:
            raise RuntimeError(f"{target.key}: last access-log line is not {expected_path}: {seen}")
        if seen["route"] != f"bench-{tg.DEPLOYMENT}":
            raise RuntimeError(f"{target.key}: served by route {seen['route']!r}")
    return checks


def render(res: dict[str, Any]) -> list[str]:
    """The report section (markdown lines)."""
    out = [
        "## 8. Model routing (issue 13): CPU per request at c=32",
        "",
        f"The same chat body to three aigw processes; {res['rounds']} alternating rounds of "
        f"{res['duration']} s; ratios and added figures paired per round with `path`.",
        "",
        "| target | req/s | CPU per request | CPU / path | added CPU | req/s / path "
        "| p50 | p99 | added p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {v.key: v.name for v in VARIANTS}
    for key, s in res["summary"].items():
        out.append(
            f"| {names.get(key, key)} | {fmt(s['rps'], ',.0f')} "
            f"| {fmt(s['cpu_us_per_request'], '.1f', ' µs')} | {fmt(s['cpu_x_path'], '.3f')} "
            f"| {fmt(s['cpu_added_us'], '+.1f', ' µs')} | {fmt(s['rps_x_path'], '.3f')} "
            f"| {fmt(s['p50_ms'], '.2f', ' ms')} | {fmt(s['p99_ms'], '.2f', ' ms')} "
            f"| {fmt(s['added_p50_ms'], '+.2f', ' ms')} |"
        )
    model = res["summary"].get("model", {}).get("cpu_x_path", math.nan)
    verdict = "PASS" if model <= BAR else "MISS"
    out += [
        "",
        f"Bar (model route within {BAR - 1:.0%} of path route, CPU per request): "
        f"**{verdict}** ({model:.3f} of path).",
        "",
    ]
    return out


def run(ctx: Context, upstream: tg.Target) -> dict[str, Any]:
    """Starts one aigw per variant, runs the rounds; raw runs and summary."""
    point = next(p for p in POINTS if p.key == "c32")
    live: list[tg.Target] = []
    try:
        for variant in VARIANTS:
            live.append(start_variant(ctx, upstream, variant))
        served: dict[str, int] = {}
        if ctx.warmup:
            say("scenario models: warm-up")
            _warm_up(ctx, live, upstream, point, served)
        say(f"scenario models: {point.title}, {ctx.rounds} rounds of {ctx.duration} s")
        runs = _run_point(ctx, point, live, upstream, served)
        sp.refuse_errors(runs)
        checks = _check_routing(live)
        lines = {t.key: tg.count_access_lines(t.log) for t in live}
    finally:
        tg.stop_targets(ctx.procs, live)
    return {
        "variants": {v.key: asdict(v) for v in VARIANTS},
        "rounds": ctx.rounds,
        "duration": ctx.duration,
        "connections": point.connections,
        "runs": runs,
        "summary": summarise_paired(runs, BASELINE),
        "checks": checks,
        "access_log_lines": lines,
        "wrk_requests": served,
    }


def main() -> None:
    """Runs this scenario alone."""
    import argparse

    from suite import ensure_tools

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    notes: list[str] = []
    ensure_tools(notes)
    with sp.standalone(
        "aigw-models-", rounds=args.rounds, duration=args.duration, warmup=1, notes=notes
    ) as (ctx, upstream):
        result = run(ctx, upstream)
    sp.report(result, render(result), args.json)


if __name__ == "__main__":
    main()
