"""One attempt at building a table from conf.d's files, incumbents first, kind by kind.

The reloader calls `offer_files` until an attempt needs no retry; the rules
(who keeps a path, a username, a key or a global plugin; when a file falls
back to its last known good version) live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aigw.config.errors import ConfigError
from aigw.config.model import AccessPlugins, ConfFile, RouteFile
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.reload_report import FileKind, file_kind
from aigw.route import CompiledRoute
from aigw.table import TableBuilder

__all__ = ["KINDS", "Attempt", "Serving", "offer_files"]

KINDS: tuple[FileKind, ...] = ("plugins", "consumer", "route")
"""The order in which a build takes each kind: routes compile with the final global plugins."""


@dataclass(slots=True)
class Serving:
    """The version of a file that serves, with its raw bytes (for the last-known-good store)."""

    file: ConfFile
    raw: bytes
    accepted_at: float


@dataclass(slots=True)
class Attempt:
    """One candidate table and the file states it implies."""

    builder: TableBuilder
    serving: dict[str, Serving]
    refused: dict[str, ConfigError]
    accepted: list[str] = field(default_factory=list)
    blocked: dict[str, tuple[ConfFile, bytes]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    # Refused new versions whose last known good is of a kind taken earlier in
    # the build: only another attempt, with that version as an incumbent, can
    # keep it serving.
    revert: list[str] = field(default_factory=list)


def offer_files(
    compile_route: Callable[[RouteFile, AccessPlugins], CompiledRoute],
    candidates: dict[str, tuple[ConfFile, bytes]],
    serving_before: dict[str, Serving],
    refused_before: dict[str, ConfigError],
    first: list[str],
    kept: dict[str, ConfigError],
    now: float,
    limits: Limits = DEFAULT_LIMITS,
) -> Attempt:
    """Builds one candidate table; the previous state is not modified.

    Args:
        compile_route: The reloader's cached compiler.
        candidates: New versions, by file name, with their raw bytes.
        serving_before: The versions serving now (incumbents and fallbacks).
        refused_before: Why files are refused now.
        first: Files in service whose new version goes first in its kind (they
            lost both versions in an earlier attempt).
        kept: Candidates left out of this attempt, refused with the given
            error; their serving version, if any, is an incumbent.
        now: The time recorded as accepted_at of what this attempt accepts.
        limits: The process's body deadlines (the model dispatchers read bodies).
    """
    builder = TableBuilder(compile_route, limits)
    serving, refused = dict(serving_before), dict(refused_before)
    attempt = Attempt(builder, serving, refused)
    offered = {name: version for name, version in candidates.items() if name not in kept}
    for name, refusal in kept.items():
        refused[name] = refusal
        attempt.blocked[name] = candidates[name]
    # Refused new versions whose last known good is of a kind taken later.
    deferred: list[str] = []
    for kind in KINDS:
        # 1. Incumbents: files whose serving version stays keep what they claim.
        incumbents = serving.keys() - offered.keys()
        for name in sorted(n for n in incumbents if file_kind(serving[n].file) == kind):
            error = builder.offer(serving[name].file)
            if error is not None:  # cannot happen for a consistent previous table
                refused[name] = error
                del serving[name]
        # 2. Last known good versions of files refused at an earlier kind.
        for name in [n for n in deferred if file_kind(serving[n].file) == kind]:
            if builder.offer(serving[name].file) is not None:
                del serving[name]
                attempt.dropped.append(name)
        # 3. Files that serve now and have a new version: the new version if
        #    it fits, else their last known good one; before any newcomer,
        #    so an active file keeps its claims even when it changes in the
        #    same batch.
        # 4. Newcomers, in lexical order (at start-up the first file wins).
        ours = {n for n, (file, _) in offered.items() if file_kind(file) == kind}
        in_service = [n for n in first if n in ours] + sorted(
            n for n in ours if n in serving and n not in first
        )
        newcomers = sorted(n for n in ours if n not in serving)
        for name in in_service + newcomers:
            file, raw = offered[name]
            error = builder.offer(file)
            if error is None:
                serving[name] = Serving(file, raw, now)
                refused.pop(name, None)
                attempt.accepted.append(name)
                continue
            refused[name] = error
            attempt.blocked[name] = (file, raw)
            fallback = serving.get(name)
            if fallback is None:
                continue
            fallback_kind = file_kind(fallback.file)
            if fallback_kind == kind:
                if builder.offer(fallback.file) is not None:
                    del serving[name]
                    attempt.dropped.append(name)
            elif KINDS.index(fallback_kind) > KINDS.index(kind):
                deferred.append(name)
            else:
                attempt.revert.append(name)
    return attempt
