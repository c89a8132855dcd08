"""The ``aigw tail`` command line: its options, and running it on stdin, a file or the journal.

:func:`register` adds ``tail`` to the ``aigw`` parser, :func:`main` is the
standalone entry point (``python -m aigw.tail``), :func:`run` runs either.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from aigw.tail.filters import Filter, StatusRange, parse_status
from aigw.tail.follow import (
    _DEFAULT_POLL,
    _journal_command,
    _last,
    _stream_lines,
    tail_file,
)
from aigw.tail.output import _detach_stdout, _is_regular_file, _Output, _pump, _use_color
from aigw.tail.values import _as_number

_PROG: Final = "aigw tail"
_DEFAULT_UNIT: Final = "aigw"
_FOLLOW_LINES: Final = 10  # tail's default when following and -n is not given


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the ``tail`` sub-command; dispatch parsed arguments to :func:`run`.

    Args:
        subparsers: The result of ``parser.add_subparsers()`` of the ``aigw`` parser.
    """
    command = subparsers.add_parser(
        "tail",
        help="render aigw's JSON log lines readably, one per request, with filters",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m aigw.tail``), with the options of ``aigw tail``.

    Args:
        argv: The arguments; None reads ``sys.argv``.

    Returns:
        The exit code, as :func:`run` returns it.
    """
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Runs ``aigw tail`` with options parsed by a parser set up by :func:`register`.

    Returns:
        0 when the input ended, on Ctrl-C, or when the reader of stdout went
        away (``aigw tail | head``); 1 if journalctl failed; 2 if the input
        cannot be read (missing file, no journalctl).
    """
    if args.journal is not None and args.source != "-":
        _error(f"give either FILE ({args.source}) or --journal, not both")
        return 2
    flt = Filter.from_args(args)
    color = _use_color(args.color, sys.stdout)
    try:
        if args.journal is not None:
            code = _run_journal(args, flt, color=color)
        elif args.source != "-":
            code = _run_file(args, flt, color=color)
        else:
            stdin = sys.stdin.buffer
            output = _Output(sys.stdout, live=not _is_regular_file(stdin))
            _pump(_last(_stream_lines(stdin), args.lines), flt, output, color=color, utc=args.utc)
            code = 0
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        _detach_stdout()
        return 0
    return code


def _run_file(args: argparse.Namespace, flt: Filter, *, color: bool) -> int:
    follow = bool(args.follow)
    lines = args.lines
    if lines is None and follow:
        lines = _FOLLOW_LINES
    path = Path(args.source)
    source = tail_file(
        path, lines=lines, follow=follow, poll_interval=args.poll_interval, notice=_notice
    )
    output = _Output(sys.stdout, live=follow)
    try:
        with contextlib.closing(source):
            _pump(_reading(path, source), flt, output, color=color, utc=args.utc)
    except _InputError as exc:
        _error(str(exc))
        return 2
    return 0


class _InputError(Exception):
    """The input cannot be read (as opposed to stdout failing to take the output)."""


def _reading(path: Path, lines: Iterator[str]) -> Iterator[str]:
    # Only errors raised while *reading* come through here; a failing write to
    # stdout happens in the caller and keeps its own meaning (EPIPE: exit 0).
    try:
        yield from lines
    except OSError as exc:
        raise _InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _run_journal(args: argparse.Namespace, flt: Filter, *, color: bool) -> int:
    executable = shutil.which("journalctl")
    if executable is None:
        _error(
            "journalctl not found: --journal needs systemd's journalctl on PATH; "
            "pipe the log in instead (... | aigw tail)"
        )
        return 2
    follow = args.follow is not False  # the journal is followed unless --no-follow
    command = _journal_command(executable, args.journal, follow=follow, lines=args.lines)
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    except OSError as exc:
        _error(f"cannot run journalctl: {exc.strerror or exc}")
        return 2
    try:
        assert process.stdout is not None  # stdout=PIPE
        with process.stdout:
            _pump(
                _stream_lines(process.stdout),
                flt,
                _Output(sys.stdout, live=True),
                color=color,
                utc=args.utc,
            )
        returncode = process.wait()
    finally:
        # Ctrl-C or a closed stdout: journalctl -f would otherwise run on.
        _end(process)
    # Killed by a signal (the terminal's Ctrl-C reaches it too) is not a failure.
    # journalctl printed its own error on stderr, which it shares with us.
    return 1 if returncode > 0 else 0


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _notice(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr, flush=True)


def _error(message: str) -> None:
    print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)


_DESCRIPTION: Final = """\
Render aigw's JSON log lines readably: one line per request, with filters.

Reads stdin (or '-'), a log file (-f follows it across logrotate), or journald
(--journal). Events other than requests (config reloads, start, stop, errors)
are shown dimmed or bold; lines that are not JSON (tracebacks) are passed
through. Request filters combine with AND; a repeated filter with OR."""

_EPILOG: Final = """\
request line columns:
  time  status  method  route  model→served model  latency (up upstream, ttft first token)
  prompt+completion=total tok  stream  request id  [by consumer]
  [tries via target: 429→200 via eastus]  [outcome: error]

examples:
  journalctl -u aigw -o cat | aigw tail --errors
  aigw tail --journal --status 5xx,429
  aigw tail --journal --consumer team-search,team-chat --status 401,403
  aigw tail --journal --target eastus --errors
  aigw tail -f /var/log/aigw/aigw.log --route azure-gpt-4o --slow 2000"""


def _add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``aigw tail``, shared by :func:`register` and :func:`main`."""
    source = parser.add_argument_group("input")
    source.add_argument(
        "source",
        nargs="?",
        default="-",
        metavar="FILE",
        help="log file to read; '-' or nothing reads stdin",
    )
    source.add_argument(
        "--journal",
        nargs="?",
        const=_DEFAULT_UNIT,
        default=None,
        metavar="UNIT",
        help=f"read the systemd unit's journal with journalctl (default unit: {_DEFAULT_UNIT}); "
        "followed unless --no-follow",
    )
    source.add_argument(
        "-f",
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep reading as FILE grows, across rotation and truncation (like tail -F)",
    )
    source.add_argument(
        "-n",
        "--lines",
        type=_count,
        default=None,
        metavar="N",
        help="start with the last N input lines (default: 10 when following, else all)",
    )
    source.add_argument(
        "--poll-interval", type=_seconds, default=_DEFAULT_POLL, help=argparse.SUPPRESS
    )

    filters = parser.add_argument_group("filters")
    filters.add_argument(
        "--route", action="append", metavar="NAME", help="only this route (repeatable)"
    )
    filters.add_argument(
        "--status",
        action="extend",
        type=_status,
        metavar="SPEC",
        help="only these statuses: 429, 5xx, 400-499, or a comma-separated list (repeatable)",
    )
    filters.add_argument(
        "--slow", type=_milliseconds, metavar="MS", help="only requests taking MS or longer"
    )
    filters.add_argument(
        "--errors",
        action="store_true",
        help="only failed requests (status >= 400 or outcome not ok), warnings and errors",
    )
    filters.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only streamed (--stream) or non-streamed (--no-stream) requests",
    )
    filters.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="only this configured, deployment or served model (repeatable)",
    )
    filters.add_argument(
        "--consumer",
        action="extend",
        type=_names,
        metavar="NAME",
        help="only requests of this consumer (key-auth username): repeatable, or a "
        "comma-separated list",
    )
    filters.add_argument(
        "--target",
        action="extend",
        type=_names,
        metavar="NAME",
        help="only requests a balanced route sent to this target (azure_instance or host), "
        "answered or failed over from: repeatable, or a comma-separated list",
    )
    filters.add_argument(
        "--requests-only",
        action="store_true",
        help="hide everything but request lines (config events, non-JSON lines)",
    )

    display = parser.add_argument_group("display")
    display.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output (auto: when stdout is a terminal and NO_COLOR is unset)",
    )
    display.add_argument(
        "--utc", action="store_true", help="show times in UTC, as logged (default: local time)"
    )


def _status(text: str) -> tuple[StatusRange, ...]:
    try:
        return parse_status(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected NAME or NAME,NAME,..., got {text!r}")
    return names


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of lines (0 or more), got {text!r}"
        )
    return value


def _milliseconds(text: str) -> float:
    value = _as_number(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds (0 or more), got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = _as_number(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds (more than 0), got {text!r}")
    return value
