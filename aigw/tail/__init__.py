"""``aigw tail``: aigw's JSON log lines as one readable, coloured line per request.

aigw logs one JSON object per line (see ``aigw/chain/access_log.py`` for the
``request`` event). This reader renders them for a human, from stdin, a log
file (optionally followed across logrotate) or journald::

    journalctl -u aigw -o cat | aigw tail --errors
    aigw tail -f /var/log/aigw/aigw.log --route azure-gpt-4o --slow 2000
    aigw tail --journal --status 5xx

The rendering core (:func:`format_event`, :class:`Filter`, :func:`render_line`)
is pure; the input plumbing (:func:`tail_file`, :func:`run`) is separate.
Importing this package has no side effects.

Modules:

* :mod:`aigw.tail.filters`: :class:`Filter`, :func:`parse_status`.
* :mod:`aigw.tail.render`: :func:`render_line`, :func:`format_event`, the request line.
* :mod:`aigw.tail.events`: the lines of other events (config, start, stop, errors).
* :mod:`aigw.tail.style`: column widths and ANSI colours.
* :mod:`aigw.tail.values`: event values as numbers and safe text.
* :mod:`aigw.tail.follow`: reading files (across logrotate), pipes and the journal.
* :mod:`aigw.tail.output`: writing to stdout, colour or not.
* :mod:`aigw.tail.cli`: :func:`register`, :func:`main`, :func:`run` and the options.
"""

from __future__ import annotations

from aigw.tail.cli import main, register, run
from aigw.tail.filters import Filter, StatusRange, parse_status
from aigw.tail.follow import tail_file
from aigw.tail.render import format_event, render_line

__all__ = [
    "Filter",
    "StatusRange",
    "format_event",
    "main",
    "parse_status",
    "register",
    "render_line",
    "run",
    "tail_file",
]
