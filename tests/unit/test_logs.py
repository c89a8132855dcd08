"""The log renderer: JSON lines, and no configured secret ever written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aigw.logs import LogFile, SecretScrubber, configure_logging, get_logger

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


def test_lines_reach_the_file_within_one_loop_iteration(tmp_path: Path) -> None:
    path = tmp_path / "aigw.log"
    log_file = LogFile(path)
    try:
        configure_logging("info", log_file)
        log = get_logger("test")
        log.info("outside_the_loop")
        # No loop running: flushed at once, as a start-up error must be.
        assert "outside_the_loop" in path.read_text()

        async def scenario() -> tuple[str, str]:
            log.info("inside_the_loop")
            log.info("same_iteration")
            before = path.read_text()
            await asyncio.sleep(0)  # one iteration
            await asyncio.sleep(0)
            return before, path.read_text()

        before, after = asyncio.run(scenario())
        assert "inside_the_loop" not in before  # batched, not one write per line
        assert "inside_the_loop" in after and "same_iteration" in after
        assert [json.loads(line)["event"] for line in after.splitlines()] == [
            "outside_the_loop",
            "inside_the_loop",
            "same_iteration",
        ]
    finally:
        configure_logging("info")
        log_file.close()
