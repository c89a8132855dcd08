"""Markdown report from the suite's results: tables ready for docs/performance.md.

Every table row is a median over alternating rounds; ratios and "added" figures
are paired per round with the baseline measured in the same round. Absolute
numbers appear only as context next to the ratios.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from typing import Any

__all__ = ["evaluate", "load", "render"]

# The multiplication sign reads better in tables than an "x"; spelled as an escape for ruff.
X = "\u00d7"
_ORDER = ("direct", "nginx", "bare", "bare-uvloop", "aigw-1", "aigw-2", "litellm")


def _num(value: float | None, fmt: str = ",.0f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:{fmt}}{suffix}"


def _ratio(value: float | None) -> str:
    return _num(value, ".2f", X)


def _ms(value: float | None) -> str:
    return _num(value, ".2f", " ms")


def _signed_ms(value: float | None) -> str:
    return _num(value, "+.2f", " ms")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _rows_in_order(
    targets: dict[str, dict[str, Any]],
    summary: dict[str, dict[str, float]],
    cells: Callable[[str, dict[str, float]], list[str]],
    width: int,
) -> list[list[str]]:
    rows = []
    for key in _ORDER:
        info = targets.get(key)
        if key == "litellm":
            rows.append(
                ["LiteLLM proxy", "not run (installing it is out of scope)"] + [""] * (width - 2)
            )
            continue
        if info is None:
            continue
        if info.get("skipped"):
            rows.append([info["name"], info["skipped"]] + [""] * (width - 2))
            continue
        if key in summary:
            rows.append([info["name"], *cells(key, summary[key])])
    return rows


def _proxy_section(res: dict[str, Any]) -> list[str]:
    out = ["## 1. Non-streaming chat (wrk)", ""]
    targets = res["targets"]
    header = [
        "target",
        "req/s",
        f"{X} direct",
        f"{X} nginx",
        f"{X} bare aiohttp",
        "added p50",
        "added p99",
        "p50",
        "p99",
        "errors",
        "proxy CPU (cores)",
        "CPU per request",
        "RSS peak / after",
    ]

    def cells(key: str, s: dict[str, float]) -> list[str]:
        direct = key == "direct"
        return [
            _num(s["rps"]),
            f"1.00{X}" if direct else _ratio(s["x_direct"]),
            _ratio(s["x_nginx"]),
            _ratio(s["x_bare"]),
            "—" if direct else _signed_ms(s["added_p50_ms"]),
            "—" if direct else _signed_ms(s["added_p99_ms"]),
            _ms(s["p50_ms"]),
            _ms(s["p99_ms"]),
            _num(s["errors"]),
            _num(s["proxy_cores"], ".2f"),
            "—" if direct else _num(s.get("cpu_us_per_request", math.nan), ",.0f", " µs"),
            "—"
            if direct
            else f"{_num(s['rss_peak_mib'], '.1f')} / {_num(s['rss_after_mib'], '.1f')} MiB",
        ]

    for point in res["points"].values():
        out += [f"### {point['title']}", ""]
        out.append(_table(header, _rows_in_order(targets, point["summary"], cells, len(header))))
        out.append("")
    sustained = res["points"].get("sustained")
    if sustained:
        summary = sustained["summary"]
        direct = summary.get("direct", {}).get("rps", math.nan)
        nginx = summary.get("nginx", {}).get("rps", math.nan)
        best = max(
            (s["rps"] for k, s in summary.items() if k not in ("direct", "nginx")),
            default=math.nan,
        )
        verdict = (
            "so the upstream stand-in is not what limits them"
            if direct > 1.5 * best
            else "WARNING: the upstream stand-in may be what limits them"
        )
        out.append(
            f"20 ms upstream ({res['upstream'].get('sustained')}): direct reaches "
            f"{_num(direct)} req/s at c=256 (ideal 256 / 20 ms = 12,800), "
            f"{_ratio(direct / best)} the best Python target ({_num(best)} req/s), {verdict}; "
            f"nginx reaches {_ratio(nginx / direct)} direct, i.e. the upstream's own limit."
        )
        out.append("")
    logs = [
        f"{info['name']}: {info['access_log_lines']:,} access-log lines for "
        f"{info['wrk_requests']:,} requests completed by wrk"
        for key, info in targets.items()
        if key.startswith("aigw") and "access_log_lines" in info
    ]
    if logs:
        out.append(
            "Logging was on (info level, JSON access log to a file, tokens logged): "
            + "; ".join(logs)
            + " (the difference: readiness probes and the requests still in flight when each "
            "wrk run stopped, which aigw logs and wrk does not count)."
        )
        out.append("")
    return out


def _streams_section(res: dict[str, Any]) -> list[str]:
    n = res["streams"]
    out = [f"## 2. {n:,} concurrent SSE streams", ""]
    out.append(
        f"Upstream: {res['upstream']}. Client: `bench/sse_load.py`, one process (raw asyncio "
        f"HTTP/1.1 client on uvloop). Measured: the streams started between the end of the "
        f"1.3 s ramp and {res['duration_s']:g} s on kept-alive connections (median "
        f"{_num(res.get('measured_streams'))} per run); the slots keep {n:,} streams open "
        "until each measured stream has ended. Gaps are between consecutive token events; "
        "events coalesced into one read count as a 0 ms gap (and a long one before them). "
        "RSS per open stream = (highest peak of the rounds - RSS before the first stream) / "
        "the streams served at once in that round. The last column is each slot's first "
        "stream, which also waits for the proxy to accept its new connection while the other "
        'streams run. "Served at once" '
        "counts the streams the proxy had accepted and answered (the client keeps N requests "
        "in flight; the rest wait in the proxy's accept queue)."
    )
    out.append("")
    header = [
        "target",
        "added TTFT p50",
        "added TTFT p99",
        "added gap p50",
        "added gap p99",
        "TTFT p50 / p99",
        "gap p50 / p99",
        "errors",
        "streams served at once (mean)",
        "proxy CPU (cores)",
        "RSS idle → peak",
        "RSS per open stream",
        "TTFT on a new connection p99 / max",
    ]

    def cells(key: str, s: dict[str, float]) -> list[str]:
        direct = key == "direct"
        return [
            "—" if direct else _signed_ms(s["added_ttft_ms_p50"]),
            "—" if direct else _signed_ms(s["added_ttft_ms_p99"]),
            "—" if direct else _signed_ms(s["added_gap_ms_p50"]),
            "—" if direct else _signed_ms(s["added_gap_ms_p99"]),
            f"{_ms(s['ttft_ms_p50'])} / {_ms(s['ttft_ms_p99'])}",
            f"{_ms(s['gap_ms_p50'])} / {_ms(s['gap_ms_p99'])}",
            _num(s["errors"]),
            _num(s["served_mean"]),
            _num(s["proxy_cores"], ".2f"),
            "—"
            if direct
            else f"{_num(s['rss_idle_mib'], '.1f')} → {_num(s['rss_peak_mib'], '.1f')} MiB",
            "—" if direct else _num(s["rss_per_stream_kib"], ".1f", " KiB"),
            f"{_ms(s['new_conn_ttft_ms_p99'])} / {_ms(s['new_conn_ttft_ms_max'])}"
            + (
                f" ({_num(s['new_conn_unanswered'])} per run never answered)"
                if s["new_conn_unanswered"]
                else ""
            ),
        ]

    out.append(_table(header, _rows_in_order(res["targets"], res["summary"], cells, len(header))))
    out.append("")
    direct = res["summary"].get("direct")
    if direct:
        out.append(
            f"Harness share during the direct runs: client {_num(direct['client_cores'], '.2f')} "
            f"cores, upstream {_num(direct['upstream_cores'], '.2f')} cores (of 2)."
        )
        out.append("")
    if res.get("calibration"):
        out += ["Calibration (round 1, harness alone, no proxy):", ""]
        rows = []
        for name, doc in res["calibration"].items():
            rows.append(
                [
                    name,
                    f"{_ms(doc['ttft_ms']['p50'])} / {_ms(doc['ttft_ms']['p99'])}",
                    f"{_ms(doc['gap_ms']['p50'])} / {_ms(doc['gap_ms']['p99'])}",
                    _num(doc["stream_ms"]["p50"], ",.0f", " ms"),
                    _num(doc["client_cpu_s"], ".1f", " s"),
                    _num(doc.get("upstream_cores"), ".2f"),
                ]
            )
        out.append(
            _table(
                [
                    "run",
                    "TTFT p50 / p99",
                    "gap p50 / p99",
                    "stream length p50 (ideal ≈1,270 ms)",
                    "client CPU",
                    "upstream CPU (cores)",
                ],
                rows,
            )
        )
        out.append("")
    return out


def _routes_section(res: dict[str, Any]) -> list[str]:
    out = ["## 3. Route-table scale", ""]
    header = [
        "routes",
        "lookup static hit",
        "param hit",
        "miss",
        "normalise",
        "load (in-process)",
        "`aigw check` (wall)",
        "reload, 1 file changed",
        "reload, 1 file touched",
        "RSS of the loaded table",
    ]
    rows = []
    for size, s in res["summary"].items():
        rows.append(
            [
                f"{int(size):,} files",
                _num(s["lookup_ns_static hit"], ",.0f", " ns"),
                _num(s["lookup_ns_param hit"], ",.0f", " ns"),
                _num(s["lookup_ns_miss"], ",.0f", " ns"),
                _num(s["lookup_ns_normalise"], ",.0f", " ns"),
                _ms(s["load_ms"]),
                _ms(s["check_ms"]),
                _ms(s["reload_changed_ms"]),
                _ms(s["reload_touched_ms"]),
                _num(s["rss_delta_mib"], "+.1f", " MiB"),
            ]
        )
    out.append(_table(header, rows))
    out.append("")
    out.append(
        f"Lookup rows are tables of N static routes plus 5 parameter/wildcard routes "
        f"(`bench_router.py`). `aigw check` includes interpreter start-up and imports "
        f"(`aigw --version` alone takes {_ms(res['startup_ms'])}); on 10,000 files it is "
        "timed in the first round only. Reload times are `Reloader.reload` after one file "
        "was rewritten (parse one file, rebuild and publish the table) or only touched "
        "(every file read and hashed, nothing published)."
    )
    out.append("")
    return out


def _reload_section(res: dict[str, Any]) -> list[str]:
    out = ["## 4. Reload under load (aigw 1 worker, wrk c=32)", ""]
    header = ["run", "req/s", f"{X} steady", "p50", "p99", "errors", "file writes", "reloads"]
    rows = []
    for mode, label in (("steady", "no reloads"), ("reloading", "rewrite every 100 ms")):
        s = res["summary"][mode]
        rows.append(
            [
                label,
                _num(s["rps"]),
                _ratio(s["x_steady"]),
                _ms(s["p50_ms"]),
                _ms(s["p99_ms"]),
                _num(s["errors"]),
                _num(s["writes"]),
                _num(s["reloads"]),
            ]
        )
    out.append(_table(header, rows))
    out.append("")
    out.append(
        "Errors are wrk's connect/read/write/timeout errors plus non-2xx/3xx responses, summed "
        "over all rounds; reloads are published generations (admin `/status`) over all rounds."
    )
    out.append("")
    return out


def _closed_cell(s: dict[str, Any]) -> str:
    if "connections" not in s:
        return "—"
    if not s["closed"]:
        return f"none of {s['connections']:,}"
    return (
        f"{s['closed']:,}/{s['connections']:,} after {_num(s['close_after_p50_s'], '.1f')} s "
        f"(max {_num(s['close_after_max_s'], '.1f')} s)"
    )


def _attacks_section(res: dict[str, Any]) -> list[str]:
    out = ["## 5. Attacks: normal traffic and memory under attack, aigw vs nginx", ""]
    out.append(
        f"Each phase runs one attack alone for {res['phase_s']:g} s while a normal client sends "
        f"a small non-streaming chat request ({res['probe']}); {res['rounds']} alternating "
        "round(s), medians; latency ratios are paired with the same proxy's baseline phase of "
        "the same round. Upstream: `bench/attack_upstream.py`. Both proxies: 1 worker, "
        f"RLIMIT_NOFILE {res['fd_limit']:,}, request bodies up to "
        f"{res['max_request_body_size'] // (1024 * 1024)} MiB, started afresh for every phase. "
        f"aigw: `{res['aigw_flags']}`; nginx: `{res['nginx_directives']}`, proxy buffering as "
        "shipped (on: what does not fit its buffers goes to temp files on disk, which RSS does "
        "not show). RSS: the proxy's process tree idle before the phase → its peak during "
        "the phase → once it went idle after the attacker left (idle after: how long that "
        "took; ≥ 15 s means it was still busy); growth = peak minus before. Attack connections "
        "closed: counted from the stall (the last body byte sent, the stream requested, or "
        "the connect); the stalled bodies and readers wait up to "
        f"{res['close_grace_s']:g} s past the phase for it."
    )
    out.append("")
    header = [
        "attack",
        "proxy",
        "normal p50 / p99",
        f"{X} baseline p50 / p99",
        "errors",
        "proxy CPU (cores)",
        "RSS before → peak → after",
        "RSS growth",
        "idle after",
        "attack connections closed by the proxy",
        "what the attacker got",
    ]
    names = {key: info["name"] for key, info in res["targets"].items()}
    rows = []
    for phase, title in res["phases"].items():
        for key, s in res["summary"].get(phase, {}).items():
            errors = _num(s["errors"]) + f" of {s['sent']:,}"
            if s["error_kinds"]:
                kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["error_kinds"].items()))
                errors += f" ({kinds})"
            baseline = phase == "baseline"
            rows.append(
                [
                    title,
                    names.get(key, key) + (" (exited)" if s["proxy_exited"] else ""),
                    f"{_ms(s['p50_ms'])} / {_ms(s['p99_ms'])}",
                    "—" if baseline else f"{_ratio(s['x_p50'])} / {_ratio(s['x_p99'])}",
                    errors,
                    _num(s["proxy_cores"], ".2f"),
                    f"{_num(s['rss_before_mib'])} → {_num(s['rss_peak_mib'])} → "
                    f"{_num(s['rss_after_mib'])} MiB",
                    _num(s["rss_above_mib"], "+,.0f", " MiB"),
                    _num(s["busy_after_s"], ".1f", " s"),
                    _closed_cell(s),
                    s.get("detail", "—"),
                ]
            )
    out.append(_table(header, rows))
    out.append("")
    return out


def _attack_verdicts(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    summary = res["summary"]
    deadline = float(res["deadline_s"])
    aigw = {phase: rows.get("aigw-1", {}) for phase, rows in summary.items()}
    stalled = [aigw.get(p, {}) for p in ("stalled-bodies", "stalled-readers")]
    closed = all(
        s and s["closed"] == s["connections"] and s["close_after_max_s"] <= deadline + 2
        for s in stalled
    )
    attacked = {p: s for p, s in aigw.items() if p != "baseline" and s}
    errors = sum(int(s["errors"]) for s in attacked.values())
    sent = sum(int(s["sent"]) for s in attacked.values())
    huge = {p: aigw.get(p, {}).get("rss_above_mib", math.nan) for p in ("huge-body", "huge-event")}
    return [
        (
            f"attacks: aigw closes stalled bodies and stalled readers within the {deadline:g} s "
            "deadline (+ 2 s)",
            "PASS" if closed else "MISS",
            "; ".join(
                f"{p}: {_closed_cell(s) if s else 'not run'}"
                for p, s in zip(("stalled bodies", "stalled readers"), stalled, strict=True)
            ),
        ),
        (
            f"attacks: aigw RSS growth < 64 MiB relaying a {res['huge_body_mib']} MiB "
            f"body and a {res['huge_event_mib']} MiB event",
            "PASS" if all(v < 64 for v in huge.values()) else "MISS",
            ", ".join(f"{p}: {_num(v, '+,.0f', ' MiB')}" for p, v in huge.items()),
        ),
        (
            "attacks: the normal client through aigw sees no errors under any attack",
            "PASS" if attacked and not errors else "MISS",
            f"{errors:,} errors of {sent:,} requests"
            + "".join(f"; {p}: {int(s['errors'])}" for p, s in attacked.items() if s["errors"]),
        ),
    ]


def evaluate(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The issue's targets: (target, PASS/MISS/SKIP, the measured value)."""
    verdicts: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "SKIP" if ok is None else ("PASS" if ok else "MISS")

    proxy = results.get("proxy")
    if proxy:
        points = proxy["points"]
        ratios = {
            key: p["summary"].get("aigw-1", {}).get("x_bare", math.nan)
            for key, p in points.items()
            # c=1 and the paced point offer a fixed load: req/s says nothing there.
            if key not in ("c1", "c32paced")
        }
        text = ", ".join(f"{k}: {_ratio(v)}" for k, v in ratios.items())
        verdicts.append(
            (
                "aigw (all features on) ≥ bare aiohttp req/s, 1 worker",
                verdict(all(v >= 1.0 for v in ratios.values())),
                f"aigw-1 / bare aiohttp = {text}",
            )
        )
        if proxy["targets"].get("aigw-2", {}).get("skipped"):
            verdicts.append(("--workers 2 scales", "SKIP", proxy["targets"]["aigw-2"]["skipped"]))
        else:
            scale = {
                key: p["summary"].get("aigw-2", {}).get("x_aigw-1", math.nan)
                for key, p in points.items()
                if key in ("c32", "c256", "sustained")
            }
            loaded = [v for v in scale.values() if not math.isnan(v)]
            middle = statistics.median(loaded) if loaded else math.nan
            verdicts.append(
                (
                    f"--workers 2 scales (median over the loaded points ≥ 1.3{X} one worker; "
                    "2 cores shared with wrk and the upstream)",
                    verdict(middle >= 1.3),
                    "aigw-2 / aigw-1 = " + ", ".join(f"{k}: {_ratio(v)}" for k, v in scale.items()),
                )
            )
        paced = points.get("c32paced", {}).get("summary", {}).get("aigw-1", {})
        c32 = points.get("c32", {}).get("summary", {}).get("aigw-1", {})
        added = paced.get("added_p50_ms", math.nan)
        saturated = c32.get("added_p50_ms", math.nan)
        verdicts.append(
            (
                "added latency p50 < 1 ms at c=32 (paced load, ~1,000 req/s)",
                verdict(added < 1.0),
                f"{_signed_ms(added)} (p99 {_signed_ms(paced.get('added_p99_ms', math.nan))}); "
                f"saturated closed loop at c=32: {_signed_ms(saturated)}, which is queueing "
                "(32 / throughput)",
            )
        )
    streams = results.get("streams")
    if streams:
        s = streams["summary"].get("aigw-1", {})
        gap = s.get("added_gap_ms_p99", math.nan)
        rss = s.get("rss_per_stream_kib", math.nan)
        n = streams["streams"]
        served = s.get("served_mean", math.nan)
        # A proxy that leaves connections unaccepted is not holding N streams at all.
        held = served >= 0.95 * n
        verdicts.append(
            (
                f"streams: added inter-chunk p99 < 5 ms at {n:,} streams",
                verdict(gap < 5.0 and held),
                f"{_signed_ms(gap)}"
                + ("" if held else f"; only {_num(served)} of {n:,} streams served at once"),
            )
        )
        per_requested = s.get("rss_per_requested_stream_kib", math.nan)
        verdicts.append(
            (
                "streams: < 64 KiB RSS per open stream",
                verdict(rss < 64.0),
                f"{_num(rss, '.1f', ' KiB')} per stream served"
                + (
                    ""
                    if held
                    else f" ({_num(per_requested, '.1f', ' KiB')} if spread over all {n:,})"
                ),
            )
        )
    routes = results.get("routes")
    if routes:
        summary = routes["summary"]
        sizes = sorted(summary, key=int)
        small, large = summary[sizes[0]], summary[sizes[-1]]
        cases = ("static hit", "param hit", "miss")
        worst = max(large[f"lookup_ns_{c}"] / small[f"lookup_ns_{c}"] for c in cases)
        verdicts.append(
            (
                f"lookup time flat {int(sizes[0]):,} → {int(sizes[-1]):,} routes (within 30%)",
                verdict(worst <= 1.3),
                f"worst case ratio {_ratio(worst)}",
            )
        )
        if "1000" in summary:
            load = summary["1000"]["load_ms"]
            verdicts.append(
                (
                    "1,000-file conf.d loads < 1 s",
                    verdict(load < 1000),
                    f"{_ms(load)} in-process; `aigw check` {_ms(summary['1000']['check_ms'])} wall",
                )
            )
    reload = results.get("reload")
    if reload:
        s = reload["summary"]["reloading"]
        ok = s["errors"] == 0 and s["reloads"] > 0
        verdicts.append(
            (
                "zero errors in reload-under-load",
                verdict(ok),
                f"{_num(s['errors'])} errors over {_num(s['reloads'])} published reloads, "
                f"{_ratio(s['x_steady'])} the req/s without reloads",
            )
        )
    attacks = results.get("attacks")
    if attacks:
        verdicts += _attack_verdicts(attacks)
    return verdicts


def _nan_summaries(value: Any, in_summary: bool = False) -> Any:
    if isinstance(value, dict):
        return {k: _nan_summaries(v, in_summary or k == "summary") for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_summaries(v, in_summary) for v in value]
    return math.nan if value is None and in_summary else value


def load(text: str) -> dict[str, Any]:
    """Results read back from latest.json: the nulls of the summaries become NaN again."""
    data: dict[str, Any] = _nan_summaries(json.loads(text))
    return data


def render(results: dict[str, Any]) -> str:
    """The whole markdown report."""
    meta = results["meta"]
    out = [
        "# aigw benchmark report",
        "",
        f"{meta['date']} · {meta['mode']} run · {meta['rounds']} alternating rounds, medians · "
        f"wrk {meta['duration']} s per run · git {meta['git']} · {meta['cpus']} cores, load "
        f"average {meta['loadavg_start']} at start, {meta.get('loadavg_end', '?')} at end · "
        f"{meta['python']}, aiohttp {meta['aiohttp']}, uvloop {meta['uvloop']}, "
        f"{meta['nginx']}, {meta['wrk']}",
        "",
        "Everything runs on 127.0.0.1 on this machine, side by side in one command; ratios and "
        "added latencies are paired per round with the direct run of the same round.",
        "",
    ]
    verdicts = evaluate(results)
    if verdicts:
        out += ["## Targets", ""]
        out.append(_table(["target", "result", "measured"], [list(v) for v in verdicts]))
        out.append("")
    if "proxy" in results:
        out += _proxy_section(results["proxy"])
    if "streams" in results:
        out += _streams_section(results["streams"])
    if "routes" in results:
        out += _routes_section(results["routes"])
    if "reload" in results:
        out += _reload_section(results["reload"])
    if "attacks" in results:
        out += _attacks_section(results["attacks"])
    if meta.get("notes"):
        out += ["## Notes", ""] + [f"- {note}" for note in meta["notes"]] + [""]
    return "\n".join(out)
