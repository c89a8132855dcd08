"""Run-wide settings shared by the scenario modules, and progress output on stderr.

stdout carries only the markdown report, so progress and warnings go to stderr.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from targets import Processes

__all__ = ["Context", "say"]

_START = time.monotonic()


def say(message: str) -> None:
    """One progress line on stderr, stamped with the time since the suite started."""
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class Context:
    """What every scenario needs to know about this run.

    Attributes:
        quick: Smoke-run mode (``--quick``).
        rounds: Alternating rounds per measurement (medians are over these).
        duration: Seconds per wrk run.
        warmup: Seconds of warm-up load per target before its first measured run.
        streams: Concurrent SSE streams in the streaming scenario.
        stream_duration: Seconds each SSE run keeps opening streams.
        route_sizes: Route-table sizes of the scale scenario.
        workdir: Scratch directory (config files, logs); removed at exit.
        procs: Every child process, for cleanup.
        uvloop: uvloop is importable (the bare-aiohttp uvloop variant runs).
        sse_upstream: ``nginx`` (echo module, paced in C) or ``mock`` (the Azure mock).
        notes: Observations collected along the way, printed in the report.
    """

    quick: bool
    rounds: int
    duration: int
    warmup: int
    streams: int
    stream_duration: float
    route_sizes: tuple[int, ...]
    workdir: Path
    procs: Processes
    uvloop: bool
    sse_upstream: str
    notes: list[str] = field(default_factory=list)

    def order(self, items: list[str], round_index: int) -> list[str]:
        """ABAB... with the direction flipped every other round (ABC CBA ABC).

        Flipping cancels a linear drift (the machine warming up, a neighbour's job
        starting) that a fixed order would charge to the targets measured last.
        """
        return list(items) if round_index % 2 == 0 else list(reversed(items))
