"""Writing the rendered lines to stdout, and deciding whether to colour them.

:func:`_pump` renders input lines and writes them through :class:`_Output`;
:func:`_detach_stdout` quiets stdout after its reader went away.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterable
from typing import IO, TextIO

from aigw.tail.filters import Filter
from aigw.tail.render import render_line
from aigw.tail.style import _ARROW


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
