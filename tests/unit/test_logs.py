"""The log renderer: JSON lines, and no configured secret ever written."""

from __future__ import annotations

import json
from typing import Any

from aigw.logs import SecretScrubber

_KEY = "azure-key-0123456789abcdef"
_QUOTED = 'pa"ss\\word-with-escapes'


def _render(scrubber: SecretScrubber, **event: Any) -> str:
    return scrubber(None, "info", dict(event))


def _scrubber() -> SecretScrubber:
    scrubber = SecretScrubber()
    scrubber.replace([_KEY, _QUOTED, "short"])
    return scrubber


def test_a_line_without_secrets_is_plain_json() -> None:
    event = {"event": "request", "status": 200, "path": "/openai/x", "usage": None}
    assert json.loads(_render(_scrubber(), **event)) == event


def test_secrets_are_cut_from_strings_nested_values_and_object_reprs() -> None:
    class Holder:
        def __str__(self) -> str:
            return f"Holder(key={_KEY})"

    line = _render(
        _scrubber(),
        event="x",
        message=f"upstream said {_KEY} twice {_KEY}",
        nested={"list": [_QUOTED, 1], "tuple": (f"k={_KEY}",)},
        obj=Holder(),
    )
    assert _KEY not in line and "ss\\\\word" not in line
    doc = json.loads(line)  # still valid JSON
    assert doc["message"] == "upstream said [REDACTED] twice [REDACTED]"
    assert doc["nested"] == {"list": ["[REDACTED]", 1], "tuple": ["k=[REDACTED]"]}
    assert doc["obj"] == "Holder(key=[REDACTED])"


def test_a_secret_in_a_key_is_cut_from_the_line() -> None:
    line = _render(_scrubber(), **{_KEY: 1})
    assert _KEY not in line
    assert "[REDACTED]" in line


def test_short_values_are_not_treated_as_secrets() -> None:
    # "short" (< 8 characters) would mangle ordinary words in every line.
    assert json.loads(_render(_scrubber(), event="short read"))["event"] == "short read"


def test_replacing_the_secrets_forgets_the_old_ones() -> None:
    scrubber = _scrubber()
    scrubber.replace(["another-secret-value"])
    assert _KEY in _render(scrubber, message=_KEY)
    assert "another-secret-value" not in _render(scrubber, message="another-secret-value")
