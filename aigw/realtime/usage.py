"""Token usage of a realtime session: the sum over its ``response.done`` events.

Azure ends every response of a Realtime session with one ``response.done``
event whose ``response.usage`` counts that response's tokens
(``input_tokens``, ``output_tokens``, ``total_tokens``). A session may run
many responses; its access-log line and its quota charge take the sum, named
like every other usage in aigw (``prompt_tokens`` = input,
``completion_tokens`` = output).

PERF: every frame from the upstream passes :meth:`SessionUsage.observe`; only
those containing the bytes ``"response.done"`` (one per response, among
hundreds of deltas) are parsed.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["SessionUsage"]

_MARKER = b'"response.done"'


class SessionUsage:
    """Sums the usage of one session's ``response.done`` events.

    Attributes:
        responses: ``response.done`` events seen.
    """

    __slots__ = ("_input", "_output", "_total", "responses")

    def __init__(self) -> None:
        self._input = 0
        self._output = 0
        self._total = 0
        self.responses = 0

    def observe(self, frame: bytes) -> None:
        """Reads one frame from the upstream; counts it if it is a ``response.done``."""
        if _MARKER not in frame:
            return
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return  # not JSON: the client's to judge, nothing to count
        if not isinstance(event, dict) or event.get("type") != "response.done":
            return  # the marker was a value inside another event
        self.responses += 1
        response = event.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
        if not isinstance(usage, dict):
            return  # a cancelled or failed response may carry none
        given_in = _count(usage, "input_tokens")
        given_out = _count(usage, "output_tokens")
        self._input += given_in
        self._output += given_out
        given_total = _count(usage, "total_tokens")
        self._total += given_total if "total_tokens" in usage else given_in + given_out

    @property
    def usage(self) -> dict[str, int] | None:
        """The session's usage so far, in ``ex.usage``'s names; None before any response."""
        if not self.responses:
            return None
        return {
            "prompt_tokens": self._input,
            "completion_tokens": self._output,
            "total_tokens": self._total,
        }


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    # bool is an int subclass: `true` is no token count.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0
