"""Per-target balancer state: circuit breaker, 429 cooldown, in-flight count, latency and usage.

State belongs to the target, not to the route table: ``TargetStates`` hands out
one ``TargetState`` per ``TargetKey`` (origin, path prefix with the deployment,
credential fingerprint) for as long as any compiled route holds it, so a reload
of any file in which a target is unchanged keeps its breaker, cooldown, EWMA and
usage (Kong rebuilds all of it on every config change).

Everything here is pure and synchronous: callers pass monotonic seconds
(``now``), nothing reads a clock, nothing awaits. A pick reads the state of every
member, so availability is one float comparison (``available_from``).

Circuit breaker (nginx ``max_fails`` / ``fail_timeout``, as Kong 3.13 uses it):
``max_fails`` failures within ``fail_timeout`` (a sliding window) open the
circuit for ``fail_timeout``; then it is half-open: the first attempt that
``begin``s takes the single probe and every other pick sees the target
unavailable; the probe's success closes the circuit, its failure reopens it for
another ``fail_timeout``. A probe that ends with neither (client gone) frees the
probe when the target has nothing left in flight, or at the latest after
``fail_timeout``.

Latency (``lowest-latency``): a peak EWMA, Kong's and Finagle's choice. A sample
above the average replaces it at once, so a region that turns slow loses its
traffic on its first slow answer; a lower sample pulls the average down with
weight ``1 - exp(-dt / 10 s)``, so recovery needs several fast answers. When read
for a pick the average also decays toward zero with the same 10 s time constant
since its last sample (ingress-nginx's and Kong's ``decay_ewma`` reading): a
target that stopped getting traffic because it looked slow is tried again after
``10 s * ln(its latency / the best)``, one request that refreshes its sample.
Without this a target that was slow once would never be measured again.

Usage (``lowest-usage``): a sum of tokens that decays with a 60 s time constant,
the scale of Azure's tokens-per-minute quota, so old usage fades.
"""

from __future__ import annotations

import math
import weakref
from typing import Literal

__all__ = [
    "LATENCY_DECAY_S",
    "USAGE_DECAY_S",
    "TargetKey",
    "TargetState",
    "TargetStates",
    "TargetStatus",
]

TargetKey = tuple[str, str, str]
"""(origin ``https://host:443``, path prefix incl. deployment, credential fingerprint)."""

TargetStatus = Literal["closed", "open", "half-open", "cooling"]

LATENCY_DECAY_S = 10.0
"""Time constant of the latency EWMA (Kong's and ingress-nginx's ``DECAY_TIME``)."""

USAGE_DECAY_S = 60.0
"""Time constant of the decaying token sum: Azure quotas are tokens per minute."""


def _peak_ewma(average: float | None, last: float, sample: float, now: float) -> float:
    if average is None or sample >= average:
        return sample
    weight = math.exp(-max(now - last, 0.0) / LATENCY_DECAY_S)
    return average * weight + sample * (1.0 - weight)


class TargetState:
    """The mutable balancer state of one target, shared by every route that uses it.

    Attributes:
        key: The target's identity (also what ``consistent-hashing`` places on its ring).
        in_flight: Attempts begun and not yet ended (``least-connections``).
        ewma_e2e_s: Peak EWMA of end-to-end seconds at ``latency_at``; None before a sample.
        ewma_tpot_s: Peak EWMA of seconds per output token; None before a sample.
        latency_at: Monotonic time of the last latency sample.
        tokens: Decayed token sum at ``tokens_at`` (read it with ``usage``).
        tokens_at: Monotonic time ``tokens`` was last brought up to date.
        available_from: Monotonic time from which ``available`` holds (the latest of the
            ejection's end, the cooldown's end and the half-open probe's lease). Read-only
            outside this class; pickers compare it directly, a method call per member
            being half a pick's cost.
    """

    __slots__ = (
        "__weakref__",
        "_cooling_until",
        "_fail_times",
        "_half_open",
        "_open_until",
        "_probe_lease_s",
        "_probe_until",
        "available_from",
        "ewma_e2e_s",
        "ewma_tpot_s",
        "in_flight",
        "key",
        "latency_at",
        "tokens",
        "tokens_at",
    )

    def __init__(self, key: TargetKey) -> None:
        self.key = key
        self.in_flight = 0
        self.ewma_e2e_s: float | None = None
        self.ewma_tpot_s: float | None = None
        self.latency_at = 0.0
        self.tokens = 0.0
        self.tokens_at = 0.0
        # Failure times inside the current window, oldest first; at most max_fails.
        self._fail_times: list[float] = []
        self._open_until = 0.0
        self._cooling_until = 0.0
        # Set when the circuit opens; cleared by the success that closes it.
        self._half_open = False
        self._probe_lease_s = 0.0
        # While the half-open probe is out: when it is given up on.
        self._probe_until = 0.0
        self.available_from = 0.0

    def __repr__(self) -> str:
        return f"TargetState({self.key!r}, in_flight={self.in_flight})"

    # -- reading ---------------------------------------------------------------

    def status(self, now: float) -> TargetStatus:
        """``open`` (ejected), ``cooling`` (a 429's retry-after), ``half-open`` or ``closed``."""
        if now < self._open_until:
            return "open"
        if now < self._cooling_until:
            return "cooling"
        if self._half_open:
            return "half-open"
        return "closed"

    def available(self, now: float) -> bool:
        """Whether a new attempt may go here: not open, not cooling, no half-open probe out."""
        return now >= self.available_from

    def available_at(self) -> float:
        """Monotonic time from which ``available`` holds again (a past time when it holds now)."""
        return self.available_from

    def cooling_until(self) -> float:
        """Monotonic end of the latest cooldown; 0 when never cooled (a past time once over)."""
        return self._cooling_until

    def open_until(self) -> float:
        """Monotonic end of the current ejection; 0 when never opened (a past time once over)."""
        return self._open_until

    def latency(self, now: float, *, tpot: bool) -> float | None:
        """The EWMA (tpot or e2e) decayed toward zero since its last sample; None before any."""
        average = self.ewma_tpot_s if tpot else self.ewma_e2e_s
        if average is None:
            return None
        return average * math.exp(-max(now - self.latency_at, 0.0) / LATENCY_DECAY_S)

    def usage(self, now: float) -> float:
        """Tokens used, each decayed by ``exp(-age / USAGE_DECAY_S)``."""
        if self.tokens == 0.0:
            return 0.0
        return self.tokens * math.exp(-max(now - self.tokens_at, 0.0) / USAGE_DECAY_S)

    # -- an attempt's life -----------------------------------------------------

    def begin(self, now: float) -> None:
        """An attempt starts: count it in flight; when half-open, it takes the one probe."""
        self.in_flight += 1
        if self._half_open and now >= self._open_until and now >= self._probe_until:
            self._probe_until = now + self._probe_lease_s
            self._update_blocked()

    def end(self) -> None:
        """The attempt ended (after ``succeeded``/``failed``, or without an outcome)."""
        if self.in_flight > 0:
            self.in_flight -= 1
        # Nothing in flight: no probe can be out. Frees a probe whose request left
        # without an outcome (client gone) instead of waiting for its lease.
        if self.in_flight == 0 and self._probe_until:
            self._probe_until = 0.0
            self._update_blocked()

    def succeeded(
        self, now: float, *, e2e_s: float, tpot_s: float | None, tokens: int | None
    ) -> None:
        """The target answered, with anything but a failure: sample; close a half-open circuit."""
        if self._half_open and now >= self._open_until:
            self._half_open = False
            self._probe_until = 0.0
            self._fail_times.clear()
            self._update_blocked()
        self.ewma_e2e_s = _peak_ewma(self.ewma_e2e_s, self.latency_at, e2e_s, now)
        if tpot_s is not None:
            self.ewma_tpot_s = _peak_ewma(self.ewma_tpot_s, self.latency_at, tpot_s, now)
        self.latency_at = now
        if tokens:
            self.tokens = self.usage(now) + tokens
            self.tokens_at = now

    def failed(self, now: float, *, max_fails: int, fail_timeout_s: float) -> bool:
        """An attempt failed; True when this failure ejected the target (or re-ejected a probe).

        ``max_fails`` or ``fail_timeout_s`` of 0 turn the breaker off (Kong's default).
        Failures of attempts begun before an ejection, ending while it lasts, neither
        count nor extend it.
        """
        if max_fails <= 0 or fail_timeout_s <= 0.0 or now < self._open_until:
            return False
        if self._half_open:
            self._eject(now, fail_timeout_s)
            return True
        times = self._fail_times
        horizon = now - fail_timeout_s
        while times and times[0] <= horizon:
            del times[0]
        times.append(now)
        if len(times) > max_fails:
            del times[0]
        if len(times) < max_fails:
            return False
        self._eject(now, fail_timeout_s)
        return True

    def cool_down(self, until: float) -> None:
        """Send nothing here before monotonic ``until`` (a 429's retry-after); never shortened."""
        if until > self._cooling_until:
            self._cooling_until = until
            self._update_blocked()

    # -- internals -------------------------------------------------------------

    def _eject(self, now: float, fail_timeout_s: float) -> None:
        self._fail_times.clear()
        self._half_open = True
        self._open_until = now + fail_timeout_s
        self._probe_lease_s = fail_timeout_s
        self._probe_until = 0.0
        self._update_blocked()

    def _update_blocked(self) -> None:
        self.available_from = max(self._open_until, self._cooling_until, self._probe_until)


class TargetStates:
    """The process's target states; app-owned (``aigw.server``), kept across reloads.

    Values are weak: a state lives while a compiled route holds it, so a target
    removed from every file leaves no state behind, and one unchanged across a
    reload (held by the old table until the new one is built) keeps its state.
    """

    def __init__(self) -> None:
        self._states: weakref.WeakValueDictionary[TargetKey, TargetState] = (
            weakref.WeakValueDictionary()
        )

    def state(self, key: TargetKey) -> TargetState:
        """The one state of ``key``; the same object for as long as anyone holds it."""
        found = self._states.get(key)
        if found is None:
            found = TargetState(key)
            self._states[key] = found
        return found

    def __len__(self) -> int:
        return len(self._states)
