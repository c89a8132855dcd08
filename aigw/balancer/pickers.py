"""Pickers: which member of a route's pool the next attempt goes to.

``make_picker`` builds one picker per route at compile time (rings, groups and
scratch lists included), so a pick is one pass, sometimes two, over the members
with no allocation. Every picker only returns a member that is ``available``
(not open, not cooling, half-open probe free) and not in ``exclude`` (the members
this request already tried), or None when there is none.

Ties, warm-up and the fallback of ``consistent-hashing`` without a hash key all
use nginx's smooth weighted round-robin, which spreads a member's turns evenly
(weights 5:1:1 give a a b a c a a, not a a a a a b c) and is deterministic.
Members skipped in a pick neither gain nor lose credit, so the others keep their
shares while one is out.

``consistent-hashing`` uses a ring of virtual nodes (ketama's construction)
rather than rendezvous hashing: a pick is one hash of the key and a bisection,
where weighted rendezvous needs one hash and one logarithm per member. The nodes
are placed by the target's key, not its position in the file, so a target added
or removed by a reload moves only its own share of keys; a member that is
unavailable or excluded passes its keys to the next member on the ring.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Sequence
from typing import Protocol

from aigw.balancer.state import TargetState
from aigw.config.model import BalancerConfig

__all__ = ["RING_POINTS", "Picker", "make_picker"]

RING_POINTS = 256
"""Virtual nodes of the heaviest member; lighter ones get proportionally fewer (at least 1)."""


class Picker(Protocol):
    """Chooses the next member of one route's pool."""

    def pick(self, hash_key: str | None, exclude: Collection[int], now: float) -> int | None:
        """Index into the route's members of the next target to try; None if none.

        The member is available (``TargetState.available``) and not in ``exclude``.
        """
        ...


def make_picker(
    config: BalancerConfig, weights: Sequence[int], states: Sequence[TargetState]
) -> Picker:
    """The picker of ``config.algorithm`` for members with these weights and states."""
    if len(weights) != len(states) or not states:
        raise ValueError("a pool needs as many weights as states, and at least one member")
    if any(weight < 1 for weight in weights):
        raise ValueError("member weights must be at least 1")
    algorithm = config.algorithm
    if algorithm == "round-robin":
        return RoundRobin(weights, states)
    if algorithm == "priority":
        return Priority(weights, states)
    if algorithm == "lowest-latency":
        return LowestLatency(weights, states, tpot=config.latency_strategy == "tpot")
    if algorithm == "lowest-usage":
        return LowestUsage(weights, states)
    if algorithm == "least-connections":
        return LeastConnections(weights, states)
    return ConsistentHashing(weights, states)


class _Smooth:
    """nginx's smooth weighted round-robin over a marked subset of members."""

    __slots__ = ("current", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = tuple(weights)
        self.current = [0] * len(weights)

    def choose(self, marked: list[bool]) -> int | None:
        """The member with the most credit among ``marked``; it pays the round's total."""
        weights = self.weights
        current = self.current
        total = 0
        best = -1
        best_credit = 0
        for i, ok in enumerate(marked):
            if ok:
                weight = weights[i]
                credit = current[i] + weight
                current[i] = credit
                total += weight
                if best < 0 or credit > best_credit:
                    best = i
                    best_credit = credit
        if best < 0:
            return None
        current[best] -= total
        return best


class RoundRobin:
    """Smooth weighted round-robin among the available members."""

    __slots__ = ("_current", "_states", "_weights")

    def __init__(self, weights: Sequence[int], states: Sequence[TargetState]) -> None:
        self._weights = tuple(weights)
        self._states = tuple(states)
        self._current = [0] * len(weights)

    def pick(self, hash_key: str | None, exclude: Collection[int], now: float) -> int | None:
        """The next member in weighted turn (``hash_key`` is ignored)."""
        # _Smooth.choose inlined: the default algorithm's pick is the one benchmarked.
        weights = self._weights
        current = self._current
        total = 0
        best = -1
        best_credit = 0
        for i, state in enumerate(self._states):
            if now >= state.available_from and i not in exclude:
                weight = weights[i]
                credit = current[i] + weight
                current[i] = credit
                total += weight
                if best < 0 or credit > best_credit:
                    best = i
                    best_credit = credit
        if best < 0:
            return None
        current[best] -= total
        return best


class Priority:
    """The highest-weight group first, round-robin inside it.

    A lower group only when every member above is unavailable or excluded.
    """

    __slots__ = ("_groups", "_marked", "_smooth", "_states")

    def __init__(self, weights: Sequence[int], states: Sequence[TargetState]) -> None:
        self._states = tuple(states)
        self._smooth = _Smooth(weights)
        self._marked = [False] * len(weights)
        levels = sorted(set(weights), reverse=True)
        self._groups = tuple(
            tuple(i for i, weight in enumerate(weights) if weight == level) for level in levels
        )

    def pick(self, hash_key: str | None, exclude: Collection[int], now: float) -> int | None:
        """A member of the highest group with one available and not excluded."""
        marked = self._marked
        states = self._states
        for group in self._groups:
            found = False
            for i in group:
                ok = now >= states[i].available_from and i not in exclude
                marked[i] = ok
                found = found or ok
            if found:
                chosen = self._smooth.choose(marked)
                for i in group:
                    marked[i] = False
                return chosen
            for i in group:
                marked[i] = False
        return None


class _LowestScore:
    """Shared pick of the lowest-score pickers: lowest score, ties by smooth round-robin."""

    __slots__ = ("_marked", "_scores", "_smooth", "_states", "_weights")

    # Scores within this relative distance of the best count as a tie.
    _TIE = 1e-9

    def __init__(self, weights: Sequence[int], states: Sequence[TargetState]) -> None:
        self._weights = tuple(weights)
        self._states = tuple(states)
        self._smooth = _Smooth(weights)
        self._marked = [False] * len(weights)
        self._scores = [0.0] * len(weights)

    def _choose_lowest(self, best: float) -> int | None:
        """Mark the members whose score ties ``best`` and take a turn among them."""
        limit = best + abs(best) * self._TIE
        marked = self._marked
        for i, score in enumerate(self._scores):
            marked[i] = score <= limit
        return self._smooth.choose(marked)


_OUT = float("inf")
"""Score of a member that cannot be picked: never <= any finite best."""


class LeastConnections(_LowestScore):
    """The lowest ``in_flight / weight``."""

    __slots__ = ()

    def pick(self, hash_key: str | None, exclude: Collection[int], now: float) -> int | None:
        """The least loaded member for its weight."""
        scores = self._scores
        weights = self._weights
        best = _OUT
        for i, state in enumerate(self._states):
            if now >= state.available_from and i not in exclude:
                score = state.in_flight / weights[i]
                if score < best:
                    best = score
            else:
                score = _OUT
            scores[i] = score
        if best == _OUT:
            return None
        return self._choose_lowest(best)


class LowestUsage(_LowestScore):
    """The lowest decayed token usage divided by weight."""

    __slots__ = ()

    def pick(self, hash_key: str | None, exclude: Collection[int], now: float) -> int | None:
        """The member that has used the fewest recent tokens for its weight."""
        scores = self._scores
        weights = self._weights
        best = _OUT
        for i, state in enumerate(self._states):
            if now >= state.available_from and i not in exclude:
                score = state.usage(now) / weights[i]
                if score < best:
                    best = score
            else:
                score = _OUT
            scores[i] = score
        if best == _OUT:
            return None
        return self._choose_lowest(best)


class LowestLatency(_LowestScore):
    """The lowest latency EWMA (tpot or e2e); members not yet measured first.

    Warm-up: an unmeasured member with nothing in flight beats every measured one,
    so each member gets a first sample; an unmeasured member whose first attempt is
    still running is only picked when no measured member is available, so a burst
    at start-up is not all sent to the one target nobody has measured.
    """

    __slots__ = ("_tpot",)

    # Score bands (lower wins): unmeasured and idle, measured (by latency), unmeasured and busy.
    _BUSY_UNMEASURED = 1e300
    _IDLE_UNMEASURED = -1.0

    def __init__(
        self, weights: Sequence[int], states: Sequence[TargetState], *, tpot: bool
    ) -> None:
        super().__init__(weights, states)
        self._tpot = tpot

    def pick(self, hash_key: str | None, exclude: Collection[int], now: float) -> int | None:
        """The fastest member, or one still to be measured."""
        scores = self._scores
        tpot = self._tpot
        best = _OUT
        for i, state in enumerate(self._states):
            if now >= state.available_from and i not in exclude:
                latency = state.latency(now, tpot=tpot)
                if latency is not None:
                    score = latency
                elif state.in_flight:
                    score = self._BUSY_UNMEASURED
                else:
                    score = self._IDLE_UNMEASURED
                if score < best:
                    best = score
            else:
                score = _OUT
            scores[i] = score
        if best == _OUT:
            return None
        return self._choose_lowest(best)


class ConsistentHashing:
    """A weighted ring over ``hash_key``; without a key, smooth round-robin."""

    __slots__ = ("_available", "_fallback", "_owners", "_points", "_states")

    def __init__(self, weights: Sequence[int], states: Sequence[TargetState]) -> None:
        self._states = tuple(states)
        self._fallback = RoundRobin(weights, states)
        self._available = [False] * len(states)
        heaviest = max(weights)
        ring: list[tuple[int, int]] = []
        seen: dict[tuple[str, str, str], int] = {}
        for member, (weight, state) in enumerate(zip(weights, states, strict=True)):
            # The same target listed twice gets its own points all the same.
            occurrence = seen.get(state.key, 0)
            seen[state.key] = occurrence + 1
            identity = "\x00".join(state.key) + f"\x00{occurrence}"
            nodes = max(1, round(RING_POINTS * weight / heaviest))
            ring.extend((_hash64(f"{identity}#{node}"), member) for node in range(nodes))
        ring.sort()
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]

    def pick(self, hash_key: str | None, exclude: Collection[int], now: float) -> int | None:
        """The member owning ``hash_key``'s place on the ring, or the next usable one after it."""
        if hash_key is None:
            return self._fallback.pick(None, exclude, now)
        available = self._available
        any_available = False
        for i, state in enumerate(self._states):
            ok = now >= state.available_from and i not in exclude
            available[i] = ok
            any_available = any_available or ok
        if not any_available:
            return None
        points = self._points
        owners = self._owners
        size = len(points)
        position = bisect.bisect_left(points, _hash64(hash_key))
        for step in range(size):
            owner = owners[(position + step) % size]
            if available[owner]:
                return owner
        return None  # unreachable: an available member owns at least one point


def _hash64(text: str) -> int:
    # Stable across processes and workers (unlike hash(), salted per process).
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    )
