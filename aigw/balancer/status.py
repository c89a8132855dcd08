"""The admin ``/status`` view of balanced routes: every target's state, now.

Read from the serving table's compiled pools (``CompiledRoute.pool``) when
``/status`` is asked, never kept: the ``TargetState`` s are the truth. Monotonic
deadlines (cooldown, ejection) are shown as what an operator can use: seconds
left, and the wall-clock time an ejection ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aigw.balancer.members import Member
from aigw.balancer.metrics import PoolView
from aigw.reload_report import iso
from aigw.route import CompiledRoute

__all__ = ["member_status", "pool_views", "targets_status"]


def pool_views(routes: Iterable[CompiledRoute]) -> Iterator[PoolView]:
    """(route, [(target name, state)]) of every balanced route: the metrics' state gauge."""
    for route in routes:
        pool = route.pool
        if pool is not None:
            yield route.name, [(member.name, member.state) for member in pool.members]


def targets_status(
    routes: Iterable[CompiledRoute],
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> dict[str, list[dict[str, Any]]]:
    """Route name -> its targets, in config order, each as :func:`member_status` shows it."""
    now, wall_now = clock(), wall()
    return {
        route.name: [member_status(member, now, wall_now) for member in pool.members]
        for route in routes
        if (pool := route.pool) is not None
    }


def member_status(member: Member, now: float, wall_now: float) -> dict[str, Any]:
    """One target: ``state`` (closed, open, half-open, cooling), ``cooldown_remaining_s``
    (a 429's retry-after left), ``open_until`` (when an ejection ends; None when
    not ejected), ``in_flight``, the latency EWMAs the pickers see now
    (``ewma_e2e_ms``, ``ewma_tpot_ms``; None before a sample) and ``usage_tokens``
    (tokens of the last minutes, decayed)."""
    state = member.state
    opened = state.open_until() - now
    return {
        "target": member.name,
        "weight": member.weight,
        "state": state.status(now),
        "cooldown_remaining_s": round(max(state.cooling_until() - now, 0.0), 3),
        "open_until": iso(wall_now + opened) if opened > 0 else None,
        "in_flight": state.in_flight,
        "ewma_e2e_ms": _ms(state.latency(now, tpot=False)),
        "ewma_tpot_ms": _ms(state.latency(now, tpot=True)),
        "usage_tokens": round(state.usage(now)),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
