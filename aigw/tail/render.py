"""One log line as the line to print: :func:`render_line`, :func:`format_event`, request lines.

:func:`render_line` decodes, filters and formats one input line;
:func:`format_event` formats one decoded event; a ``request`` event becomes the
fixed-width request line built here, other events are formatted by
:mod:`aigw.tail.events`. Pure: no I/O.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from aigw.tail.events import _format_other
from aigw.tail.filters import Filter
from aigw.tail.style import (
    _ARROW,
    _BOLD,
    _CYAN,
    _DIM,
    _GREEN,
    _MAGENTA,
    _RED,
    _W_LATENCY,
    _W_METHOD,
    _W_MODEL,
    _W_ROUTE,
    _W_TIME,
    _W_TOKENS,
    _YELLOW,
    _Painter,
)
from aigw.tail.values import (
    _UNSAFE_RAW,
    _as_int,
    _as_number,
    _duration,
    _escape,
    _request_id,
    _text,
)

_CLIENT_CLOSED: Final = 499  # nginx's convention, used by aigw's access log


def format_event(event: Mapping[str, Any], *, color: bool, utc: bool = False) -> str | None:
    """Renders one decoded aigw log event as a single line, without a newline.

    A ``request`` event becomes fixed-width columns: time, status, method,
    route, configured→served model, latency (upstream, time to first token),
    tokens (prompt+completion=total), a stream marker, the short form of the
    request id (:func:`aigw.short_id.short_request_id`: the part that differs
    between requests), ``by <consumer>`` when key-auth identified the caller,
    on a balanced route the target that answered and, when it failed over,
    the tries before it (``429→unreachable→200 via eastus``) and, for
    failures, the outcome and error text. Other
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
    consumer = event.get("consumer")
    if isinstance(consumer, str) and consumer:
        columns.append(paint(f"by {_text(consumer)}", _CYAN))
    attempts = _attempts(event)
    if attempts:
        # A failover in yellow: the answer came, but not from the first target tried.
        columns.append(paint(attempts, _YELLOW if _ARROW in attempts else _DIM))
    failure = _failure_text(outcome, error)
    if failure:
        # A status under 400 with a failure is a stream cut after its 200: red.
        codes = status_codes if status is not None and status >= 400 else (_RED,)
        columns.append(paint(failure, *codes))
    return "  ".join(columns).rstrip()


def _attempts(event: Mapping[str, Any]) -> str:
    """A balanced route's tries: ``429→200 via eastus``; ``via eastus`` for one try."""
    attempts = event.get("attempts")
    target = event.get("target")
    steps = [_attempt_step(attempt) for attempt in attempts] if isinstance(attempts, list) else []
    text = _ARROW.join(steps) if len(steps) > 1 else ""
    if isinstance(target, str) and target:
        text = f"{text} via {_text(target)}" if text else f"via {_text(target)}"
    return text


def _attempt_step(attempt: object) -> str:
    """An attempt's status, or its failure without the ``upstream_`` every one carries."""
    if not isinstance(attempt, Mapping):
        return "-"
    status = _as_int(attempt.get("status"))
    if status is not None:
        return str(status)
    error = attempt.get("error")
    if isinstance(error, str) and error:
        return _text(error.removeprefix("upstream_"))
    return "-"


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
