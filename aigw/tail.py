"""``aigw tail``: aigw's JSON log lines as one readable, coloured line per request.

aigw logs one JSON object per line (see ``aigw/chain/access_log.py`` for the
``request`` event). This reader renders them for a human, from stdin, a log
file (optionally followed across logrotate) or journald::

    journalctl -u aigw -o cat | aigw tail --errors
    aigw tail -f /var/log/aigw/aigw.log --route azure-gpt-4o --slow 2000
    aigw tail --journal --status 5xx

The rendering core (:func:`format_event`, :class:`Filter`, :func:`render_line`)
is pure; the input plumbing (:func:`tail_file`, :func:`run`) is separate.
Importing this module has no side effects.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, TextIO

from aigw.short_id import short_request_id

__all__ = [
    "Filter",
    "StatusRange",
    "format_event",
    "main",
    "parse_status",
    "register",
    "render_line",
    "run",
    "tail_file",
]

_PROG: Final = "aigw tail"
_DEFAULT_UNIT: Final = "aigw"
_FOLLOW_LINES: Final = 10  # tail's default when following and -n is not given
_DEFAULT_POLL: Final = 0.5
_BLOCK: Final = 64 * 1024

# Column widths of a request line. Longer values are never cut (a truncated
# route or model name would be wrong, not just ugly); they push the line right.
_W_TIME: Final = 12  # HH:MM:SS.mmm
_W_METHOD: Final = 6
_W_ROUTE: Final = 20
_W_MODEL: Final = 36
_W_LATENCY: Final = 30
_W_TOKENS: Final = 16
_W_TAG: Final = 6  # CONFIG, START, ERROR... in place of "status method"

_ARROW: Final = "→"

# ANSI SGR codes.
_RESET: Final = "\x1b[0m"
_BOLD: Final = "1"
_DIM: Final = "2"
_RED: Final = "31"
_GREEN: Final = "32"
_YELLOW: Final = "33"
_MAGENTA: Final = "35"
_CYAN: Final = "36"

_CLIENT_CLOSED: Final = 499  # nginx's convention, used by aigw's access log

# SECURITY: values can carry client-chosen text (paths, error messages quoting
# them), and JSON decoding turns "\u001b" back into a real ESC. Printed raw, it
# would let a client drive the reader's terminal (colours, cursor, title, OSC 8
# links), and a bidi override would make the line read differently from what it
# says. C0/C1 controls, DEL and the bidi controls are shown escaped instead.
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_RAW: Final = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_LEVEL_TAGS: Final = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARN",
    "warn": "WARN",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRIT",
}
_LOUD_LEVELS: Final = frozenset({"warning", "warn", "error", "exception", "critical"})
# Keys every event carries; the generic renderer does not repeat them.
_ENVELOPE: Final = frozenset({"event", "level", "timestamp", "component", "exception"})


# --------------------------------------------------------------------------
# Filters


@dataclass(frozen=True, slots=True)
class StatusRange:
    """An inclusive range of HTTP status codes, e.g. ``StatusRange(500, 599)`` for ``5xx``."""

    low: int
    high: int

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and self.low <= status <= self.high


_STATUS_CLASS: Final = re.compile(r"([1-5])xx", re.IGNORECASE)
_STATUS_RANGE: Final = re.compile(r"(\d{3})\s*-\s*(\d{3})")
_STATUS_CODE: Final = re.compile(r"\d{3}")


def parse_status(spec: str) -> tuple[StatusRange, ...]:
    """Parses a ``--status`` value.

    Args:
        spec: One or more comma-separated terms, each a code (``429``), a class
            (``5xx``) or an inclusive range (``400-499``); codes are 100-599.

    Returns:
        One :class:`StatusRange` per term.

    Raises:
        ValueError: *spec* is not of that form; the message says why.
    """
    ranges: list[StatusRange] = []
    for term in (part.strip() for part in spec.split(",")):
        if match := _STATUS_CLASS.fullmatch(term):
            base = int(match.group(1)) * 100
            ranges.append(StatusRange(base, base + 99))
            continue
        if match := _STATUS_RANGE.fullmatch(term):
            low, high = int(match.group(1)), int(match.group(2))
        elif _STATUS_CODE.fullmatch(term):
            low = high = int(term)
        else:
            raise ValueError(
                f"invalid status {term!r}: expected a code (429), a class (5xx) "
                "or a range (400-499)"
            )
        if not (100 <= low <= 599 and 100 <= high <= 599):
            raise ValueError(f"invalid status {term!r}: HTTP status codes are 100-599")
        if low > high:
            raise ValueError(f"invalid status range {term!r}: {low} is above {high}")
        ranges.append(StatusRange(low, high))
    return tuple(ranges)


@dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    """Which log events to show. The default shows everything.

    Request filters combine with AND; values repeated within one filter (two
    ``--route``, two ``--status``) combine with OR. Events other than
    ``request`` (config reloads, start, stop, errors) are rare and explain the
    requests around them, so request filters do not hide them; ``errors`` keeps
    only the warnings and errors among them, ``requests_only`` drops them all.

    Attributes:
        routes: Show requests to these route names only (empty: any).
        statuses: Show requests whose status is in one of these ranges (empty: any).
        slow_ms: Show requests with ``latency_ms`` at least this (None: any).
        errors: Show failed requests only: status 400 or more, or an outcome
            other than ``ok`` (a stream cut after its 200 has been sent).
        stream: True: streamed requests only; False: non-streamed only; None: both.
        models: Show requests whose configured model, deployment or served
            model (``response_model``) is one of these (empty: any).
        requests_only: Drop everything but request events, including lines
            that are not JSON.
    """

    routes: frozenset[str] = frozenset()
    statuses: tuple[StatusRange, ...] = ()
    slow_ms: float | None = None
    errors: bool = False
    stream: bool | None = None
    models: frozenset[str] = frozenset()
    requests_only: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Filter:
        """Builds the filter from options parsed by a parser :func:`register` set up."""
        return cls(
            routes=frozenset(args.route or ()),
            statuses=tuple(args.status or ()),
            slow_ms=args.slow,
            errors=args.errors,
            stream=args.stream,
            models=frozenset(args.model or ()),
            requests_only=args.requests_only,
        )

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether *event*, one decoded log line, is to be shown.

        Missing or oddly typed fields never raise: a request whose status is
        unknown does not match ``statuses``, one without latency not ``slow_ms``.
        """
        if event.get("event") != "request":
            if self.requests_only:
                return False
            return not self.errors or _label(event.get("level")) in _LOUD_LEVELS
        if self.routes and _label(event.get("route")) not in self.routes:
            return False
        if self.statuses:
            status = _as_int(event.get("status"))
            if status is None or not any(status in r for r in self.statuses):
                return False
        if self.slow_ms is not None:
            latency = _as_number(event.get("latency_ms"))
            if latency is None or latency < self.slow_ms:
                return False
        if self.errors and not _failed(event):
            return False
        if self.stream is not None and (event.get("stream") is True) != self.stream:
            return False
        if self.models:
            served = {_label(event.get(key)) for key in ("model", "deployment", "response_model")}
            if not served & self.models:
                return False
        return True


def _label(value: object) -> str | None:
    """*value* if it is a string: the only kind a name filter can match (and always hashable)."""
    return value if isinstance(value, str) else None


def _failed(event: Mapping[str, Any]) -> bool:
    status = _as_int(event.get("status"))
    outcome = event.get("outcome")
    return (status is not None and status >= 400) or (isinstance(outcome, str) and outcome != "ok")


# --------------------------------------------------------------------------
# Rendering


def format_event(event: Mapping[str, Any], *, color: bool, utc: bool = False) -> str | None:
    """Renders one decoded aigw log event as a single line, without a newline.

    A ``request`` event becomes fixed-width columns: time, status, method,
    route, configured→served model, latency (upstream, time to first token),
    tokens (prompt+completion=total), a stream marker, the short form of the
    request id (:func:`aigw.short_id.short_request_id`: the part that differs
    between requests) and, for failures, the outcome and error text. Other
    events become a time, a tag (``CONFIG``, ``START``, ``STOP``, ``ERROR``...)
    and a summary. Missing fields and values of unexpected types render as
    ``-``; this never raises for any mapping.

    Args:
        event: The JSON object of one log line.
        color: Add ANSI colours (status by class, failures in red or magenta,
            other events dimmed or bold by level).
        utc: Show times in UTC as logged; by default they are converted to the
            local time zone. Timestamps without a zone are shown as given.

    Returns:
        The line, or None when *event* is not an aigw log event (no string
        ``event`` key), so the caller can show the original text instead.
    """
    name = event.get("event")
    if not isinstance(name, str):
        return None
    paint = _Painter(color)
    clock = _clock(event.get("timestamp"), utc=utc)
    if name == "request":
        return _format_request(event, clock, paint)
    return _format_other(name, event, clock, paint)


def render_line(line: str, flt: Filter, *, color: bool, utc: bool = False) -> str | None:
    """Turns one input line into the line to print, or None to print nothing.

    JSON objects that are aigw events are filtered with *flt* and formatted
    with :func:`format_event`. Anything else (a traceback from a crash, text
    another program printed) is passed through as is, unless
    ``flt.requests_only``; control characters in it other than tab are
    escaped so that it cannot drive the terminal.

    Args:
        line: One input line, with or without its line terminator.
        flt: Which events to show.
        color: Passed to :func:`format_event`.
        utc: Passed to :func:`format_event`.
    """
    text = line.rstrip("\r\n")
    event = _decode_event(text)
    if event is not None:
        rendered = format_event(event, color=color, utc=utc)
        if rendered is not None:
            return rendered if flt.matches(event) else None
    if flt.requests_only:
        return None
    return _UNSAFE_RAW.sub(_escape, text)


def _decode_event(text: str) -> dict[str, Any] | None:
    stripped = text.strip()
    # Cheap pre-check: most non-JSON lines (tracebacks) are rejected without parsing.
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class _Painter:
    """Wraps text in ANSI codes, or leaves it alone when colour is off."""

    __slots__ = ("on",)

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, text: str, *codes: str) -> str:
        if not self.on or not codes or not text:
            return text
        return f"\x1b[{';'.join(codes)}m{text}{_RESET}"

    def cell(self, text: str, width: int, *codes: str, right: bool = False) -> str:
        """*text* padded to *width*, the padding outside the colour codes."""
        pad = " " * max(0, width - len(text))
        return pad + self(text, *codes) if right else self(text, *codes) + pad


def _format_request(event: Mapping[str, Any], clock: str, paint: _Painter) -> str:
    status = _as_int(event.get("status"))
    status_codes = _status_codes(status)
    outcome = event.get("outcome")
    error = event.get("error")
    columns = [
        paint.cell(clock, _W_TIME),
        paint.cell(_text(status), 3, *status_codes, _BOLD, right=True),
        paint.cell(_text(event.get("method")), _W_METHOD),
        paint.cell(_text(event.get("route")), _W_ROUTE),
        paint.cell(_models(event), _W_MODEL),
        _latency(event, paint),
        paint.cell(_tokens(event), _W_TOKENS),
        paint.cell("stream" if event.get("stream") is True else "", 6, _CYAN),
        paint(_request_id(event.get("request_id")), _DIM),
    ]
    failure = _failure_text(outcome, error)
    if failure:
        # A status under 400 with a failure is a stream cut after its 200: red.
        codes = status_codes if status is not None and status >= 400 else (_RED,)
        columns.append(paint(failure, *codes))
    return "  ".join(columns).rstrip()


def _status_codes(status: int | None) -> tuple[str, ...]:
    if status is None:
        return ()
    if status == _CLIENT_CLOSED:
        return (_MAGENTA,)
    if status >= 500:
        return (_RED,)
    if status >= 400:
        return (_YELLOW,)
    if status >= 300:
        return (_CYAN,)
    if status >= 200:
        return (_GREEN,)
    return ()


def _models(event: Mapping[str, Any]) -> str:
    configured, served = event.get("model"), event.get("response_model")
    if served is None or served == configured:
        return _text(configured)
    return f"{_text(configured)}{_ARROW}{_text(served)}"


def _latency(event: Mapping[str, Any], paint: _Painter) -> str:
    total = _duration(event.get("latency_ms"))
    # Only what is known: no upstream time means the upstream never answered
    # (the outcome says why), no ttft means no token arrived.
    details = [
        f"{label} {_duration(event.get(key))}"
        for label, key in (("up", "upstream_latency_ms"), ("ttft", "ttft_ms"))
        if _as_number(event.get(key)) is not None
    ]
    text = f"{total:>7}"
    width = len(text)
    if details:
        extra = f" ({', '.join(details)})"
        text += paint(extra, _DIM)
        width += len(extra)
    return text + " " * max(0, _W_LATENCY - width)


def _duration(value: object) -> str:
    ms = _as_number(value)
    if ms is None:
        return "-"
    if abs(ms) < 10:
        return f"{ms:.1f}ms"
    if abs(ms) < 10_000:
        return f"{ms:.0f}ms"
    return f"{ms / 1000:.1f}s"


def _tokens(event: Mapping[str, Any]) -> str:
    counts = [_as_int(event.get(key)) for key in _TOKEN_KEYS]
    if all(count is None for count in counts):
        return "-"
    prompt, completion, total = ("-" if count is None else str(count) for count in counts)
    return f"{prompt}+{completion}={total} tok"


_TOKEN_KEYS: Final = ("prompt_tokens", "completion_tokens", "total_tokens")


def _failure_text(outcome: object, error: object) -> str:
    parts = []
    if outcome is not None and outcome != "ok":
        parts.append(_text(outcome))
    if error is not None:
        parts.append(_text(error))
    return ": ".join(parts)


# -- other events -----------------------------------------------------------


def _format_other(name: str, event: Mapping[str, Any], clock: str, paint: _Painter) -> str:
    level = event.get("level")
    if name == "config_reload" and _as_list(event.get("rejected")):
        # Logged at info level, but a file was refused: worth the reader's eye.
        level = "warning"
    renderer = _RENDERERS.get(name)
    if renderer is not None:
        tag, message = renderer(event)
    else:
        tag = "CONFIG" if name.startswith("config_") else _LEVEL_TAGS.get(str(level), "LOG")
        message = _generic(name, event)
    summary = _exception_summary(event.get("exception"))
    if summary:
        message += f"  {summary}"
    head = f"{clock:<{_W_TIME}}  "
    if level in ("error", "exception", "critical"):
        return head + paint.cell(tag, _W_TAG, _RED, _BOLD) + "  " + paint(message, _BOLD)
    if level in ("warning", "warn"):
        return head + paint.cell(tag, _W_TAG, _YELLOW, _BOLD) + "  " + message
    # Routine events stay in the background of the request lines around them.
    return paint(f"{head}{tag:<{_W_TAG}}  {message}", _DIM)


_Renderer = Callable[[Mapping[str, Any]], tuple[str, str]]


def _config_reload(event: Mapping[str, Any]) -> tuple[str, str]:
    changes = [
        f"{sign}{_text(name)}"
        for sign, key in (("+", "added"), ("~", "changed"), ("-", "removed"))
        for name in _as_list(event.get(key))
    ]
    message = f"generation {_text(event.get('generation'))}"
    trigger = event.get("trigger")
    if trigger is not None:
        message += f" ({_text(trigger)})"
    message += ": " + (" ".join(changes) if changes else "no file changes")
    rejected = []
    for entry in _as_list(event.get("rejected")):
        if isinstance(entry, Mapping):
            # The issues themselves are on the config_rejected line logged just before.
            issues = len(_as_list(entry.get("issues")))
            noun = "issue" if issues == 1 else "issues"
            rejected.append(f"{_basename(entry.get('file'))} ({issues} {noun})")
        else:
            rejected.append(_basename(entry))
    if rejected:
        message += "  rejected: " + ", ".join(rejected)
    facts = [f"{_text(event.get('routes'))} routes"]
    if "build_ms" in event:
        facts.append(_duration(event.get("build_ms")))
    if event.get("degraded") is True:
        facts.append("degraded")
    return "CONFIG", f"{message}  [{', '.join(facts)}]"


def _config_rejected(event: Mapping[str, Any]) -> tuple[str, str]:
    path = event.get("file")
    name = _basename(path)
    issues = []
    for issue in _as_list(event.get("issues")):
        text = _text(issue)
        # Issues repeat the file's full path; its name is enough on one line.
        if isinstance(path, str) and path and text.startswith(path):
            text = name + text[len(path) :]
        issues.append(text)
    serving = event.get("serving")
    message = f"rejected {name}"
    if serving is not None:
        message += f" (serving {_text(serving)})"
    return "CONFIG", f"{message}: {'; '.join(issues) or '-'}"


def _config_reload_failed(event: Mapping[str, Any]) -> tuple[str, str]:
    return "CONFIG", (
        f"reload failed: {_text(event.get('reason'))} "
        f"(still serving generation {_text(event.get('generation'))})"
    )


def _listening(event: Mapping[str, Any]) -> tuple[str, str]:
    facts = [
        f"admin {_text(event.get('admin')) if event.get('admin') else 'off'}",
        f"generation {_text(event.get('generation'))}",
        f"{_text(event.get('routes'))} routes",
        f"conf {_text(event.get('conf_dir'))}",
    ]
    if event.get("azure_base_url"):
        facts.append(f"upstream {_text(event.get('azure_base_url'))}")
    return "START", f"listening on {_text(event.get('address'))}  [{', '.join(facts)}]"


def _stop(event: Mapping[str, Any]) -> tuple[str, str]:
    return "STOP", _generic(str(event.get("event")), event)


def _startup_failed(event: Mapping[str, Any]) -> tuple[str, str]:
    return "ERROR", f"startup failed: {_text(event.get('reason'))}"


def _unhandled_error(event: Mapping[str, Any]) -> tuple[str, str]:
    request_id = _request_id(event.get("request_id"))
    return "ERROR", f"unhandled error in route {_text(event.get('route'))}, request {request_id}"


_RENDERERS: Final[Mapping[str, _Renderer]] = {
    "config_reload": _config_reload,
    "config_rejected": _config_rejected,
    "config_reload_failed": _config_reload_failed,
    "listening": _listening,
    "stopping": _stop,
    "stopped": _stop,
    "startup_failed": _startup_failed,
    "unhandled_error": _unhandled_error,
}


def _generic(name: str, event: Mapping[str, Any]) -> str:
    fields = [
        f"{_text(key)}={_text(value)}" for key, value in event.items() if key not in _ENVELOPE
    ]
    return " ".join([_text(name), *fields])


def _exception_summary(value: object) -> str:
    """``Type: message at file:line in function`` from a structlog exception field."""
    if isinstance(value, str):
        # format_exc_info style: the traceback text; its last line names the error.
        lines = [line for line in value.splitlines() if line.strip()]
        return _text(lines[-1].strip()) if lines else ""
    if not isinstance(value, list) or not value or not isinstance(value[0], Mapping):
        return ""
    # dict_tracebacks: the raised exception first, then its causes.
    raised = value[0]
    summary = f"{_text(raised.get('exc_type'))}: {_text(raised.get('exc_value'))}"
    frames = raised.get("frames")
    if isinstance(frames, list) and frames and isinstance(frames[-1], Mapping):
        frame = frames[-1]
        summary += (
            f" at {_text(frame.get('filename'))}:{_text(frame.get('lineno'))}"
            f" in {_text(frame.get('name'))}"
        )
    root = value[-1]
    if len(value) > 1 and isinstance(root, Mapping):
        summary += f" (from {_text(root.get('exc_type'))}: {_text(root.get('exc_value'))})"
    return summary


# -- value helpers ----------------------------------------------------------


def _text(value: object) -> str:
    """Any JSON value as safe single-line text; None (and missing) as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    else:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        except (ValueError, TypeError, RecursionError):
            text = "-"
    return _UNSAFE.sub(_escape, text) if text else "-"


def _request_id(value: object) -> str:
    """The short form of a request id (:mod:`aigw.short_id`), as safe text."""
    return _text(short_request_id(value) if isinstance(value, str) else value)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _as_int(value: object) -> int | None:
    number = _as_number(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def _as_list(value: object) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _basename(value: object) -> str:
    text = _text(value)
    return text.rsplit("/", 1)[-1] or text


def _clock(value: object, *, utc: bool) -> str:
    """``HH:MM:SS.mmm`` from an ISO 8601 timestamp (or epoch seconds); ``-`` if neither."""
    moment = None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value.strip())
    elif isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            moment = datetime.fromtimestamp(value, tz=UTC)
    if moment is None:
        return "-"
    if moment.tzinfo is not None:
        # astimezone(None) is the local zone; a naive time is shown as logged.
        moment = moment.astimezone(UTC if utc else None)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


# --------------------------------------------------------------------------
# Input


def tail_file(
    path: Path,
    *,
    lines: int | None = None,
    follow: bool = False,
    poll_interval: float = _DEFAULT_POLL,
    stop: Callable[[], bool] | None = None,
    notice: Callable[[str], None] | None = None,
) -> Generator[str, None, None]:
    """Yields the lines of a log file, like ``tail`` (and ``tail -F`` when following).

    Lines are decoded as UTF-8 (invalid bytes replaced) and yielded without
    their terminator. A line still being written (no newline yet) is held back
    until it is complete. When following, the path is polled at end of file:
    if it now names another file (logrotate's rename + create, or delete +
    create) the rest of the old file has already been read and the new one is
    read from its start; if the file shrank (``copytruncate``) it is read again
    from its start. A missing path is waited for.

    Args:
        path: The log file.
        lines: Start with the last this many lines; None: from the start.
        follow: Keep reading as the file grows, until *stop* or forever.
        poll_interval: Seconds between checks for new data when idle.
        stop: Called when idle; following ends once it returns True.
        notice: Called with a human-readable message on rotation, truncation
            and while waiting for the file to appear.

    Raises:
        OSError: The file cannot be opened (when following: for a reason
            other than not existing yet).
    """
    say = notice or _ignore
    opened = _open_log(path, follow=follow, poll_interval=poll_interval, stop=stop, say=say)
    if opened is None:
        return
    handle, appeared = opened
    try:
        # A file that appeared while we waited is all new: read it whole.
        if lines is not None and not appeared:
            handle.seek(_start_of_last_lines(handle, lines))
        pending = b""
        while True:
            chunk = handle.readline()
            if chunk.endswith(b"\n"):
                yield _decode(pending + chunk)
                pending = b""
                continue
            if chunk:
                pending += chunk  # the writer is mid-line; the rest will follow
                continue
            if not follow:
                if pending:
                    yield _decode(pending)
                return
            change = _changed(path, handle)
            if change == "replaced":
                fresh = _try_open(path)
                if fresh is not None:
                    if pending:  # the old file ended mid-line: nothing will complete it
                        yield _decode(pending)
                        pending = b""
                    handle.close()
                    handle = fresh
                    say(f"{path} was replaced (rotated); following the new file")
                    continue
            elif change == "truncated":
                handle.seek(0)
                pending = b""
                say(f"{path} was truncated; reading it from the start")
                continue
            if stop is not None and stop():
                return
            time.sleep(poll_interval)
    finally:
        handle.close()


def _ignore(_message: str) -> None:
    pass


def _open_log(
    path: Path,
    *,
    follow: bool,
    poll_interval: float,
    stop: Callable[[], bool] | None,
    say: Callable[[str], None],
) -> tuple[IO[bytes], bool] | None:
    """The open file and whether it appeared while we waited; None if stopped waiting."""
    if not follow:
        return open(path, "rb"), False  # closed by tail_file's finally
    waited = False
    while True:
        handle = _try_open(path)
        if handle is not None:
            return handle, waited
        if not waited:
            say(f"{path} does not exist yet; waiting for it")
            waited = True
        if stop is not None and stop():
            return None
        time.sleep(poll_interval)


def _try_open(path: Path) -> IO[bytes] | None:
    """Opens *path*, or None while it does not exist (between logrotate's rename and create)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _changed(path: Path, handle: IO[bytes]) -> str | None:
    """``replaced``, ``truncated`` or None, comparing *path* with the open *handle*."""
    try:
        named = os.stat(path)
    except OSError:
        # Gone (rotated, not yet re-created): the writer may still append to
        # the file we hold, so keep reading it until a new one appears.
        return None
    held = os.fstat(handle.fileno())
    # The inode cannot have been reused: we hold the old one open.
    if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
        return "replaced"
    if named.st_size < handle.tell():
        return "truncated"
    return None


def _start_of_last_lines(handle: IO[bytes], count: int) -> int:
    """The offset where the last *count* lines of *handle* start (read backwards, in blocks)."""
    end = handle.seek(0, os.SEEK_END)
    if count <= 0 or end == 0:
        return end
    handle.seek(end - 1)
    # The final newline ends the last line; it does not start another one.
    position = end - 1 if handle.read(1) == b"\n" else end
    found = 0
    while position > 0:
        low = max(0, position - _BLOCK)
        handle.seek(low)
        block = handle.read(position - low)
        index = len(block)
        while (index := block.rfind(b"\n", 0, index)) >= 0:
            found += 1
            if found == count:
                return low + index + 1
        position = low
    return 0


def _stream_lines(stream: IO[bytes]) -> Iterator[str]:
    # Iterating a binary stream returns each line as soon as it is complete,
    # which is what a live pipe (journalctl -f, aigw serve | ...) needs.
    for raw in stream:
        yield _decode(raw)


def _last(lines: Iterable[str], count: int | None) -> Iterable[str]:
    return lines if count is None else deque(lines, maxlen=count)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")


def _journal_command(executable: str, unit: str, *, follow: bool, lines: int | None) -> list[str]:
    """The ``journalctl`` command line that prints *unit*'s log messages as logged."""
    command = [executable, "--unit", unit, "--output", "cat", "--no-pager"]
    if lines is not None:
        command += ["--lines", str(lines)]
    if follow:
        command.append("--follow")
    return command


# --------------------------------------------------------------------------
# Output


class _Output:
    """Writes lines to stdout; flushes each one when the input is live."""

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self._stream = stream
        self._live = live

    def write(self, line: str) -> None:
        try:
            self._stream.write(line + "\n")
        except UnicodeEncodeError:
            # A terminal that is not UTF-8: degrade the text, never crash on it.
            encoding = getattr(self._stream, "encoding", None) or "ascii"
            safe = line.replace(_ARROW, "->").encode(encoding, "replace").decode(encoding)
            self._stream.write(safe + "\n")
        if self._live:
            self._stream.flush()


def _pump(lines: Iterable[str], flt: Filter, output: _Output, *, color: bool, utc: bool) -> None:
    for line in lines:
        rendered = render_line(line, flt, color=color, utc=utc)
        if rendered is not None:
            output.write(rendered)


def _use_color(mode: str, stream: TextIO) -> bool:
    if mode == "always":
        return True
    if mode == "never":
        return False
    # https://no-color.org; a dumb terminal cannot render the codes either.
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _is_regular_file(stream: IO[bytes]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def _detach_stdout() -> None:
    """After EPIPE: point fd 1 at /dev/null so the exit-time flush does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# --------------------------------------------------------------------------
# Command line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the ``tail`` sub-command; dispatch parsed arguments to :func:`run`.

    Args:
        subparsers: The result of ``parser.add_subparsers()`` of the ``aigw`` parser.
    """
    command = subparsers.add_parser(
        "tail",
        help="render aigw's JSON log lines readably, one per request, with filters",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m aigw.tail``), with the options of ``aigw tail``.

    Args:
        argv: The arguments; None reads ``sys.argv``.

    Returns:
        The exit code, as :func:`run` returns it.
    """
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Runs ``aigw tail`` with options parsed by a parser set up by :func:`register`.

    Returns:
        0 when the input ended, on Ctrl-C, or when the reader of stdout went
        away (``aigw tail | head``); 1 if journalctl failed; 2 if the input
        cannot be read (missing file, no journalctl).
    """
    if args.journal is not None and args.source != "-":
        _error(f"give either FILE ({args.source}) or --journal, not both")
        return 2
    flt = Filter.from_args(args)
    color = _use_color(args.color, sys.stdout)
    try:
        if args.journal is not None:
            code = _run_journal(args, flt, color=color)
        elif args.source != "-":
            code = _run_file(args, flt, color=color)
        else:
            stdin = sys.stdin.buffer
            output = _Output(sys.stdout, live=not _is_regular_file(stdin))
            _pump(_last(_stream_lines(stdin), args.lines), flt, output, color=color, utc=args.utc)
            code = 0
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        _detach_stdout()
        return 0
    return code


def _run_file(args: argparse.Namespace, flt: Filter, *, color: bool) -> int:
    follow = bool(args.follow)
    lines = args.lines
    if lines is None and follow:
        lines = _FOLLOW_LINES
    path = Path(args.source)
    source = tail_file(
        path, lines=lines, follow=follow, poll_interval=args.poll_interval, notice=_notice
    )
    output = _Output(sys.stdout, live=follow)
    try:
        with contextlib.closing(source):
            _pump(_reading(path, source), flt, output, color=color, utc=args.utc)
    except _InputError as exc:
        _error(str(exc))
        return 2
    return 0


class _InputError(Exception):
    """The input cannot be read (as opposed to stdout failing to take the output)."""


def _reading(path: Path, lines: Iterator[str]) -> Iterator[str]:
    # Only errors raised while *reading* come through here; a failing write to
    # stdout happens in the caller and keeps its own meaning (EPIPE: exit 0).
    try:
        yield from lines
    except OSError as exc:
        raise _InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _run_journal(args: argparse.Namespace, flt: Filter, *, color: bool) -> int:
    executable = shutil.which("journalctl")
    if executable is None:
        _error(
            "journalctl not found: --journal needs systemd's journalctl on PATH; "
            "pipe the log in instead (... | aigw tail)"
        )
        return 2
    follow = args.follow is not False  # the journal is followed unless --no-follow
    command = _journal_command(executable, args.journal, follow=follow, lines=args.lines)
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    except OSError as exc:
        _error(f"cannot run journalctl: {exc.strerror or exc}")
        return 2
    try:
        assert process.stdout is not None  # stdout=PIPE
        with process.stdout:
            _pump(
                _stream_lines(process.stdout),
                flt,
                _Output(sys.stdout, live=True),
                color=color,
                utc=args.utc,
            )
        returncode = process.wait()
    finally:
        # Ctrl-C or a closed stdout: journalctl -f would otherwise run on.
        _end(process)
    # Killed by a signal (the terminal's Ctrl-C reaches it too) is not a failure.
    # journalctl printed its own error on stderr, which it shares with us.
    return 1 if returncode > 0 else 0


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _notice(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr, flush=True)


def _error(message: str) -> None:
    print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)


_DESCRIPTION: Final = """\
Render aigw's JSON log lines readably: one line per request, with filters.

Reads stdin (or '-'), a log file (-f follows it across logrotate), or journald
(--journal). Events other than requests (config reloads, start, stop, errors)
are shown dimmed or bold; lines that are not JSON (tracebacks) are passed
through. Request filters combine with AND; a repeated filter with OR."""

_EPILOG: Final = """\
request line columns:
  time  status  method  route  model→served model  latency (up upstream, ttft first token)
  prompt+completion=total tok  stream  request id  [outcome: error]

examples:
  journalctl -u aigw -o cat | aigw tail --errors
  aigw tail --journal --status 5xx,429
  aigw tail -f /var/log/aigw/aigw.log --route azure-gpt-4o --slow 2000"""


def _add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``aigw tail``, shared by :func:`register` and :func:`main`."""
    source = parser.add_argument_group("input")
    source.add_argument(
        "source",
        nargs="?",
        default="-",
        metavar="FILE",
        help="log file to read; '-' or nothing reads stdin",
    )
    source.add_argument(
        "--journal",
        nargs="?",
        const=_DEFAULT_UNIT,
        default=None,
        metavar="UNIT",
        help=f"read the systemd unit's journal with journalctl (default unit: {_DEFAULT_UNIT}); "
        "followed unless --no-follow",
    )
    source.add_argument(
        "-f",
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep reading as FILE grows, across rotation and truncation (like tail -F)",
    )
    source.add_argument(
        "-n",
        "--lines",
        type=_count,
        default=None,
        metavar="N",
        help="start with the last N input lines (default: 10 when following, else all)",
    )
    source.add_argument(
        "--poll-interval", type=_seconds, default=_DEFAULT_POLL, help=argparse.SUPPRESS
    )

    filters = parser.add_argument_group("filters")
    filters.add_argument(
        "--route", action="append", metavar="NAME", help="only this route (repeatable)"
    )
    filters.add_argument(
        "--status",
        action="extend",
        type=_status,
        metavar="SPEC",
        help="only these statuses: 429, 5xx, 400-499, or a comma-separated list (repeatable)",
    )
    filters.add_argument(
        "--slow", type=_milliseconds, metavar="MS", help="only requests taking MS or longer"
    )
    filters.add_argument(
        "--errors",
        action="store_true",
        help="only failed requests (status >= 400 or outcome not ok), warnings and errors",
    )
    filters.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only streamed (--stream) or non-streamed (--no-stream) requests",
    )
    filters.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="only this configured, deployment or served model (repeatable)",
    )
    filters.add_argument(
        "--requests-only",
        action="store_true",
        help="hide everything but request lines (config events, non-JSON lines)",
    )

    display = parser.add_argument_group("display")
    display.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output (auto: when stdout is a terminal and NO_COLOR is unset)",
    )
    display.add_argument(
        "--utc", action="store_true", help="show times in UTC, as logged (default: local time)"
    )


def _status(text: str) -> tuple[StatusRange, ...]:
    try:
        return parse_status(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of lines (0 or more), got {text!r}"
        )
    return value


def _milliseconds(text: str) -> float:
    value = _as_number(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds (0 or more), got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = _as_number(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds (more than 0), got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
