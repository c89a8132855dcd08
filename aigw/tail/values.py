"""Values of a decoded log event: read as numbers or lists, shown as safe single-line text.

Nothing here raises for a missing field or a value of an unexpected type:
numbers come back as None, text as ``-``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from aigw.short_id import short_request_id

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


def _duration(value: object) -> str:
    ms = _as_number(value)
    if ms is None:
        return "-"
    if abs(ms) < 10:
        return f"{ms:.1f}ms"
    if abs(ms) < 10_000:
        return f"{ms:.0f}ms"
    return f"{ms / 1000:.1f}s"
