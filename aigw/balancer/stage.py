"""Chain stage ``balance``: one route, many targets; pick one, fail over to the next.

It replaces ``credentials`` on a route with a balancer, several targets or an
Entra target, and runs just before the relay. The body was read once (it is
``ex.upstream_body``); each attempt:

1. picks a member (``aigw.balancer.pickers``; the hash key is the
   ``hash_on_header`` request header), never one already tried in this request;
2. applies that member's target, credential (each key or token goes only to its
   own target) and, when they differ between targets, its option defaults;
3. tells the relay which upstream statuses to give up unsent
   (``ex.failover_statuses``): the policy's, while another attempt may follow and
   the method may move on; none on the last attempt, whose answer is relayed;
4. records the outcome in the member's state (cooldown, breaker, latency, usage)
   and in ``ex.attempts``.

Attempts are bounded by ``retries + 1`` and by the number of members. Two
retries happen under one attempt, on the same target: the Entra 401 retry here
(a fresh token, once) and the pool's stale-connection retry. A failure after the
first byte went to the client is never retried: the relay has already ended the
stream as an error.

When no member is available at all (every one cooling down after a 429, or
ejected), the answer is immediate, no queueing: 429 with the smallest remaining
cooldown as ``retry-after`` / ``retry-after-ms`` when any is cooling, else 503
with the soonest end of an ejection, so the SDK's own retry waits the right time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from aigw.balancer.criteria import FailoverPolicy, Failure, retry_after_s
from aigw.balancer.members import Member
from aigw.balancer.metrics import BALANCER_METRICS
from aigw.balancer.pickers import Picker
from aigw.chain.body_ops import MODEL_IN_BODY
from aigw.chain.exchange import Attempt, Exchange, Handler
from aigw.errors import (
    GatewayError,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from aigw.identity import TokenUnavailable
from aigw.upstream.relay import CONNECT_PHASE_OUTCOMES, RetryableAnswer

__all__ = ["Pool", "balance", "nothing_available"]

_NONE: frozenset[int] = frozenset()
_TOKEN_UNAVAILABLE = "token_unavailable"
"""The outcome of an attempt on an Entra target whose token endpoint is down: nothing
was sent, so it moves on like a refused connection."""
_ONLY_401 = frozenset({401})

# ex.outcome of an answer that started and then failed upstream (the breaker counts it).
_BROKEN_ANSWERS = frozenset(
    {
        "upstream_idle_timeout",
        "upstream_reset",
        "upstream_truncated",
        "upstream_timeout",
        "upstream_error",
        "upstream_event_too_large",
    }
)


@dataclass(frozen=True, slots=True, eq=False)
class Pool:
    """A route's balancer, compiled once per load.

    Attributes:
        route: The route's name (for logs).
        members: The targets, in config order.
        picker: Chooses among them.
        policy: When a failed attempt moves on.
        max_attempts: ``retries + 1``, at most the number of members.
        max_fails: Breaker: failures within ``fail_timeout_s`` that eject (0: off).
        fail_timeout_s: Breaker window and ejection length, seconds.
        hash_header: The request header ``consistent-hashing`` hashes; None otherwise.
        tokens_field: The usage field ``lowest-usage`` counts (``total_tokens``, ...).
    """

    route: str
    members: tuple[Member, ...]
    picker: Picker
    policy: FailoverPolicy
    max_attempts: int
    max_fails: int
    fail_timeout_s: float
    hash_header: str | None
    tokens_field: str


def nothing_available(members: tuple[Member, ...], now: float) -> GatewayError:
    """The answer when no member can take an attempt: 429 while any is cooling down
    (its smallest remaining cooldown as retry-after), else 503 (the soonest end of an
    ejection)."""
    cooling = [until for m in members if (until := m.state.cooling_until()) > now]
    if cooling:
        wait = min(cooling) - now
        seconds = max(1, math.ceil(wait))
        return TooManyRequests(
            "all_targets_rate_limited",
            f"every target of this route is rate limited; retry after {seconds} s",
            headers={"retry-after": str(seconds), "retry-after-ms": str(_whole_ms(wait))},
        )
    opened = [until for m in members if (until := m.state.open_until()) > now]
    seconds = max(1, math.ceil(min(opened) - now)) if opened else 1
    return ServiceUnavailable(
        "no_healthy_target",
        f"every target of this route is failing; retry after {seconds} s",
        headers={"retry-after": str(seconds)},
    )


def balance(pool: Pool, next_: Handler, *, clock: Callable[[], float] = time.monotonic) -> Handler:
    """Builds the ``balance`` stage for one route (*clock*: monotonic seconds, for tests)."""
    return _Balancer(pool, next_, clock).stage


class _Balancer:
    """The ``balance`` stage of one route: ``stage`` is the chain handler."""

    __slots__ = (
        "_by_method",
        "_clock",
        "_fail_timeout_s",
        "_hash_header",
        "_max_attempts",
        "_max_fails",
        "_members",
        "_metrics",
        "_next",
        "_pick",
        "_policy",
        "_tokens_field",
    )

    def __init__(self, pool: Pool, next_: Handler, clock: Callable[[], float]) -> None:
        self._members = pool.members
        self._pick = pool.picker.pick
        self._policy = pool.policy
        self._max_attempts = pool.max_attempts
        self._max_fails = pool.max_fails
        self._fail_timeout_s = pool.fail_timeout_s
        self._hash_header = pool.hash_header
        self._tokens_field = pool.tokens_field
        self._next = next_
        self._clock = clock
        self._metrics = BALANCER_METRICS.for_route(pool.route)
        self._by_method: dict[str, frozenset[int]] = {}

    async def stage(self, ex: Exchange) -> web.StreamResponse:
        """Tries the pool's targets in the picker's order until one answers."""
        request = ex.request
        hash_header = self._hash_header
        hash_key = request.headers.get(hash_header) if hash_header is not None else None
        moving = self._by_method.get(request.method)
        if moving is None:
            moving = self._moving_statuses(request.method)
        payload, sent_body = ex.payload, ex.upstream_body
        # A model-in-body request names each attempt's own deployment in its body.
        renamed = ex.api_style in MODEL_IN_BODY
        members, pick, clock = self._members, self._pick, self._clock
        # One member (an Entra target alone): the relay's own target is the same,
        # and on a templated route only the relay knows the resolved one.
        pooled = len(members) > 1
        attempts: list[Attempt] = []
        ex.attempts = attempts
        tried: list[int] = []
        last_error: GatewayError | None = None
        last_detail: tuple[str, str | None] = ("ok", None)  # its outcome and log detail
        max_attempts = self._max_attempts
        # Counted here, not by the picker's exclusions: a bound whatever it picks.
        for number in range(1, max_attempts + 1):
            now = clock()
            index = pick(hash_key, tried, now)
            if index is None:
                break  # everything that could be was tried, or nothing is available at all
            tried.append(index)
            member = members[index]
            if pooled:
                ex.target = member.target
            if member.own_body or renamed:
                ex.upstream_body = member.body(payload, sent_body, ex)
            final = number == max_attempts
            # Statuses are given up only when another attempt may follow; the last
            # attempt's answer is relayed as it is (a 429 with Azure's retry-after).
            statuses = moving
            if moving and (final or not self._others_available(tried, now)):
                statuses = _NONE
            try:
                # PERF: a key target's attempt is one coroutine (_once), not two:
                # every suspension of the request passes through each frame.
                if member.tokens is None:
                    return await self._once(ex, attempts, member, statuses, now)
                return await self._attempt_entra(ex, attempts, member, statuses, now)
            except RetryableAnswer as answer:
                self._refused(member, answer)
                # Nothing to relay now: if no target is left after all, the answer is
                # "nothing available", with the cooldown just learnt.
                last_error = None
            except (UpstreamUnavailable, UpstreamTimeout) as error:
                self._failed(member)
                failure = _failure(ex.outcome, error)
                if final or not self._policy.moves_on(request.method, failure):
                    raise
                last_error = error
            last_detail = (ex.outcome, ex.error)
            ex.upstream_body = sent_body
            _reset(ex)
        if last_error is not None:
            # The access log says what went wrong with it, as without a failover.
            ex.outcome, ex.error = last_detail
            raise last_error
        raise nothing_available(members, clock())

    async def _attempt_entra(
        self,
        ex: Exchange,
        attempts: list[Attempt],
        member: Member,
        statuses: frozenset[int],
        now: float,
    ) -> web.StreamResponse:
        """An attempt on an Entra target: a 401 invalidates the token (in ``_once``) and
        is tried once more with a fresh one. A token endpoint that is down is this
        target's failure before anything was sent (the stage decides what follows)."""
        try:
            try:
                return await self._once(ex, attempts, member, statuses | _ONLY_401, now)
            except RetryableAnswer as answer:
                if answer.status != 401:
                    raise
            _reset(ex)
            return await self._once(ex, attempts, member, statuses, now)
        except TokenUnavailable as exc:
            raise UpstreamUnavailable(
                _TOKEN_UNAVAILABLE,
                f"no Microsoft Entra ID token for this route's target {member.name}: the "
                f"token endpoint {exc.endpoint} is unavailable; quote request id "
                f"{ex.request_id}",
            ) from None

    async def _once(
        self,
        ex: Exchange,
        attempts: list[Attempt],
        member: Member,
        statuses: frozenset[int],
        now: float,
    ) -> web.StreamResponse:
        """One request to *member*, recorded in *attempts* and in its in-flight count."""
        state = member.state
        state.begin(now)
        started = time.perf_counter_ns()
        token = ""
        try:
            key = member.key
            if key is not None:
                key.apply(ex)
            else:
                assert member.tokens is not None  # a member has a key or a token source
                token = await member.tokens.token()
                ex.extra_headers = (("Authorization", "Bearer " + token),)
                ex.extra_query = ()
            ex.failover_statuses = statuses
            response = await self._next(ex)
        except RetryableAnswer as answer:
            attempts.append(Attempt(member.name, answer.status, None, _ms(started)))
            if answer.status == 401 and member.tokens is not None:
                member.tokens.invalidate(token)
            raise
        except TokenUnavailable as exc:
            ex.outcome = _TOKEN_UNAVAILABLE
            ex.error = f"target {member.name}: {exc}"
            attempts.append(Attempt(member.name, None, ex.outcome, _ms(started)))
            raise
        except BaseException:
            # An upstream failure (the relay set the outcome), the client gone, or
            # a request aigw refuses (a bad api-version).
            outcome = ex.outcome if ex.outcome != "ok" else "aborted"
            attempts.append(Attempt(member.name, ex.upstream_status, outcome, _ms(started)))
            raise
        finally:
            state.end()
        end_ns = time.perf_counter_ns()
        status = response.status
        ex.target_name = name = member.name
        if status < 300 and ex.outcome == "ok":
            # PERF: the usual answer; one clock read serves the log and the samples.
            attempts.append(Attempt(name, status, None, (end_ns - started) // 1000 / 1000))
            e2e_s, tpot_s, tokens = _samples(ex, end_ns, self._tokens_field)
            state.succeeded(self._clock(), e2e_s=e2e_s, tpot_s=tpot_s, tokens=tokens)
        else:
            error = None if ex.outcome == "ok" else ex.outcome
            attempts.append(Attempt(name, status, error, (end_ns - started) // 1000 / 1000))
            self._answered_otherwise(member, ex, response)
        return response

    def _moving_statuses(self, method: str) -> frozenset[int]:
        """The policy's statuses that move a *method* request on (POST needs non_idempotent)."""
        found = self._by_method.get(method)
        if found is None:
            policy = self._policy
            found = frozenset(
                status
                for status in policy.statuses
                if policy.moves_on(method, Failure("status", sent=True, status=status))
            )
            if len(self._by_method) < 16:  # methods are few; odd ones never grow it
                self._by_method[method] = found
        return found

    def _others_available(self, tried: list[int], now: float) -> bool:
        """Whether a member not tried yet could take an attempt now."""
        for index, member in enumerate(self._members):
            if index not in tried and member.state.available(now):
                return True
        return False

    def _failed(self, member: Member) -> None:
        if member.state.failed(
            self._clock(), max_fails=self._max_fails, fail_timeout_s=self._fail_timeout_s
        ):
            self._metrics.ejected(member.name)

    def _answered_otherwise(
        self, member: Member, ex: Exchange, response: web.StreamResponse
    ) -> None:
        """Records in the member's state what a relayed answer other than a success says."""
        status = response.status
        if status == 429:
            wait = retry_after_s(response.headers.items())
            if wait is not None:
                member.state.cool_down(self._clock() + wait)
            else:
                self._failed(member)
        elif status >= 500 or ex.outcome in _BROKEN_ANSWERS:
            self._failed(member)

    def _refused(self, member: Member, answer: RetryableAnswer) -> None:
        """Records a status the relay gave up so that another target could answer."""
        status = answer.status
        if status == 429 and answer.retry_after_s is not None:
            member.state.cool_down(self._clock() + answer.retry_after_s)
        elif status == 429 or status >= 500:
            self._failed(member)
        # 401 (a stale Entra token), 403 and 404 say nothing of the target's health
        # (nginx never counts http_403/404 as failures either).


def _whole_ms(seconds: float) -> int:
    # Rounded first: 1002.5 - 1000.3 is 2.2000000000000455 s, not 2201 ms.
    return math.ceil(round(seconds * 1000, 3))


def _ms(started_ns: int) -> float:
    # Whole microseconds, in ms: cheaper than round(), as precise as a log needs.
    return (time.perf_counter_ns() - started_ns) // 1000 / 1000


def _reset(ex: Exchange) -> None:
    """Clears what a failed attempt left, so the next one (and the log) starts clean."""
    ex.outcome = "ok"
    ex.error = None
    ex.upstream_status = None
    ex.upstream_headers_ns = None
    ex.upstream_request_id = None


def _failure(outcome: str, error: GatewayError) -> Failure:
    """The criteria's view of a relay error, from the outcome the relay recorded."""
    if outcome == "upstream_connect_timeout":
        return Failure("connect_timeout", sent=False)
    if outcome in CONNECT_PHASE_OUTCOMES or outcome == _TOKEN_UNAVAILABLE:
        return Failure("connect_error", sent=False)
    return Failure("timeout" if isinstance(error, UpstreamTimeout) else "error", sent=True)


def _samples(ex: Exchange, end: int, tokens_field: str) -> tuple[float, float | None, int | None]:
    """Latency and tokens of a successful answer that ended at *end* (perf_counter_ns),
    for ``TargetState.succeeded``."""
    sent = ex.upstream_sent_ns or end
    e2e_s = (end - sent) / 1e9
    usage = ex.usage
    tpot_s: float | None = None
    tokens: int | None = None
    if usage:
        completion = usage.get("completion_tokens")
        if isinstance(completion, int) and completion > 0:
            # Streams: from the first token; a whole body: from the request.
            first = ex.first_token_ns or sent
            tpot_s = (end - first) / 1e9 / completion
        counted = usage.get(tokens_field)
        tokens = counted if isinstance(counted, int) else None
    return e2e_s, tpot_s, tokens
