"""Structured logging: one JSON object per line on stdout (journald keeps it as is).

Configured once at start-up. Two rules shape the processor chain:

* SECURITY: tracebacks are rendered without frame locals. structlog's default
  ``dict_tracebacks`` includes them, and a local holding an Azure key would be
  printed verbatim (measured with structlog 26.1).
* SECURITY: every configured secret is scrubbed from every rendered line, as a
  second line of defence behind "never log headers or bodies". The set of
  secrets is replaced whenever the route table is.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

__all__ = ["LogFile", "SecretScrubber", "configure_logging", "get_logger", "scrubber"]

_REDACTED = "[REDACTED]"


class SecretScrubber:
    """Renders log events as JSON lines with every known secret replaced by ``[REDACTED]``.

    PERF: the event is rendered first and the finished line searched for each
    secret (raw and JSON-escaped): a handful of C-speed substring scans per
    line. Only a line that does contain a secret pays for the careful path,
    which scrubs the event's values (keeping the JSON valid) and renders again.
    Scrubbing every value before rendering cost ~20 us per access-log line
    with two secrets configured; this costs ~1 us.
    """

    __slots__ = ("_forms", "_secrets")

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._forms: tuple[str, ...] = ()

    def replace(self, secrets: Iterable[str]) -> None:
        """Sets the secrets to scrub; short values are skipped to avoid mangling logs."""
        # Longest first, so a secret that contains another is replaced whole.
        unique = {s for s in secrets if len(s) >= 8}
        ordered = tuple(sorted(unique, key=len, reverse=True))
        forms = {form for s in ordered for form in (s, orjson.dumps(s).decode()[1:-1])}
        self._forms = tuple(sorted(forms, key=len, reverse=True))
        self._secrets = ordered

    def scrub(self, text: str) -> str:
        """Returns *text* with every known secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
        line = _dumps(event)
        for form in self._forms:
            if form in line:
                return self._render_scrubbed(event)
        return line

    def _render_scrubbed(self, event: MutableMapping[str, Any]) -> str:
        for key, value in event.items():
            event[key] = self._scrub_nested(value)
        line = _dumps(event)
        # What the value pass cannot reach (a key, a number, an object's
        # str()) is cut out of the line itself: secrecy before validity.
        for form in self._forms:
            if form in line:
                line = line.replace(form, _REDACTED)
        return line

    def _scrub_nested(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._scrub_nested(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._scrub_nested(v) for v in value]
        return value


scrubber = SecretScrubber()
"""The process-wide scrubber; the gateway refreshes it on every table swap."""


class LogFile:
    """An append-only log file that can be reopened (logrotate's ``postrotate`` sends SIGUSR1).

    structlog's logger binds ``write`` of the object it is given once, so it is
    given this wrapper, whose ``write`` always goes to the current file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = self._open()

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8")

    def write(self, text: str) -> int:
        """Appends *text* to the current file."""
        return self._file.write(text)

    def flush(self) -> None:
        """Flushes the current file."""
        self._file.flush()

    def reopen(self) -> None:
        """Switches to a freshly opened file at the same path (after a rotation)."""
        fresh = self._open()
        stale, self._file = self._file, fresh
        stale.close()

    def close(self) -> None:
        """Closes the current file."""
        self._file.close()


class _IterationFlush:
    """The sink structlog writes to: lines go out at once, flushed once per loop iteration.

    PERF: flushing after every access-log line was one write(2) per request;
    under load many requests finish in one event-loop iteration, and this
    flushes them together at the start of the next one. Nothing waits longer
    than that iteration, and a line logged outside the loop thread (start-up,
    worker threads, shutdown) is flushed at once, as before.
    """

    __slots__ = ("__weakref__", "_pending", "_stream")  # structlog keys its write lock weakly

    def __init__(self, stream: TextIO | LogFile) -> None:
        self._stream = stream
        self._pending = False

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def flush(self) -> None:
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._stream.flush()
            return
        self._pending = True
        loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._pending = False
        self._stream.flush()


def configure_logging(
    level: str = "info",
    stream: TextIO | LogFile | None = None,
    *,
    static: dict[str, Any] | None = None,
) -> None:
    """Configures structlog to write JSON lines to *stream* (stdout by default).

    Args:
        level: Minimum level written.
        stream: Where the lines go.
        static: Fields added to every event (e.g. ``worker``).
    """
    processors: list[Any] = [
        structlog.processors.add_log_level,
        _UtcClock(),
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        # Renders the JSON line (see _dumps) with secrets scrubbed: always last.
        scrubber,
    ]
    if static:
        processors.insert(0, _Static(static))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # type: ignore: LogFile provides the write/flush part of TextIO that structlog uses.
        logger_factory=structlog.WriteLoggerFactory(_IterationFlush(stream or sys.stdout)),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


class _Static:
    """Adds fixed fields (cheaper than contextvars for values that never change)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = dict(fields)

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event.update(self._fields)
        return event


class _UtcClock:
    """ISO-8601 UTC timestamps with microseconds.

    PERF: the date-time part is formatted once per second, not per event;
    structlog's TimeStamper builds a datetime for every line.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event


def _dumps(obj: Any) -> str:
    # default=str: never fall back to repr() of an object, which for aiohttp
    # request objects includes the injected api-key.
    return orjson.dumps(obj, default=str).decode()


def get_logger(name: str) -> Any:
    """Returns a structlog logger whose events carry ``component=name``.

    The logger stays a lazy proxy until first used, so module-level loggers
    pick up the configuration made later by ``configure_logging``.
    """
    return structlog.get_logger(component=name)
