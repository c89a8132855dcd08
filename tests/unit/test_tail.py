"""``aigw tail``: rendering, filters, options, and its stdin, file and journal inputs.

``fixtures/aigw_log_sample.jsonl`` is real output: ``aigw demo`` with the mock's
faults (stream, 429, connection close, hang until the client gave up, a cut
stream) and a broken file dropped into conf.d; only the conf.d path was changed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from aigw.chain.request_id import new_request_id
from aigw.short_id import short_request_id
from aigw.tail import (
    Filter,
    StatusRange,
    format_event,
    main,
    parse_status,
    register,
    render_line,
    run,
    tail_file,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).parent / "fixtures" / "aigw_log_sample.jsonl"
SAMPLE_LINES = SAMPLE.read_text(encoding="utf-8").splitlines()
EVENTS = {
    event["request_id"][:8]: event
    for event in (json.loads(line) for line in SAMPLE_LINES if line.startswith("{"))
    if event["event"] == "request"
}
PLAIN = EVENTS["2c23f321"]  # 200, not streamed
STREAM = EVENTS["ca410baf"]  # 200, streamed, 300 ms to first token
RATE_LIMITED = EVENTS["87cc82b7"]  # 429 passed through from upstream
BAD_GATEWAY = EVENTS["1b7fda21"]  # 502, the upstream closed the connection
CLIENT_GONE = EVENTS["a7501159"]  # 499, the client gave up after 1 s
MISMATCH = EVENTS["307decaa"]  # 400 from the gateway itself
CUT_STREAM = EVENTS["81763a4b"]  # 200 sent, then the upstream stream broke
OTHER: dict[str, dict[str, Any]] = {}
for _line in SAMPLE_LINES:
    if _line.startswith("{") and '"event":"request"' not in _line:
        OTHER.setdefault(json.loads(_line)["event"], json.loads(_line))  # the first of each

ESC = "\x1b"
RED, GREEN, YELLOW, MAGENTA = "\x1b[31", "\x1b[32", "\x1b[33", "\x1b[35"


def fmt(event: dict[str, Any], *, color: bool = False) -> str:
    line = format_event(event, color=color, utc=True)
    assert line is not None
    return line


def request(request_id: str, **fields: Any) -> str:
    """One access-log line as aigw writes it, with *fields* changed."""
    return json.dumps({**PLAIN, "request_id": request_id, **fields}, separators=(",", ":"))


# --------------------------------------------------------------------------
# format_event: requests


def test_plain_request_is_one_line_of_fixed_columns() -> None:
    assert fmt(PLAIN) == (
        "09:22:45.125  200  POST    azure-gpt-4o          gpt-4o→gpt-4o-2024-11-20"
        "                6.3ms (up 5.9ms)              10+8=18 tok               875139451e68"
    )


def shown_id(request_id: str) -> str:
    """The request id column of the line *request_id* is rendered as."""
    return fmt(json.loads(request(request_id))).split()[-1]


def test_request_ids_of_one_process_are_told_apart() -> None:
    """aigw's ids share a 24-digit per-process prefix: the column shows the counter."""
    ids = [new_request_id() for _ in range(3)]
    shown = [shown_id(request_id) for request_id in ids]
    assert len(set(shown)) == 3, shown
    for request_id, short in zip(ids, shown, strict=True):
        assert len(short) == 12 and request_id.endswith(short)  # greppable as is


def test_request_ids_of_two_processes_are_told_apart() -> None:
    """Two workers (or a restart) count from 0 each: the end of the prefix tells them apart."""
    first, second = "5d0c1a2b3c4d4e5f6071a293", "9e8f7a6b5c4d3e2f1a0bc7d4"
    assert shown_id(first + "00000000") == "a29300000000"
    assert shown_id(second + "00000000") == "c7d400000000"


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        # A client's own counter after a long common prefix.
        (("checkout-service-20261130-000123", "checkout-service-20261130-000124"),
         ("61130-000123", "61130-000124")),
        # UUID4: random everywhere; the last group is 12 random digits.
        (("0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
         ("70867728950e", "e07fc1f90ae7")),
        # UUID1: the last group is the host, the first the low bits of the clock.
        (("a8098c1a-f86e-11da-bd1a-00112444be1e", "a8098d2b-f86e-11da-bd1a-00112444be1e"),
         ("a8098c1a", "a8098d2b")),
        # Short ids are shown whole.
        (("r1", "my-id-000002"), ("r1", "my-id-000002")),
    ],
)  # fmt: skip
def test_client_request_ids_show_the_part_that_differs(
    ids: tuple[str, str], expected: tuple[str, str]
) -> None:
    assert tuple(shown_id(request_id) for request_id in ids) == expected
    assert len({shown_id(request_id) for request_id in ids}) == 2
    for request_id in ids:
        assert shown_id(request_id) in request_id


def test_columns_line_up_across_requests() -> None:
    plain, stream = fmt(PLAIN), fmt(STREAM)
    for column in ("POST", "azure-gpt-4o", "gpt-4o→"):
        assert plain.index(column) == stream.index(column)
    # The token column starts at the same place whatever the latency details.
    assert plain.index("10+8=18 tok") == stream.index("1+8=9 tok")


def test_stream_shows_marker_ttft_and_tokens() -> None:
    line = fmt(STREAM)
    assert "447ms (up 302ms, ttft 303ms)" in line
    assert "1+8=9 tok" in line
    assert " stream  3d806ff096ec" in line
    assert " stream " not in fmt(PLAIN)


def test_upstream_failure_shows_outcome_and_error_in_red() -> None:
    line = fmt(BAD_GATEWAY)
    assert line.startswith("09:22:46.502  502  POST")
    assert line.endswith(
        "7ed625e28820  upstream_error: the upstream 127.0.0.1 closed the connection "
        "before answering (ServerDisconnectedError)"
    )
    # The upstream never answered: no "(up -)" noise, no tokens.
    assert "2.8ms    " in line and "(up" not in line
    coloured = fmt(BAD_GATEWAY, color=True)
    assert f"{RED};1m502" in coloured
    assert f"{RED}mupstream_error: the upstream" in coloured


def test_client_disconnect_499_is_magenta() -> None:
    line = fmt(CLIENT_GONE)
    assert " 499  POST " in line and "1002ms" in line
    assert line.endswith("142551148979  client_disconnect")
    coloured = fmt(CLIENT_GONE, color=True)
    assert f"{MAGENTA};1m499" in coloured
    assert f"{MAGENTA}mclient_disconnect" in coloured


def test_stream_cut_after_its_200_is_flagged_red() -> None:
    coloured = fmt(CUT_STREAM, color=True)
    assert f"{GREEN};1m200" in coloured
    assert f"{RED}mupstream_reset: the upstream connection was lost" in coloured


def test_status_colours_by_class() -> None:
    assert f"{GREEN};1m200" in fmt(PLAIN, color=True)
    assert f"{YELLOW};1m429" in fmt(RATE_LIMITED, color=True)
    assert f"{YELLOW}mmodel_mismatch: model 'gpt-4o'" in fmt(MISMATCH, color=True)


def test_no_escape_codes_without_colour() -> None:
    for event in EVENTS.values():
        assert ESC not in fmt(event)
    for event in OTHER.values():
        assert ESC not in fmt(event)


def test_same_served_model_is_not_repeated() -> None:
    assert "  gpt-4o  " in fmt({**PLAIN, "response_model": "gpt-4o"})
    assert "→" not in fmt({**PLAIN, "response_model": "gpt-4o"})


def test_missing_fields_render_as_dash() -> None:
    line = fmt({"event": "request"})
    assert line.split() == ["-", "-", "-", "-", "-", "-", "-", "-"]


ODD_VALUES: list[Any] = [None, True, -1, 1e308, float("nan"), "", "x\ny", [1, {"a": 2}], {"k": []}]


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_odd_types_never_crash(value: Any) -> None:
    """Lines from older or newer versions: any field may be missing or of another type."""
    keys = [*PLAIN, "ttft_ms", "error", "exception", "issues", "rejected", "added"]
    for key in (k for k in keys if k != "event"):
        for base in (PLAIN, STREAM, *OTHER.values()):
            line = format_event({**base, key: value}, color=True)
            assert line is not None and "\n" not in line


def test_unparseable_values_are_dashes_not_guesses() -> None:
    line = fmt({**PLAIN, "status": "abc", "latency_ms": [1], "prompt_tokens": "x", "timestamp": 7j})
    assert line.startswith("-  ")
    assert "    -  " in line
    assert "-+8=18 tok" in line


def test_numeric_strings_and_epoch_timestamps_are_understood() -> None:
    line = fmt({**PLAIN, "status": "503", "latency_ms": "12500", "timestamp": 0})
    assert line.startswith("00:00:00.000  503  POST")
    assert "12.5s" in line


def test_not_an_aigw_event_is_none() -> None:
    assert format_event({"msg": "hello"}, color=False) is None
    assert format_event({"event": 3}, color=False) is None


# SECURITY: a client controls parts of what is logged.
def test_control_characters_cannot_reach_the_terminal() -> None:
    hostile = "\x1b]0;owned\x07\x1b[2J\u202egnp.exe"
    line = fmt({**BAD_GATEWAY, "error": hostile, "route": "r\x1b[31m"}, color=True)
    assert "owned" in line
    assert "\x07" not in line and "\u202e" not in line
    assert "\\u001b]0;owned\\u0007\\u001b[2J\\u202egnp.exe" in line
    # The only ESCs left are the painter's own.
    assert line.count(ESC) == line.count("\x1b[0m") * 2


# --------------------------------------------------------------------------
# format_event: other events


def test_config_reload_lists_changes_and_rejections() -> None:
    assert fmt(OTHER["config_reload"]) == (
        "09:22:44.106  CONFIG  generation 1 (startup): +gpt-4.1-mini.yaml +gpt-4o.yaml"
        "  [2 routes, 1.6ms]"
    )
    rejected = json.loads(SAMPLE_LINES[15])
    assert fmt(rejected) == (
        "09:22:47.647  CONFIG  generation 2 (watch): +broken.yaml  "
        "rejected: broken.yaml (2 issues)  [2 routes, 0.3ms, degraded]"
    )
    changed = {**rejected, "added": [], "changed": ["b.yaml"], "removed": ["c.yaml"]}
    assert "generation 2 (watch): ~b.yaml -c.yaml  rejected" in fmt(changed)
    # A reload that refused a file stands out; a clean one stays dimmed.
    assert fmt(rejected, color=True).startswith(f"09:22:47.647  {YELLOW};1mCONFIG")
    assert fmt(OTHER["config_reload"], color=True).startswith("\x1b[2m09:22:44.106  CONFIG")


def test_config_rejected_names_the_file_and_issues_in_bold_red() -> None:
    event = OTHER["config_rejected"]
    assert fmt(event) == (
        "09:22:47.647  CONFIG  rejected broken.yaml (serving nothing): "
        "broken.yaml:1:1: route.paths: missing required key `paths`; "
        "broken.yaml:1:1: plugins: missing required key `plugins`"
    )
    assert f"{RED};1mCONFIG" in fmt(event, color=True)


def test_routine_events_are_dimmed() -> None:
    line = fmt(OTHER["listening"], color=True)
    assert line.startswith("\x1b[2m09:22:44.107  START   listening on http://127.0.0.1:18181")
    assert fmt({"event": "stopping", "level": "info"}) == "-             STOP    stopping"


def test_unhandled_error_shows_the_exception() -> None:
    event = {
        "event": "unhandled_error",
        "level": "error",
        "request_id": "5d0c1a2b3c4d4e5f60718293" "0000002a",
        "route": "azure-gpt-4o",
        "timestamp": "2026-11-25T09:37:34.724147Z",
        "exception": [
            {"exc_type": "RuntimeError", "exc_value": "boom", "frames": [
                {"filename": "aigw/x.py", "lineno": 11, "name": "stage"}]},
            {"exc_type": "KeyError", "exc_value": "'missing'", "frames": []},
        ],
    }  # fmt: skip
    assert fmt(event) == (
        "09:37:34.724  ERROR   unhandled error in route azure-gpt-4o, request 82930000002a  "
        "RuntimeError: boom at aigw/x.py:11 in stage (from KeyError: 'missing')"
    )


def test_unknown_events_show_their_fields_with_the_level_tag() -> None:
    event = {"event": "lkg_write_failed", "level": "warning", "file": "a.yaml", "reason": "EROFS"}
    assert fmt(event) == "-             WARN    lkg_write_failed file=a.yaml reason=EROFS"
    assert f"{YELLOW};1mWARN" in fmt(event, color=True)
    assert "CONFIG  config_loaded generation=4" in fmt({"event": "config_loaded", "generation": 4})


@pytest.fixture
def kolkata() -> Iterator[None]:
    """Local time is UTC+5:30 (a POSIX TZ rule: no tz database needed)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "IST-5:30"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


@pytest.mark.usefixtures("kolkata")
def test_times_are_local_unless_utc() -> None:
    assert format_event(PLAIN, color=False, utc=False).startswith("14:52:45.125")  # type: ignore[union-attr]
    assert format_event(PLAIN, color=False, utc=True).startswith("09:22:45.125")  # type: ignore[union-attr]
    naive = {**PLAIN, "timestamp": "2026-11-25T09:22:45.125"}
    assert format_event(naive, color=False).startswith("09:22:45.125")  # type: ignore[union-attr]


# --------------------------------------------------------------------------
# Filters


def test_default_filter_shows_everything() -> None:
    flt = Filter()
    assert all(flt.matches(e) for e in [*EVENTS.values(), *OTHER.values(), {}])


def test_route_filter() -> None:
    flt = Filter(routes=frozenset({"azure-gpt-4-1-mini", "other"}))
    assert {k for k, e in EVENTS.items() if flt.matches(e)} == {"921f410d", "307decaa"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("5xx", {"1b7fda21"}),
        ("4xx", {"87cc82b7", "a7501159", "307decaa", "4e798863"}),
        ("400-429", {"87cc82b7", "307decaa", "4e798863"}),
        ("429", {"87cc82b7"}),
        ("499,5xx", {"a7501159", "1b7fda21"}),
    ],
)
def test_status_filter(spec: str, expected: set[str]) -> None:
    flt = Filter(statuses=parse_status(spec))
    assert {k for k, e in EVENTS.items() if flt.matches(e)} == expected
    assert not flt.matches({"event": "request"})  # unknown status never matches


def test_slow_filter() -> None:
    flt = Filter(slow_ms=300)
    assert {k for k, e in EVENTS.items() if flt.matches(e)} == {"a7501159", "ca410baf"}
    assert Filter(slow_ms=447.111).matches(STREAM)  # at least, not more than
    assert not flt.matches({"event": "request", "latency_ms": "slow"})


def test_errors_filter_includes_broken_streams_and_loud_events() -> None:
    flt = Filter(errors=True)
    assert {k for k, e in EVENTS.items() if flt.matches(e)} == {
        "87cc82b7",
        "1b7fda21",
        "a7501159",
        "307decaa",
        "4e798863",
        "81763a4b",  # status 200, outcome upstream_reset
    }
    assert flt.matches(OTHER["config_rejected"])  # level error
    assert not flt.matches(OTHER["config_reload"])  # level info
    assert not flt.matches({"event": "request"})  # nothing says it failed


def test_stream_filter() -> None:
    streamed = {k for k, e in EVENTS.items() if Filter(stream=True).matches(e)}
    assert streamed == {"5ad02396", "ca410baf", "81763a4b"}
    plain = {k for k, e in EVENTS.items() if Filter(stream=False).matches(e)}
    assert plain == set(EVENTS) - streamed


def test_model_filter_matches_configured_or_served_model() -> None:
    assert Filter(models=frozenset({"gpt-4o"})).matches(PLAIN)
    assert Filter(models=frozenset({"gpt-4o-2024-11-20"})).matches(PLAIN)
    assert not Filter(models=frozenset({"gpt-4.1-mini"})).matches(PLAIN)
    assert not Filter(models=frozenset({"gpt-4o"})).matches(EVENTS["4e798863"])


def test_request_filters_combine_with_and_and_keep_other_events() -> None:
    flt = Filter(routes=frozenset({"azure-gpt-4o"}), statuses=parse_status("2xx"), stream=True)
    assert {k for k, e in EVENTS.items() if flt.matches(e)} == {"5ad02396", "ca410baf", "81763a4b"}
    assert flt.matches(OTHER["config_reload"])


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_filters_never_crash_on_odd_types(value: Any) -> None:
    every = Filter(
        routes=frozenset({"a"}),
        statuses=parse_status("5xx"),
        slow_ms=1,
        errors=True,
        stream=True,
        models=frozenset({"m"}),
    )
    for key in [*PLAIN, "level", "event"]:
        for base in (PLAIN, OTHER["config_rejected"]):
            every.matches({**base, key: value})
            Filter(errors=True).matches({**base, key: value})


def test_requests_only_drops_other_events() -> None:
    flt = Filter(requests_only=True)
    assert all(flt.matches(e) for e in EVENTS.values())
    assert not any(flt.matches(e) for e in OTHER.values())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("5xx", (StatusRange(500, 599),)),
        ("2XX", (StatusRange(200, 299),)),
        ("400-499", (StatusRange(400, 499),)),
        (" 429 , 500 - 503", (StatusRange(429, 429), StatusRange(500, 503))),
    ],
)
def test_parse_status(spec: str, expected: tuple[StatusRange, ...]) -> None:
    assert parse_status(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("6xx", "invalid status '6xx': expected a code (429), a class (5xx) or a range"),
        ("abc", "invalid status 'abc'"),
        ("4xx,", "invalid status ''"),
        ("700", "invalid status '700': HTTP status codes are 100-599"),
        ("099-200", "invalid status '099-200': HTTP status codes are 100-599"),
        ("500-400", "invalid status range '500-400': 500 is above 400"),
    ],
)
def test_bad_status_is_a_clear_usage_error(
    spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="invalid status"):
        parse_status(spec)
    with pytest.raises(SystemExit) as exit_:
        main(["--status", spec])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"aigw tail: error: argument --status: {message}" in err


def test_register_adds_the_subcommand_with_every_option() -> None:
    parser = argparse.ArgumentParser(prog="aigw")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        shlex.split(
            "tail --route a --route b --status 5xx --status 429 --slow 2000 --errors "
            "--no-stream --model gpt-4o --requests-only --color never --utc -n 5 app.log"
        )
    )
    assert args.command == "tail" and args.source == "app.log" and args.lines == 5
    assert Filter.from_args(args) == Filter(
        routes=frozenset({"a", "b"}),
        statuses=(StatusRange(500, 599), StatusRange(429, 429)),
        slow_ms=2000.0,
        errors=True,
        stream=False,
        models=frozenset({"gpt-4o"}),
        requests_only=True,
    )


# --------------------------------------------------------------------------
# render_line: what reaches the screen


def test_non_json_lines_pass_through_unchanged() -> None:
    for line in ["Traceback (most recent call last):", '  File "x.py", line 1', "", "42",
                 "[1, 2]", '{"event": "request"', '{"msg": "not aigw"}', "\tindented"]:  # fmt: skip
        assert render_line(line + "\n", Filter(), color=True) == line


def test_requests_only_drops_non_json_lines() -> None:
    assert (
        render_line("Traceback (most recent call last):", Filter(requests_only=True), color=False)
        is None
    )


def test_passthrough_escapes_control_characters() -> None:
    assert render_line("a\x1b[2Jb\tc\r\n", Filter(), color=False) == "a\\u001b[2Jb\tc"


def test_filtered_out_events_print_nothing() -> None:
    assert render_line(SAMPLE_LINES[3], Filter(errors=True), color=False) is None
    assert render_line(SAMPLE_LINES[3], Filter(), color=False) is not None


# --------------------------------------------------------------------------
# Inputs: stdin and files (not followed)


def feed_stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


def test_stdin_is_the_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed_stdin(monkeypatch, SAMPLE.read_text())
    assert main(["--utc", "--color", "never"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(SAMPLE_LINES)
    assert out[3] == fmt(PLAIN)
    assert out[5] == "Requested: gpt-4o, Got: gpt-4o-2024-11-20"


def test_stdin_last_lines_and_filters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed_stdin(monkeypatch, SAMPLE.read_text())
    assert main(["-", "-n", "2", "--utc", "--color", "never", "--requests-only"]) == 0
    assert capsys.readouterr().out.splitlines() == [fmt(STREAM), fmt(CUT_STREAM)]


def test_file_whole_or_last_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "aigw.log"
    log.write_text(SAMPLE.read_text())
    assert main([str(log), "--utc", "--color", "never"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(SAMPLE_LINES)
    assert main([str(log), "-n", "3", "--utc", "--color", "never"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [fmt(STREAM), fmt(CUT_STREAM)]
    assert main([str(log), "-n", "0"]) == 0
    assert capsys.readouterr().out == ""


def test_last_lines_across_read_blocks(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"".join(b"line %d %s\n" % (i, b"x" * (i % 200)) for i in range(20_000)))
    assert list(tail_file(log, lines=3)) == [
        f"line {i} {'x' * (i % 200)}" for i in (19_997, 19_998, 19_999)
    ]
    everything = list(tail_file(log, lines=50_000))
    assert (len(everything), everything[0]) == (20_000, "line 0 ")
    log.write_bytes(b"a\nb\nno newline at the end")
    assert list(tail_file(log, lines=2)) == ["b", "no newline at the end"]
    log.write_bytes(b"")
    assert list(tail_file(log, lines=2)) == []


def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "aigw.log"
    log.write_bytes(b"caf\xe9\r\n")
    assert list(tail_file(log)) == ["caf\ufffd"]


def test_unreadable_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.log")]) == 2
    assert f"aigw tail: error: cannot read {tmp_path}/nope.log: No such" in capsys.readouterr().err
    assert main([str(tmp_path), "-f"]) == 2
    assert f"cannot read {tmp_path}: Is a directory" in capsys.readouterr().err


def test_output_errors_are_not_blamed_on_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Full(io.StringIO):
        def write(self, _text: str) -> int:
            raise OSError(28, "No space left on device")

    log = tmp_path / "aigw.log"
    log.write_text(SAMPLE.read_text())
    monkeypatch.setattr(sys, "stdout", Full())
    with pytest.raises(OSError, match="No space left"):
        main([str(log)])


def test_ctrl_c_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupted(io.BytesIO):
        def __iter__(self) -> Iterator[bytes]:
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(Interrupted()))
    assert main([]) == 0


def test_closed_stdout_exits_0_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    class Closed(io.StringIO):
        def write(self, _text: str) -> int:
            raise BrokenPipeError

    # StringIO.fileno() raises, so the /dev/null redirect leaves pytest's fd 1 alone.
    monkeypatch.setattr(sys, "stdout", Closed())
    feed_stdin(monkeypatch, SAMPLE.read_text())
    assert main([]) == 0


# --------------------------------------------------------------------------
# Following a file


@contextmanager
def following(path: Path, **kwargs: Any) -> Iterator[queue.Queue[str]]:
    """``tail_file(follow=True)`` in a thread, stopped and joined on exit."""
    lines: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        for line in tail_file(path, follow=True, poll_interval=0.01, stop=stop.is_set, **kwargs):
            lines.put(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def take(lines: queue.Queue[str], count: int) -> list[str]:
    return [lines.get(timeout=5) for _ in range(count)]


def test_follow_holds_partial_lines_and_survives_truncation_and_deletion(tmp_path: Path) -> None:
    log = tmp_path / "aigw.log"
    log.write_text("old 1\nold 2\nold 3\n")
    notices: list[str] = []
    with following(log, lines=1, notice=notices.append) as lines:
        assert take(lines, 1) == ["old 3"]
        with log.open("a") as writer:
            writer.write('{"half": ')
            writer.flush()
            time.sleep(0.05)
            assert lines.empty()  # never a half-written line
            writer.write('"line"}\n')
        assert take(lines, 1) == ['{"half": "line"}']
        log.write_text("new\n")  # copytruncate: same file, shorter
        assert take(lines, 1) == ["new"]
        log.unlink()
        time.sleep(0.05)
        log.write_text("recreated\n")
        assert take(lines, 1) == ["recreated"]
    assert any("truncated" in n for n in notices)
    assert any("replaced" in n for n in notices)


def test_follow_waits_for_a_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    notices: list[str] = []
    with following(log, lines=1, notice=notices.append) as lines:
        time.sleep(0.05)
        log.write_text("first\nsecond\n")
        assert take(lines, 2) == ["first", "second"]  # all of it is new: -n does not apply
    assert notices == [f"{log} does not exist yet; waiting for it"]


class Reader:
    """Collects a child's stdout lines in a thread, so waits can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def expect(self, *request_ids: str) -> None:
        for request_id in request_ids:
            line = self.lines.get(timeout=5)
            self.seen.append(line)
            assert short_request_id(request_id) in line, (request_id, self.seen)


def test_follow_across_logrotate_end_to_end(tmp_path: Path) -> None:
    """``python -m aigw.tail -f``: rename + create, a late write to the old file, copytruncate."""
    log = tmp_path / "aigw.log"
    log.write_text("".join(request(f"start{i:03d}") + "\n" for i in range(12)))
    # A shell started in the background ignores SIGINT and children inherit that;
    # restore Python's handler so the test sends the Ctrl-C a terminal would.
    with subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from aigw.tail import main; sys.exit(main())",
         "-f", str(log), "-n", "2", "--poll-interval", "0.02", "--color", "never"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as child:  # fmt: skip
        assert child.stdout is not None and child.stderr is not None
        reader = Reader(child.stdout)
        try:
            _rotate_under(child, reader, log)
        finally:
            if child.poll() is None:
                child.kill()
        reader.thread.join(timeout=5)
        err = child.stderr.read()
    assert "was replaced (rotated); following the new file" in err
    assert "was truncated; reading it from the start" in err
    assert "Traceback" not in err


def _rotate_under(child: subprocess.Popen[str], reader: Reader, log: Path) -> None:
    """What logrotate and aigw do to the file while ``child`` follows it."""
    reader.expect("start010", "start011")
    with log.open("a") as writer:  # the gateway's open file
        writer.write(request("appended") + "\n")
        writer.flush()
        reader.expect("appended")
        log.rename(log.with_suffix(".log.1"))  # logrotate: rename...
        writer.write(request("late-old") + "\n")  # ...aigw writes on until SIGUSR1...
    log.write_text(request("new-0001") + "\n" + request("new-0002") + "\n")  # ...create
    reader.expect("late-old", "new-0001", "new-0002")
    log.write_text(request("trunc001") + "\n")  # copytruncate
    reader.expect("trunc001")
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=5) == 0


def test_closed_pipe_exits_0_without_a_traceback(tmp_path: Path) -> None:
    """``aigw tail | head -1``."""
    big = tmp_path / "many.log"
    big.write_text("".join(request(f"{i:08d}") + "\n" for i in range(20_000)))
    errors = tmp_path / "stderr"
    with (
        big.open("rb") as stdin,
        errors.open("wb") as stderr,
        subprocess.Popen(
            [sys.executable, "-m", "aigw.tail", "--color", "never"],
            cwd=REPO, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr,
        ) as child,
    ):  # fmt: skip
        assert child.stdout is not None
        assert b"00000000" in child.stdout.readline()
        child.stdout.close()
        assert child.wait(timeout=10) == 0
    assert errors.read_text() == ""


def test_import_has_no_side_effects() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import aigw.tail"],
        cwd=REPO, input="", capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


# --------------------------------------------------------------------------
# journald


@pytest.fixture
def fake_journalctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``journalctl`` first on PATH: records its arguments, prints the sample."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "journalctl"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/args"\n'
        f'cat "{SAMPLE}"\n'
        'exit "${FAKE_JOURNALCTL_RC:-0}"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "args"


def test_journal_reads_journalctl(
    fake_journalctl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--journal", "--errors", "--utc", "--color", "never"]) == 0
    assert fake_journalctl.read_text().split() == [
        "--unit", "aigw", "--output", "cat", "--no-pager", "--follow"
    ]  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert fmt(RATE_LIMITED) in out and fmt(BAD_GATEWAY) in out and fmt(CUT_STREAM) in out
    assert fmt(PLAIN) not in out
    assert "Requested: gpt-4o, Got: gpt-4o-2024-11-20" in out  # not JSON: passed through


def test_journal_unit_lines_and_no_follow(fake_journalctl: Path) -> None:
    assert main(["--journal", "aigw-canary", "--no-follow", "-n", "50", "--requests-only"]) == 0
    assert fake_journalctl.read_text().split() == [
        "--unit", "aigw-canary", "--output", "cat", "--no-pager", "--lines", "50"
    ]  # fmt: skip


def test_failing_journalctl_is_exit_1(
    fake_journalctl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_JOURNALCTL_RC", "1")
    assert main(["--journal", "--no-follow"]) == 1


def test_journalctl_is_stopped_when_stdout_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "journalctl"
    # Like journalctl -f: some lines, then it waits for more forever.
    script.write_text(
        f'#!/bin/sh\necho $$ > "{tmp_path}/pid"\n'
        f'{shutil.which("cat")} "{SAMPLE}"\nexec {shutil.which("sleep")} 60\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))

    class Closed(io.StringIO):
        def write(self, _text: str) -> int:
            raise BrokenPipeError

    monkeypatch.setattr(sys, "stdout", Closed())
    started = time.monotonic()
    assert main(["--journal"]) == 0
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)


def test_missing_journalctl_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no journalctl there
    assert main(["--journal"]) == 2
    err = capsys.readouterr().err
    assert "aigw tail: error: journalctl not found" in err
    assert "... | aigw tail" in err


def test_file_and_journal_together_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["app.log", "--journal"]) == 2
    assert "either FILE (app.log) or --journal" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Colour decision


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("argv", "env", "tty", "coloured"),
    [
        ([], {}, True, True),
        ([], {}, False, False),
        ([], {"NO_COLOR": "1"}, True, False),
        ([], {"TERM": "dumb"}, True, False),
        (["--color", "always"], {"NO_COLOR": "1"}, False, True),
        (["--color", "never"], {}, True, False),
    ],
)
def test_colour_only_on_a_terminal_unless_asked(
    argv: list[str],
    env: dict[str, str],
    tty: bool,
    coloured: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = Tty() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    feed_stdin(monkeypatch, SAMPLE_LINES[3] + "\n")
    assert run(argparse.Namespace(**vars(parse([*argv])))) == 0
    assert (ESC in out.getvalue()) is coloured


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["tail", *argv])


# --------------------------------------------------------------------------
# Consumers (key-auth): shown on the line, and --consumer


def test_the_consumer_is_shown_after_the_request_id() -> None:
    line = fmt({**PLAIN, "consumer": "team-search", "credential": "0a1b2c3d4e5f"})
    assert line == fmt(PLAIN) + "  by team-search"
    assert "0a1b2c3d4e5f" not in line  # the credential id is in the log, not on the line
    refused = fmt({**PLAIN, "status": 403, "consumer": "loner", "outcome": "access_denied"})
    assert refused.endswith("by loner  access_denied")
    assert "by" not in fmt(PLAIN).split()


def test_the_consumer_is_escaped_and_coloured() -> None:
    line = fmt({**PLAIN, "consumer": "a\x1b[2Jb"}, color=True)
    assert "\x1b[2J" not in line
    assert "\x1b[36mby a" in line


def test_consumer_filter() -> None:
    search = {**PLAIN, "consumer": "team-search"}
    chat = {**PLAIN, "consumer": "team-chat"}
    flt = Filter(consumers=frozenset({"team-search", "ops"}))
    assert flt.matches(search)
    assert not flt.matches(chat)
    assert not flt.matches(PLAIN)  # no consumer: a route without key-auth, or refused
    assert flt.matches(OTHER["config_reload"])
    assert Filter().matches(chat)
    for value in ODD_VALUES:
        flt.matches({**PLAIN, "consumer": value})


def test_consumer_option_is_repeatable_and_takes_a_list(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(["--consumer", "a", "--consumer", "b, c"])
    assert Filter.from_args(args).consumers == frozenset({"a", "b", "c"})
    assert Filter.from_args(parse([])).consumers == frozenset()
    lines = [
        request("11111111", consumer="a"),
        request("22222222", consumer="z"),
        request("33333333"),
    ]
    feed_stdin(monkeypatch, "\n".join(lines) + "\n")
    assert main(["--consumer", "a,b", "--utc", "--color", "never"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].endswith("by a")


def test_empty_consumer_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--consumer", "a,,b"])
    assert exit_.value.code == 2
    assert "argument --consumer: expected NAME or NAME,NAME" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Balanced routes: the target that answered and the failovers before it


def balanced(target: str | None, *attempts: tuple[str, int | None, str | None]) -> dict[str, Any]:
    """PLAIN as a balanced route logs it: *attempts* are (target, status, error)."""
    return {
        **PLAIN,
        "target": target,
        "attempts": [
            {"target": name, "status": status, "error": error, "ms": 12.5}
            for name, status, error in attempts
        ],
    }


FAILED_OVER = balanced("eastus", ("sweden", 429, None), ("eastus", 200, None))


def test_failover_shows_the_tries_then_the_target_that_answered() -> None:
    line = fmt(FAILED_OVER)
    assert line.endswith(f"{shown_id(PLAIN['request_id'])}  429→200 via eastus")
    assert f"{YELLOW}m429→200 via eastus" in fmt(FAILED_OVER, color=True)


def test_failover_after_errors_names_them_without_the_upstream_prefix() -> None:
    event = balanced(
        "westus",
        ("sweden", None, "upstream_unreachable"),
        ("eastus", None, "upstream_connect_timeout"),
        ("westus", 200, None),
    )
    assert fmt(event).endswith("  unreachable→connect_timeout→200 via westus")


def test_one_try_shows_only_the_target_dimmed() -> None:
    event = balanced("eastus", ("eastus", 200, None))
    assert fmt(event).endswith(f"{shown_id(PLAIN['request_id'])}  via eastus")
    assert "\x1b[2mvia eastus" in fmt(event, color=True)


def test_every_try_failed_shows_the_tries_and_the_outcome() -> None:
    event = {
        **balanced(None, ("sweden", 429, None), ("eastus", None, "upstream_unreachable")),
        "status": 429,
        "outcome": "all_targets_rate_limited",
    }
    line = fmt(event)
    assert "  429→unreachable  all_targets_rate_limited" in line
    assert " via " not in line


def test_a_route_without_balancer_shows_no_tries() -> None:
    assert fmt(PLAIN).endswith(shown_id(PLAIN["request_id"]))


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_odd_attempts_never_crash(value: Any) -> None:
    fmt({**PLAIN, "attempts": value, "target": value})
    fmt({**PLAIN, "attempts": [value, {"status": value, "error": value}], "target": "t"})
    Filter(targets=frozenset({"t"})).matches({**PLAIN, "attempts": value, "target": value})
    Filter(targets=frozenset({"t"})).matches({**PLAIN, "attempts": [value]})


def test_target_filter_matches_the_answering_and_the_tried_targets() -> None:
    by_sweden = Filter(targets=frozenset({"sweden"}))
    assert by_sweden.matches(FAILED_OVER)  # tried, then failed over from
    assert Filter(targets=frozenset({"eastus"})).matches(FAILED_OVER)  # answered
    assert not Filter(targets=frozenset({"westus"})).matches(FAILED_OVER)
    assert not by_sweden.matches(PLAIN)  # not a balanced route
    assert by_sweden.matches(OTHER["config_reload"])


def test_target_option_is_repeatable_and_takes_a_list(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(["--target", "sweden", "--target", "eastus,westus"])
    assert Filter.from_args(args).targets == frozenset({"sweden", "eastus", "westus"})
    lines = [
        json.dumps({**FAILED_OVER, "request_id": "11111111"}),
        json.dumps({**balanced("westus", ("westus", 200, None)), "request_id": "22222222"}),
        request("33333333"),
    ]
    feed_stdin(monkeypatch, "\n".join(lines) + "\n")
    assert main(["--target", "sweden", "--utc", "--color", "never"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].endswith("429→200 via eastus")
