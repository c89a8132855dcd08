"""The look of a rendered line: column widths, ANSI colours and the painter applying them.

Shared by the request line (:mod:`aigw.tail.render`) and the lines of other
events (:mod:`aigw.tail.events`).
"""

from __future__ import annotations

from typing import Final

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
