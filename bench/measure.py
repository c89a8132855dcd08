"""Small measurement helpers shared by the benchmark suite: statistics, ports, RSS.

Everything here is deliberately dependency-free (stdlib only) so the suite's
own overhead stays easy to reason about.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import threading
from collections.abc import Iterable, Sequence
from types import TracebackType

__all__ = [
    "RssSampler",
    "cpu_seconds",
    "free_port",
    "median",
    "percentile",
    "rss_kib",
    "tree_pids",
]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0..100) of already sorted values, linearly interpolated.

    Returns NaN for an empty sequence so a missing measurement shows up as such in
    the report instead of as a plausible-looking zero.
    """
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if n == 1:
        return float(sorted_values[0])
    rank = (n - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    frac = rank - low
    return float(sorted_values[low]) * (1 - frac) + float(sorted_values[high]) * frac


def median(values: Iterable[float]) -> float:
    """Median that ignores NaN entries; NaN when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1.

    Binding port 0 and releasing it is racy in theory, but the suite starts its
    servers right away and every server is checked for readiness, so a collision
    shows up as a clear start-up failure rather than as skewed numbers.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # the process exited between listdir and open
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def tree_pids(root: int) -> list[int]:
    """*root* and all its descendants (nginx and multi-worker aigw are process trees)."""
    children = _children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def _vmrss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(root: int, pids: Sequence[int] | None = None) -> int:
    """Sum of VmRSS over the process tree of *root*, in KiB.

    For a multi-process target this double-counts pages shared after fork; the
    report says so. VmRSS is what the issue asks for and what ``ps``/``top`` show.
    """
    return sum(_vmrss_kib(pid) for pid in (pids if pids is not None else tree_pids(root)))


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root: int | None) -> float:
    """User + system CPU seconds used so far by the process tree of *root* (NaN if none).

    Divided by wall time this says how many cores a target used during a run: on a
    2-core machine shared with the load generator and the upstream, a proxy at 1.0
    has saturated its single event loop.
    """
    if root is None:
        return math.nan
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _CLK_TCK


class RssSampler:
    """Samples the RSS of a process tree in a background thread; keeps the peak.

    The tree is re-enumerated every few samples only: walking /proc costs about a
    millisecond, and on a 2-core machine the sampler must not become load itself.
    """

    def __init__(self, root: int | None, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        assert self.root is not None
        pids = tree_pids(self.root)
        tick = 0
        while not self._stop.is_set():
            if tick % 10 == 9:
                pids = tree_pids(self.root)
            self.samples.append(rss_kib(self.root, pids))
            tick += 1
            self._stop.wait(self.interval)

    @property
    def peak_kib(self) -> float:
        """Largest sample, NaN when nothing was sampled (no process to watch)."""
        return float(max(self.samples)) if self.samples else math.nan

    def __enter__(self) -> RssSampler:
        if self.root is not None:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.root is not None:
            self._stop.set()
            self._thread.join()
