"""The ``balancer`` section of ``ai-proxy-advanced``, and the rules a pool of targets keeps.

Kong's field names, ranges and defaults (`aigw.config.model.BalancerConfig`). Kong settings
aigw does not implement are named as such: the ``semantic`` algorithm, the ``cost`` and
``llm-accuracy`` token strategies, ``slots``, and the balancer-level timeouts, which aigw keeps
on each target.

A pool (more than one target) must also be one kind of traffic spread over distinct,
fixed deployments: every target has the same ``route_type``; no target is templated
(balancer state belongs to a known upstream, deployment and credential); no deployment is
listed twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal, TypeVar, get_args

from aigw.config.checker import Checker, backticked
from aigw.config.keypath import child, is_under, item
from aigw.config.model import (
    BalancerAlgorithm,
    BalancerConfig,
    FailoverCriterion,
    TargetConfig,
)

__all__ = [
    "ALGORITHMS",
    "FAILOVER_CRITERIA",
    "LATENCY_STRATEGIES",
    "MAX_TARGETS",
    "TOKENS_COUNT_STRATEGIES",
    "balancer",
    "check_pool",
]

ALGORITHMS: tuple[BalancerAlgorithm, ...] = get_args(BalancerAlgorithm)
FAILOVER_CRITERIA: tuple[FailoverCriterion, ...] = get_args(FailoverCriterion)
LATENCY_STRATEGIES: tuple[Literal["tpot", "e2e"], ...] = ("tpot", "e2e")
TOKENS_COUNT_STRATEGIES: tuple[
    Literal["total-tokens", "prompt-tokens", "completion-tokens"], ...
] = ("total-tokens", "prompt-tokens", "completion-tokens")
MAX_TARGETS = 64
"""Targets a route may list: far beyond any real pool of regions, small enough that a
per-request scan of them stays cheap."""

_T = TypeVar("_T", bound=str)
_MAX_MS = 2**31 - 1  # Kong's timeout type
_KEYS = (
    "algorithm",
    "retries",
    "failover_criteria",
    "max_fails",
    "fail_timeout",
    "hash_on_header",
    "latency_strategy",
    "tokens_count_strategy",
)
_PER_TARGET = "goes on each target in aigw (timeouts are per target), e.g. `targets[0].{}`"
_KONG = {
    "slots": "is not supported: aigw's consistent-hashing needs no slot table; remove it",
    **{
        key: _PER_TARGET.format(key) for key in ("connect_timeout", "read_timeout", "write_timeout")
    },
}
_NOT_SUPPORTED_ALGORITHMS = {
    "semantic": "needs Kong's embeddings and vector database, which aigw does not have"
}
_NOT_SUPPORTED_TOKEN_STRATEGIES = {
    "cost": "needs per-model prices, which aigw does not have",
    "llm-accuracy": "needs Kong's accuracy scoring, which aigw does not have",
}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token


def balancer(c: Checker, config: Mapping[str, object], config_path: str) -> BalancerConfig | None:
    """Read ``config.balancer``.

    Args:
        c: The file's checker.
        config: The plugin's ``config`` mapping.
        config_path: Its key path.

    Returns:
        The balancer, with Kong's defaults for unset fields; None when the section is absent
        (or not a mapping, which is reported).
    """
    if config.get("balancer") is None:
        return None
    m = c.section(config, config_path, "balancer", _KEYS, _KONG)
    if m is None:
        return None
    path = child(config_path, "balancer")
    defaults = BalancerConfig()
    retries = c.integer(m, path, "retries", low=0, high=32767)
    max_fails = c.integer(m, path, "max_fails", low=0, high=_MAX_MS)
    fail_timeout = c.integer(m, path, "fail_timeout", low=0, high=_MAX_MS)
    criteria = _criteria(c, m, path)
    return BalancerConfig(
        algorithm=_named_choice(
            c, m, path, "algorithm", ALGORITHMS, _NOT_SUPPORTED_ALGORITHMS, defaults.algorithm
        ),
        retries=defaults.retries if retries is None else retries,
        failover_criteria=defaults.failover_criteria if criteria is None else criteria,
        max_fails=defaults.max_fails if max_fails is None else max_fails,
        fail_timeout=defaults.fail_timeout if fail_timeout is None else fail_timeout,
        hash_on_header=c.text(m, path, "hash_on_header", check=_check_header_name)
        or defaults.hash_on_header,
        latency_strategy=c.choice(
            m, path, "latency_strategy", LATENCY_STRATEGIES, default=defaults.latency_strategy
        ),
        tokens_count_strategy=_named_choice(
            c,
            m,
            path,
            "tokens_count_strategy",
            TOKENS_COUNT_STRATEGIES,
            _NOT_SUPPORTED_TOKEN_STRATEGIES,
            defaults.tokens_count_strategy,
        ),
    )


def _named_choice(
    c: Checker,
    m: Mapping[str, object],
    path: str,
    key: str,
    choices: tuple[_T, ...],
    kong_only: Mapping[str, str],
    default: _T,
) -> _T:
    """An enum whose Kong-only values are named as such rather than called unknown."""
    value = m.get(key)
    if isinstance(value, str) and value in kong_only:
        reason = f"`{value}` is a Kong setting that aigw does not support: {kong_only[value]}"
        c.report(child(path, key), f"{reason}; expected one of {backticked(choices)}")
        return default
    return c.choice(m, path, key, choices, default=default)


def _criteria(
    c: Checker, m: Mapping[str, object], path: str
) -> tuple[FailoverCriterion, ...] | None:
    """``failover_criteria``: known names, each once, in the order written."""
    value = m.get("failover_criteria")
    if value is None:
        return None
    criteria: list[FailoverCriterion] = []
    for element_path, name in c.strings(value, child(path, "failover_criteria")):
        if name in FAILOVER_CRITERIA:
            criterion = FAILOVER_CRITERIA[FAILOVER_CRITERIA.index(name)]
            if criterion not in criteria:
                criteria.append(criterion)
        else:
            reason = f"unknown failover criterion; expected one of {backticked(FAILOVER_CRITERIA)}"
            c.report(element_path, reason + c.got(element_path, name))
    return tuple(criteria)


def _check_header_name(value: str) -> str | None:
    if _HEADER_NAME.match(value):
        return None
    return "must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~"


# -- a pool of targets ---------------------------------------------------------------------


def check_pool(
    c: Checker,
    targets_path: str,
    count: int,
    targets: Sequence[tuple[int, TargetConfig]],
    route_types: Mapping[int, str],
) -> None:
    """Report what a pool of targets may not hold.

    Args:
        c: The file's checker (its templates read so far are those of the targets).
        targets_path: The key path of ``config.targets``.
        count: How many entries ``targets`` lists.
        targets: The targets that could be read, with their index.
        route_types: Index -> ``route_type`` as written, for the targets whose value is valid.
    """
    if count > MAX_TARGETS:
        c.report(
            targets_path,
            f"lists {count} targets; at most {MAX_TARGETS} are supported in one route",
        )
    if count < 2:
        return
    _same_route_type(c, targets_path, route_types)
    for path, _ in c.templates:
        if is_under(path, targets_path):
            c.report(
                path,
                "`$(...)` variables are not supported in a pool of several targets: balancing "
                "needs fixed deployments; list each deployment as a target, or give the "
                "templated target a route of its own",
            )
    _distinct(c, targets_path, targets)


def _same_route_type(c: Checker, targets_path: str, route_types: Mapping[int, str]) -> None:
    if not route_types:
        return
    first = min(route_types)
    for index, route_type in sorted(route_types.items()):
        if route_type != route_types[first]:
            c.report(
                child(item(targets_path, index), "route_type"),
                f"is `{route_type}` but `targets[{first}].route_type` is "
                f"`{route_types[first]}`: every target of a pool carries the same route type",
            )


def _distinct(c: Checker, targets_path: str, targets: Sequence[tuple[int, TargetConfig]]) -> None:
    seen: dict[tuple[object, ...], int] = {}
    for index, target in targets:
        key = _identity(target)
        if key in seen:
            c.report(
                item(targets_path, index),
                f"has the same upstream, deployment and credential as `targets[{seen[key]}]`: "
                "the same deployment twice; raise its weight instead",
            )
        else:
            seen[key] = index


def _identity(target: TargetConfig) -> tuple[object, ...]:
    """What makes two targets the same deployment: where requests go and as whom."""
    options = target.model.options
    auth = target.auth
    return (
        options.upstream_url,
        options.azure_instance.lower() if options.azure_instance else None,  # a DNS name
        options.azure_deployment_id,
        options.upstream_path,
        auth.header_name.lower() if auth.header_name else None,
        auth.header_value,
        auth.param_name,
        auth.param_value,
        auth.param_location,
        auth.azure_use_managed_identity,
        auth.azure_client_id.lower() if auth.azure_client_id else None,
        auth.azure_client_secret,
        auth.azure_tenant_id.lower() if auth.azure_tenant_id else None,
    )
