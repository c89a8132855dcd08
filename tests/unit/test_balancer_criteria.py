"""FailoverPolicy: nginx's proxy_next_upstream truth table; retry_after_s parsing and bounds."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from aigw.balancer.criteria import FailoverPolicy, Failure, retry_after_s
from aigw.config.model import BalancerConfig, FailoverCriterion

ISSUE_CRITERIA: tuple[FailoverCriterion, ...] = (
    "error",
    "timeout",
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "non_idempotent",
)
NOT_SENT = [Failure("connect_error", sent=False), Failure("connect_timeout", sent=False)]
SENT = [
    Failure("error", sent=True),
    Failure("timeout", sent=True),
    Failure("invalid_header", sent=True),
    Failure("status", sent=True, status=429),
    Failure("status", sent=True, status=503),
]


def test_compiles_kongs_criteria() -> None:
    policy = FailoverPolicy.from_criteria(ISSUE_CRITERIA)
    assert policy.statuses == frozenset({429, 500, 502, 503, 504})
    assert policy.on_error and policy.on_timeout and policy.non_idempotent
    assert not policy.on_invalid_header
    default = FailoverPolicy.from_criteria(BalancerConfig().failover_criteria)
    assert default == FailoverPolicy(
        frozenset(), on_error=True, on_timeout=True, non_idempotent=False
    )


# (criteria, method, failure, moves on)
TABLE: list[tuple[tuple[FailoverCriterion, ...], str, Failure, bool]] = [
    # The issue's list: everything moves a POST on.
    *((ISSUE_CRITERIA, "POST", f, f.kind != "invalid_header") for f in NOT_SENT + SENT),
    # Kong's default (error, timeout): a POST moves on only when never sent.
    (("error", "timeout"), "POST", NOT_SENT[0], True),
    (("error", "timeout"), "POST", NOT_SENT[1], True),
    (("error", "timeout"), "POST", Failure("error", sent=True), False),
    (("error", "timeout"), "POST", Failure("timeout", sent=True), False),
    # A failure before any byte on a reused connection counts as not sent.
    (("error", "timeout"), "POST", Failure("error", sent=False), True),
    # ... and the same sent failures move a GET on (idempotent).
    (("error", "timeout"), "GET", Failure("error", sent=True), True),
    (("error", "timeout"), "GET", Failure("timeout", sent=True), True),
    # Statuses: only those listed; without non_idempotent never for a POST.
    (("http_429",), "POST", Failure("status", sent=True, status=429), False),
    (("http_429", "non_idempotent"), "POST", Failure("status", sent=True, status=429), True),
    (("http_429", "non_idempotent"), "PATCH", Failure("status", sent=True, status=429), True),
    (("http_429",), "PATCH", Failure("status", sent=True, status=429), False),
    (("http_429",), "GET", Failure("status", sent=True, status=429), True),
    (("http_429",), "DELETE", Failure("status", sent=True, status=429), True),
    (("http_429", "non_idempotent"), "POST", Failure("status", sent=True, status=500), False),
    (("http_404", "non_idempotent"), "POST", Failure("status", sent=True, status=404), True),
    (ISSUE_CRITERIA, "POST", Failure("status", sent=True, status=400), False),
    (ISSUE_CRITERIA, "POST", Failure("status", sent=True, status=401), False),
    (ISSUE_CRITERIA, "POST", Failure("status", sent=True, status=413), False),
    # Each kind needs its own criterion, even before anything was sent.
    (("timeout",), "POST", NOT_SENT[0], False),
    (("error",), "POST", NOT_SENT[1], False),
    (("http_503", "non_idempotent"), "POST", NOT_SENT[0], False),
    (("invalid_header",), "GET", Failure("invalid_header", sent=True), True),
    (("invalid_header",), "POST", Failure("invalid_header", sent=True), False),
    # A connect-phase failure never sent anything, whatever the caller says.
    (("error",), "POST", Failure("connect_error", sent=True), True),
    # Unknown or lower-case methods are treated as non-idempotent (the safe side).
    (("error",), "LOCK", Failure("error", sent=True), False),
    (("error",), "get", Failure("error", sent=True), False),
]


@pytest.mark.parametrize(("criteria", "method", "failure", "moves_on"), TABLE)
def test_moves_on_follows_proxy_next_upstream(
    criteria: tuple[FailoverCriterion, ...], method: str, failure: Failure, moves_on: bool
) -> None:
    assert FailoverPolicy.from_criteria(criteria).moves_on(method, failure) is moves_on


def test_no_criteria_never_moves_on() -> None:
    policy = FailoverPolicy.from_criteria(())
    assert not any(policy.moves_on("GET", f) for f in NOT_SENT + SENT)


@pytest.mark.parametrize(
    ("criteria", "warns"),
    [
        (ISSUE_CRITERIA, False),
        (("error", "timeout"), True),
        (("http_429", "http_503"), True),
        (("http_429", "non_idempotent"), False),
    ],
)
def test_would_fail_over_post(criteria: tuple[FailoverCriterion, ...], warns: bool) -> None:
    assert FailoverPolicy.from_criteria(criteria).would_fail_over_post() is not warns


# -- retry-after ----------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ([("Retry-After", "7")], 7.0),
        ([("retry-after", " 2.5 ")], 2.5),
        ([("Retry-After-Ms", "1500")], 1.5),
        # retry-after-ms wins, whichever comes first.
        ([("Retry-After", "60"), ("retry-after-ms", "250")], 0.25),
        ([("retry-after-ms", "250"), ("Retry-After", "60")], 0.25),
        # A broken retry-after-ms falls back to retry-after.
        ([("retry-after-ms", "soon"), ("retry-after", "3")], 3.0),
        ([("Retry-After", formatdate(NOW + 30, usegmt=True))], 30.0),
        ([("Retry-After", formatdate(NOW - 30, usegmt=True))], 0.0),
        ([("Retry-After", "0")], 0.0),
        ([("Retry-After", "86400")], 86400.0),
        # Absent, negative, absurd or garbage: None.
        ([], None),
        ([("x-ratelimit-reset-requests", "5")], None),
        ([("Retry-After", "-1")], None),
        ([("Retry-After", "86401")], None),
        ([("Retry-After", formatdate(NOW + 2 * 86400, usegmt=True))], None),
        ([("Retry-After", "inf")], None),
        ([("Retry-After", "nan")], None),
        ([("retry-after-ms", "-5")], None),
        ([("Retry-After", "tomorrow")], None),
    ],
)
def test_retry_after_s(headers: list[tuple[str, str]], seconds: float | None) -> None:
    assert retry_after_s(headers, now=NOW) == (None if seconds is None else pytest.approx(seconds))
