"""Which log events ``aigw tail`` shows: :class:`Filter`, and ``--status`` specs.

:func:`parse_status` parses a ``--status`` value into :class:`StatusRange` s;
:meth:`Filter.matches` decides on one decoded log event.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aigw.tail.values import _as_int, _as_number

_LOUD_LEVELS: Final = frozenset({"warning", "warn", "error", "exception", "critical"})


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
        consumers: Show requests identified as one of these consumers
            (key-auth usernames; empty: any).
        targets: Show requests of balanced routes sent to one of these targets,
            whether it answered or was tried before another did (empty: any).
        requests_only: Drop everything but request events, including lines
            that are not JSON.
    """

    routes: frozenset[str] = frozenset()
    statuses: tuple[StatusRange, ...] = ()
    slow_ms: float | None = None
    errors: bool = False
    stream: bool | None = None
    models: frozenset[str] = frozenset()
    consumers: frozenset[str] = frozenset()
    targets: frozenset[str] = frozenset()
    requests_only: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Filter:
        """Builds the filter from options parsed by :func:`aigw.tail.cli.register`'s parser."""
        return cls(
            routes=frozenset(args.route or ()),
            statuses=tuple(args.status or ()),
            slow_ms=args.slow,
            errors=args.errors,
            stream=args.stream,
            models=frozenset(args.model or ()),
            consumers=frozenset(getattr(args, "consumer", None) or ()),
            targets=frozenset(getattr(args, "target", None) or ()),
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
        if self.consumers and _label(event.get("consumer")) not in self.consumers:
            return False
        return not self.targets or not _targets(event).isdisjoint(self.targets)


def _label(value: object) -> str | None:
    """*value* if it is a string: the only kind a name filter can match (and always hashable)."""
    return value if isinstance(value, str) else None


def _targets(event: Mapping[str, Any]) -> set[str | None]:
    """The targets a balanced route's request answered from or tried."""
    attempts = event.get("attempts")
    tried = {
        _label(attempt.get("target"))
        for attempt in (attempts if isinstance(attempts, list) else ())
        if isinstance(attempt, Mapping)
    }
    tried.add(_label(event.get("target")))
    return tried


def _failed(event: Mapping[str, Any]) -> bool:
    status = _as_int(event.get("status"))
    outcome = event.get("outcome")
    return (status is not None and status >= 400) or (isinstance(outcome, str) and outcome != "ok")
