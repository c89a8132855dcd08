"""Reading the input: log files (followed across logrotate), byte streams, journalctl.

:func:`tail_file` reads a file like ``tail`` (``tail -F`` when following);
:func:`_stream_lines` reads a pipe (stdin, journalctl's output) line by line;
:func:`_journal_command` is the ``journalctl`` command line for ``--journal``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import IO, Final

_DEFAULT_POLL: Final = 0.5
_BLOCK: Final = 64 * 1024


def tail_file(
    path: Path,
    *,
    lines: int | None = None,
    follow: bool = False,
    poll_interval: float = _DEFAULT_POLL,
    stop: Callable[[], bool] | None = None,
    notice: Callable[[str], None] | None = None,
) -> Generator[str, None, None]:
    """Yields the lines of a log file, like ``tail`` (and ``tail -F`` when following).

    Lines are decoded as UTF-8 (invalid bytes replaced) and yielded without
    their terminator. A line still being written (no newline yet) is held back
    until it is complete. When following, the path is polled at end of file:
    if it now names another file (logrotate's rename + create, or delete +
    create) the rest of the old file has already been read and the new one is
    read from its start; if the file shrank (``copytruncate``) it is read again
    from its start. A missing path is waited for.

    Args:
        path: The log file.
        lines: Start with the last this many lines; None: from the start.
        follow: Keep reading as the file grows, until *stop* or forever.
        poll_interval: Seconds between checks for new data when idle.
        stop: Called when idle; following ends once it returns True.
        notice: Called with a human-readable message on rotation, truncation
            and while waiting for the file to appear.

    Raises:
        OSError: The file cannot be opened (when following: for a reason
            other than not existing yet).
    """
    say = notice or _ignore
    opened = _open_log(path, follow=follow, poll_interval=poll_interval, stop=stop, say=say)
    if opened is None:
        return
    handle, appeared = opened
    try:
        # A file that appeared while we waited is all new: read it whole.
        if lines is not None and not appeared:
            handle.seek(_start_of_last_lines(handle, lines))
        pending = b""
        while True:
            chunk = handle.readline()
            if chunk.endswith(b"\n"):
                yield _decode(pending + chunk)
                pending = b""
                continue
            if chunk:
                pending += chunk  # the writer is mid-line; the rest will follow
                continue
            if not follow:
                if pending:
                    yield _decode(pending)
                return
            change = _changed(path, handle)
            if change == "replaced":
                fresh = _try_open(path)
                if fresh is not None:
                    if pending:  # the old file ended mid-line: nothing will complete it
                        yield _decode(pending)
                        pending = b""
                    handle.close()
                    handle = fresh
                    say(f"{path} was replaced (rotated); following the new file")
                    continue
            elif change == "truncated":
                handle.seek(0)
                pending = b""
                say(f"{path} was truncated; reading it from the start")
                continue
            if stop is not None and stop():
                return
            time.sleep(poll_interval)
    finally:
        handle.close()


def _ignore(_message: str) -> None:
    pass


def _open_log(
    path: Path,
    *,
    follow: bool,
    poll_interval: float,
    stop: Callable[[], bool] | None,
    say: Callable[[str], None],
) -> tuple[IO[bytes], bool] | None:
    """The open file and whether it appeared while we waited; None if stopped waiting."""
    if not follow:
        return open(path, "rb"), False  # closed by tail_file's finally
    waited = False
    while True:
        handle = _try_open(path)
        if handle is not None:
            return handle, waited
        if not waited:
            say(f"{path} does not exist yet; waiting for it")
            waited = True
        if stop is not None and stop():
            return None
        time.sleep(poll_interval)


def _try_open(path: Path) -> IO[bytes] | None:
    """Opens *path*, or None while it does not exist (between logrotate's rename and create)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _changed(path: Path, handle: IO[bytes]) -> str | None:
    """``replaced``, ``truncated`` or None, comparing *path* with the open *handle*."""
    try:
        named = os.stat(path)
    except OSError:
        # Gone (rotated, not yet re-created): the writer may still append to
        # the file we hold, so keep reading it until a new one appears.
        return None
    held = os.fstat(handle.fileno())
    # The inode cannot have been reused: we hold the old one open.
    if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
        return "replaced"
    if named.st_size < handle.tell():
        return "truncated"
    return None


def _start_of_last_lines(handle: IO[bytes], count: int) -> int:
    """The offset where the last *count* lines of *handle* start (read backwards, in blocks)."""
    end = handle.seek(0, os.SEEK_END)
    if count <= 0 or end == 0:
        return end
    handle.seek(end - 1)
    # The final newline ends the last line; it does not start another one.
    position = end - 1 if handle.read(1) == b"\n" else end
    found = 0
    while position > 0:
        low = max(0, position - _BLOCK)
        handle.seek(low)
        block = handle.read(position - low)
        index = len(block)
        while (index := block.rfind(b"\n", 0, index)) >= 0:
            found += 1
            if found == count:
                return low + index + 1
        position = low
    return 0


def _stream_lines(stream: IO[bytes]) -> Iterator[str]:
    # Iterating a binary stream returns each line as soon as it is complete,
    # which is what a live pipe (journalctl -f, aigw serve | ...) needs.
    for raw in stream:
        yield _decode(raw)


def _last(lines: Iterable[str], count: int | None) -> Iterable[str]:
    return lines if count is None else deque(lines, maxlen=count)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")


def _journal_command(executable: str, unit: str, *, follow: bool, lines: int | None) -> list[str]:
    """The ``journalctl`` command line that prints *unit*'s log messages as logged."""
    command = [executable, "--unit", unit, "--output", "cat", "--no-pager"]
    if lines is not None:
        command += ["--lines", str(lines)]
    if follow:
        command.append("--follow")
    return command
