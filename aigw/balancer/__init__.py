"""Balancing one route over a pool of targets: picking, failing over, circuit breaking.

Modules:

* ``state``: ``TargetState``, one per target (origin, deployment, credential) per
  process: circuit breaker, 429 cooldown, in-flight count, latency EWMA, decayed
  token usage. ``TargetStates`` is the app-owned registry (created by
  ``aigw.server``, handed to the reloader and to ``compile_route``) that gives the
  same key the same state, so state outlives reloads of unchanged targets.
* ``pickers``: ``make_picker`` builds a route's picker at compile time for its
  ``balancer.algorithm``; ``pick`` returns the member for the next attempt.
* ``criteria``: ``FailoverPolicy`` (``failover_criteria``, nginx's
  ``proxy_next_upstream`` rules) decides whether a failed attempt moves on;
  ``retry_after_s`` (from ``aigw.upstream.retry_after``, where the relay reads it)
  reads a 429's ``retry-after-ms`` / ``retry-after``.
* ``members`` and ``stage``: a route's targets compiled with their credentials, and
  the ``balance`` chain stage that runs the attempts.

Data flow of one request through ``balance``: ``pick`` a member (``exclude`` holds
the members already tried) -> ``state.begin`` -> the relay sends the same body with
that member's URL and credential -> ``succeeded`` (samples latency and tokens) or
``failed`` (may eject) and, on a 429, ``cool_down`` until ``retry_after_s`` -> ``end``
-> if ``FailoverPolicy.moves_on`` and retries remain, pick again. Everything in
``state``, ``pickers`` and ``criteria`` is pure: no I/O, no clock (callers pass
monotonic ``now``).
"""

from aigw.balancer.criteria import FailoverPolicy, Failure, FailureKind, retry_after_s
from aigw.balancer.pickers import Picker, make_picker
from aigw.balancer.state import TargetKey, TargetState, TargetStates, TargetStatus

__all__ = [
    "FailoverPolicy",
    "Failure",
    "FailureKind",
    "Picker",
    "TargetKey",
    "TargetState",
    "TargetStates",
    "TargetStatus",
    "make_picker",
    "retry_after_s",
]
