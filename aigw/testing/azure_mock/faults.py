"""Fault schedule: faults posted to ``/_mock/faults``, consumed FIFO by matching requests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .wire import dumps

__all__ = [
    "FAULT_KINDS",
    "STREAM_ONLY_FAULTS",
    "Fault",
    "FaultQueue",
    "FaultSpecError",
    "parse_fault",
]

#: Parameters each fault kind accepts, on top of the common ones.
_KIND_PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "status": frozenset({"status", "retry_after", "retry_after_ms", "body", "content_type"}),
    "content_filter": frozenset(),
    "cut_stream": frozenset({"after_events", "rst"}),
    "eof_stream": frozenset({"after_events"}),
    "stream_error_event": frozenset({"after_events", "error"}),
    "delay": frozenset({"latency_ms", "token_delay_ms"}),
    "redirect": frozenset({"location", "status"}),
    "hang": frozenset(),
    "close": frozenset({"rst"}),
    "malformed": frozenset({"body"}),
}
_COMMON_PARAMS: Final = frozenset({"fault", "deployment", "count", "stream", "headers"})
FAULT_KINDS: Final = frozenset(_KIND_PARAMS)
#: These only make sense on a stream, so non-stream requests never consume them.
STREAM_ONLY_FAULTS: Final = frozenset({"cut_stream", "eof_stream", "stream_error_event"})


class FaultSpecError(ValueError):
    """A fault posted to the control API is malformed; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One validated fault. ``spec`` is the posted JSON, echoed by ``GET /_mock/faults``."""

    kind: str
    spec: Mapping[str, Any]
    deployment: str | None = None
    stream: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()
    status: int | None = None
    retry_after: float | None = None
    retry_after_ms: float | None = None
    body: bytes | None = None
    content_type: str | None = None
    after_events: int | None = None
    rst: bool = False
    error: Mapping[str, Any] | None = None
    latency_ms: float | None = None
    token_delay_ms: float | None = None
    location: str | None = None

    def matches(self, deployment: str, stream: bool) -> bool:
        """Whether a request to ``deployment`` (streaming or not) consumes this fault."""
        if self.deployment is not None and self.deployment != deployment:
            return False
        return self.stream is None or self.stream == stream


def _number(spec: Mapping[str, Any], key: str, *, default: float | None = None) -> float | None:
    value = spec.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultSpecError(f"{key!r} must be a non-negative number or null")
    return float(value)


def _int(spec: Mapping[str, Any], key: str, *, low: int, high: int) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FaultSpecError(f"{key!r} must be an integer in [{low}, {high}]")
    return value


def _body(spec: Mapping[str, Any]) -> bytes | None:
    value = spec.get("body")
    if value is None:
        return None
    # A string is sent verbatim so tests can send non-JSON; anything else is JSON.
    return value.encode() if isinstance(value, str) else dumps(value)


def _headers(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    value = spec.get("headers", {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise FaultSpecError("'headers' must be an object of string values")
    return tuple(value.items())


def _status_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    status = _int(spec, "status", low=200, high=599)
    if status is None or status in (204, 304):
        raise FaultSpecError("'status' is required: an integer in [200, 599], not 204 or 304")
    # 429s carry both retry headers by default, as Azure's do; explicit null drops one.
    retry_after = _number(spec, "retry_after", default=1 if status == 429 else None)
    default_ms = retry_after * 1000 if retry_after is not None and status == 429 else None
    content_type = spec.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise FaultSpecError("'content_type' must be a string")
    return {
        "status": status,
        "retry_after": retry_after,
        "retry_after_ms": _number(spec, "retry_after_ms", default=default_ms),
        "body": _body(spec),
        "content_type": content_type,
    }


def _kind_kwargs(kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "status":
        return _status_kwargs(spec)
    kwargs: dict[str, Any] = {}
    if "after_events" in _KIND_PARAMS[kind]:
        kwargs["after_events"] = _int(spec, "after_events", low=0, high=1_000_000)
    if "rst" in spec:
        if not isinstance(spec["rst"], bool):
            raise FaultSpecError("'rst' must be a boolean")
        kwargs["rst"] = spec["rst"]
    if kind == "stream_error_event" and spec.get("error") is not None:
        if not isinstance(spec["error"], dict):
            raise FaultSpecError("'error' must be an object")
        kwargs["error"] = spec["error"]
    if kind == "delay":
        kwargs["latency_ms"] = _number(spec, "latency_ms")
        kwargs["token_delay_ms"] = _number(spec, "token_delay_ms")
    if kind == "redirect":
        location = spec.get("location")
        if location is not None and not isinstance(location, str):
            raise FaultSpecError("'location' must be a string")
        kwargs["location"] = location
        status = _int(spec, "status", low=300, high=399)
        kwargs["status"] = 307 if status is None else status
    if kind == "malformed":
        kwargs["body"] = _body(spec)
    return kwargs


def parse_fault(spec: object) -> tuple[Fault, int | None]:
    """Validate one posted fault; returns it with its ``count`` (``None`` = until cleared)."""
    if not isinstance(spec, dict):
        raise FaultSpecError("a fault must be a JSON object")
    kind = spec.get("fault")
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"'fault' must be one of {sorted(FAULT_KINDS)}")
    unknown = set(spec) - _COMMON_PARAMS - _KIND_PARAMS[kind]
    if unknown:
        raise FaultSpecError(f"unknown parameters for {kind!r}: {sorted(unknown)}")
    deployment = spec.get("deployment")
    if deployment is not None and not isinstance(deployment, str):
        raise FaultSpecError("'deployment' must be a string or null")
    count = spec.get("count", 1)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise FaultSpecError("'count' must be a positive integer, or null for unlimited")
    stream = spec.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise FaultSpecError("'stream' must be a boolean or null")
    if kind in STREAM_ONLY_FAULTS:
        if stream is False:
            raise FaultSpecError(f"{kind!r} only applies to streams")
        stream = True
    fault = Fault(
        kind=kind,
        spec=spec,
        deployment=deployment,
        stream=stream,
        headers=_headers(spec),
        **_kind_kwargs(kind, spec),
    )
    return fault, count


class _Entry:
    __slots__ = ("fault", "remaining")

    def __init__(self, fault: Fault, remaining: int | None) -> None:
        self.fault = fault
        self.remaining = remaining


class FaultQueue:
    """Pending faults in posting order; a request takes the first one that matches it."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def add(self, fault: Fault, count: int | None) -> None:
        """Schedule ``fault`` for the next ``count`` matching requests (``None``: all)."""
        self._entries.append(_Entry(fault, count))

    def clear(self) -> None:
        """Drop every pending fault."""
        self._entries.clear()

    def take(self, deployment: str, stream: bool) -> Fault | None:
        """Consume one use of the first fault matching this request, if any."""
        for index, entry in enumerate(self._entries):
            if entry.fault.matches(deployment, stream):
                if entry.remaining is not None:
                    entry.remaining -= 1
                    if entry.remaining == 0:
                        del self._entries[index]
                return entry.fault
        return None

    def to_json(self) -> list[dict[str, Any]]:
        """Pending faults as posted, each with its ``remaining`` uses (``null``: unlimited)."""
        return [{**entry.fault.spec, "remaining": entry.remaining} for entry in self._entries]
