"""Turning the contents of conf.d into published route tables, safely, again and again.

conf.d holds three kinds of file (route, consumer, global plugins); every kind
follows the same rules. One code path serves the start-up load, every
file-watch event, SIGHUP and ``aigw check``:

1. read every file and hash it; a file whose bytes are unchanged is not
   parsed again (and a reload that changes nothing publishes nothing);
2. parse and validate the changed ones (in a worker thread, off the event loop);
3. build a complete new table, kind by kind (global plugins, consumers, then
   routes, which compile with the final global plugins); within a kind, first
   the files whose serving version did not change (incumbents keep their
   paths, usernames, keys and plugins), then the new versions in lexical
   order; a new version that is invalid or conflicts is refused and the file
   keeps serving its last known good version, if it has one;
4. publish the table with one reference assignment, store the newly accepted
   files as last known good, log one ``config_reload`` event.

Reloads are serialised by a lock, so a burst of triggers never interleaves.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aigw.balancer.state import TargetStates
from aigw.config.errors import ConfigDirectoryError, ConfigError, ConfigIssue
from aigw.config.loader import discover, parse_conf_file
from aigw.config.model import AccessPlugins, ConfFile, ConsumerFile, RouteFile
from aigw.consumers.metrics import retain_consumers
from aigw.identity import IdentityRegistry
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.lkg import LastKnownGood
from aigw.logs import get_logger
from aigw.metrics import METRICS
from aigw.quotas import QuotaRegistry
from aigw.reload_build import Serving, offer_files
from aigw.reload_report import FileKind, FileState, ReloadReport, file_kind, iso, log_report
from aigw.route import CompiledRoute, compile_route
from aigw.table import RouteTable, plugin_names

__all__ = ["FileKind", "FileState", "ReloadReport", "Reloader", "file_kind"]

_log = get_logger("aigw.reload")

Trigger = Literal["startup", "watch", "sighup", "check"]


@dataclass(slots=True)
class _Scan:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    parsed: dict[str, tuple[ConfFile, bytes]] = field(default_factory=dict)
    refused: dict[str, ConfigError] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)


class Reloader:
    """Owns the config state of one gateway and publishes its tables.

    Args:
        conf_dir: The conf.d directory.
        env: Variables for ``${VAR}``.
        publish: Called with each new table (the gateway's ``swap``).
        store: Last-known-good persistence; None disables it.
        azure_base_url: Serve-time override of the Azure origin.
        limits: Time and size bounds bound into every compiled route.
        quotas: The app's token-quota state, bound into every route with a token
            limit; a new one when None (``aigw check``, tests).
        target_states: The app's balancer state per target (kept across reloads);
            a new one when None.
        identities: The app's Microsoft Entra ID token sources; a new one when None.
    """

    def __init__(
        self,
        conf_dir: Path,
        env: Mapping[str, str],
        *,
        publish: Callable[[RouteTable], object] | None = None,
        store: LastKnownGood | None = None,
        azure_base_url: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        quotas: QuotaRegistry | None = None,
        target_states: TargetStates | None = None,
        identities: IdentityRegistry | None = None,
    ) -> None:
        self.conf_dir = conf_dir
        self._env = dict(env)
        self._publish = publish
        self._store = store
        self._azure_base_url = azure_base_url
        self._limits = limits
        self.quotas = quotas if quotas is not None else QuotaRegistry()
        self.target_states = target_states if target_states is not None else TargetStates()
        self.identities = identities if identities is not None else IdentityRegistry()
        self._lock = asyncio.Lock()
        self.generation = 0
        self.table: RouteTable | None = None
        self.last_report: ReloadReport | None = None
        self.last_reload_at: float | None = None
        self._seen: dict[str, str] = {}  # name -> digest of the content last read
        self._serving: dict[str, Serving] = {}  # name -> version that serves
        self._refused: dict[str, ConfigError] = {}  # name -> why its content was refused
        # (source, digest, merged global plugins) -> the route compiled from them
        self._compiled: dict[tuple[str, str, AccessPlugins], CompiledRoute] = {}
        # name -> a valid version refused only because another file holds what it claims
        self._blocked: dict[str, tuple[ConfFile, bytes]] = {}
        self._pending_commit: Callable[[], None] | None = None

    # -- entry points -------------------------------------------------------

    def load_initial(self, trigger: Trigger = "startup") -> ReloadReport:
        """The first load: stored last-known-good versions back the current files.

        Raises:
            ConfigDirectoryError: conf.d cannot be read at all.
        """
        scan = self._scan(force=True)
        if self._store is not None:
            for name, raw in self._store.load().items():
                current = scan.parsed.get(name)
                if current is not None and current[1] == raw:
                    file = current[0]  # PERF: the same bytes are not parsed twice
                else:
                    try:
                        file = parse_conf_file(str(self.conf_dir / name), raw, self._env)
                    except ConfigError:
                        continue  # a stored copy that no longer validates (env changed) is no help
                self._serving[name] = Serving(file, raw, accepted_at=0.0)
            # After a restart the stored versions of deleted files are stale.
            gone = self._serving.keys() - scan.seen.keys() - set(scan.removed)
            scan.removed += sorted(gone)
        return self._apply(scan, trigger, force=True)

    async def reload(self, trigger: Trigger, *, force: bool = False) -> ReloadReport:
        """Re-reads conf.d and publishes a new table if anything changed (or *force*)."""
        async with self._lock:
            try:
                scan = await asyncio.to_thread(self._scan, force)
            except ConfigDirectoryError as exc:
                report = ReloadReport(
                    trigger=trigger,
                    published=False,
                    generation=self.generation,
                    routes=len(self.table.routes) if self.table else 0,
                    consumers=len(self.table.consumers) if self.table else 0,
                    error=exc.issues[0].reason,
                )
                _log.error(
                    "config_reload_failed",
                    conf_dir=str(self.conf_dir),
                    reason=report.error,
                    generation=self.generation,
                )
                self.last_report = report
                METRICS.config_reloads.labels("failed").inc()
                return report
            # Building (compiling routes, fsyncing last-known-good copies) runs in
            # the worker thread too; only the publish, one assignment, runs on
            # the event loop, so a big reload never stalls live requests.
            report = await asyncio.to_thread(self._apply, scan, trigger, force=force, publish=False)
            commit, self._pending_commit = self._pending_commit, None
            if commit is not None:
                commit()
            return report

    def files(self) -> list[FileState]:
        """The state of every file known to the last reload, by name."""
        states: list[FileState] = []
        for name in sorted(self._seen.keys() | self._serving.keys() | self._refused.keys()):
            serving = self._serving.get(name)
            error = self._refused.get(name)
            if serving is None:
                blocked = self._blocked.get(name)
                kind = file_kind(blocked[0]) if blocked is not None else None
                states.append(FileState(name=name, state="rejected", kind=kind, error=error))
                continue
            file = serving.file
            states.append(
                FileState(
                    name=name,
                    state="lkg" if error is not None else "active",
                    kind=file_kind(file),
                    route=file.route.name if isinstance(file, RouteFile) else None,
                    models=file.route.models if isinstance(file, RouteFile) else None,
                    consumers=len(file.consumers) if isinstance(file, ConsumerFile) else None,
                    plugins=None
                    if isinstance(file, RouteFile | ConsumerFile)
                    else tuple(plugin_names(file.plugins)),
                    digest=file.digest,
                    accepted_at=serving.accepted_at or None,
                    error=error,
                )
            )
        return states

    @property
    def degraded(self) -> bool:
        """Some file in conf.d does not serve its current content."""
        return bool(self._refused)

    def status(self) -> dict[str, Any]:
        """The JSON document of the admin status endpoint."""
        report = self.last_report
        return {
            "generation": self.generation,
            "degraded": self.degraded,
            "routes": len(self.table.routes) if self.table else 0,
            "consumers": len(self.table.consumers) if self.table else 0,
            "conf_dir": str(self.conf_dir),
            "last_reload": None
            if report is None
            else {
                "at": iso(self.last_reload_at),
                "trigger": report.trigger,
                "published": report.published,
                "generation": report.generation,
                "build_ms": report.build_ms,
                "error": report.error,
            },
            "files": {state.name: state.as_json() for state in self.files()},
        }

    # -- the pipeline -------------------------------------------------------

    def _scan(self, force: bool) -> _Scan:
        """Reads conf.d; parses only what changed. Runs in a worker thread."""
        scan = _Scan()
        for path in discover(self.conf_dir):
            name = path.name
            try:
                raw = path.read_bytes()
            except OSError as exc:  # replaced or removed since discover()
                reason = f"cannot read file: {exc.strerror or type(exc).__name__}"
                scan.refused[name] = ConfigError((ConfigIssue(str(path), "", reason),))
                scan.seen[name] = ""
                continue
            digest = hashlib.sha256(raw).hexdigest()
            scan.seen[name] = digest
            previous = self._seen.get(name)
            if previous is None:
                scan.added.append(name)
            elif previous != digest:
                scan.changed.append(name)
            elif not force:
                continue
            try:
                scan.parsed[name] = (parse_conf_file(str(path), raw, self._env), raw)
            except ConfigError as exc:
                scan.refused[name] = exc
        scan.removed = sorted(self._seen.keys() - scan.seen.keys())
        if force:
            # After a restart the stored versions of deleted files are stale.
            scan.removed += sorted(self._serving.keys() - scan.seen.keys() - set(scan.removed))
        return scan

    def _apply(
        self, scan: _Scan, trigger: Trigger, *, force: bool, publish: bool = True
    ) -> ReloadReport:
        started = time.perf_counter()
        if not (scan.added or scan.changed or scan.removed or force):
            self._seen = scan.seen
            METRICS.config_reloads.labels("unchanged").inc()
            return ReloadReport(
                trigger=trigger,
                published=False,
                generation=self.generation,
                routes=len(self.table.routes) if self.table else 0,
                consumers=len(self.table.consumers) if self.table else 0,
            )
        serving = {n: s for n, s in self._serving.items() if n not in scan.removed}
        refused = {
            n: e for n, e in self._refused.items() if n not in scan.removed and n not in scan.parsed
        }
        refused.update(scan.refused)
        now = time.time()
        # A forced reload (SIGHUP) parses every file again; one whose content
        # did not change stays an incumbent, not a newcomer.
        fresh = {*scan.added, *scan.changed}
        candidates = {
            name: version
            for name, version in scan.parsed.items()
            if name in fresh
            or name not in serving
            or serving[name].file.digest != version[0].digest
        }
        # Valid files refused earlier only for a conflict get another chance:
        # the file that held their path may be gone now.
        for name, version in self._blocked.items():
            if name not in scan.removed and name not in scan.parsed and name not in scan.refused:
                candidates[name] = version
        # An active file that lost both versions to another active file that
        # changed in the same batch goes first in the next attempt: it held
        # the path. A refused new version whose last known good is of a kind
        # the build had already taken is left out of the next attempt, so that
        # version serves as an incumbent. Each retry pins or leaves out one
        # more file, so this ends.
        first: list[str] = []
        kept: dict[str, ConfigError] = {}
        while True:
            attempt = offer_files(
                self._compile, candidates, serving, refused, first, kept, now, self._limits
            )
            if attempt.revert:
                kept[attempt.revert[0]] = attempt.refused[attempt.revert[0]]
                continue
            dropped = [n for n in attempt.dropped if n not in first]
            if not dropped:
                break
            first.append(dropped[0])
        builder, serving, refused = attempt.builder, attempt.serving, attempt.refused
        accepted, blocked = attempt.accepted, attempt.blocked
        generation = self.generation + 1
        table = builder.build(generation)
        # Only what serves stays cached: every route of the table was compiled
        # with the table's global plugins.
        compiled = {
            (route.file.source, route.file.digest, table.global_plugins): route
            for route in table.routes
        }
        # A stored copy with the same bytes is not written again: a restart over
        # thousands of unchanged files would otherwise fsync each one.
        self._persist(
            {
                name: serving[name].raw
                for name in accepted
                if name not in self._serving or self._serving[name].raw != serving[name].raw
            },
            scan.removed,
        )
        taken = set(accepted)  # PERF: a set; with 10,000 files a list scan is quadratic
        report = ReloadReport(
            trigger=trigger,
            published=True,
            generation=generation,
            # A new file refused outright is listed under `rejected` only: it
            # added nothing to what is served.
            added=tuple(name for name in scan.added if name in taken),
            changed=tuple(scan.changed),
            removed=tuple(scan.removed),
            rejected=tuple(
                refused[n] for n in sorted(refused) if n in scan.refused or n in scan.parsed
            ),
            routes=len(table.routes),
            consumers=len(table.consumers),
            build_ms=round((time.perf_counter() - started) * 1000, 3),
        )

        def commit() -> None:
            # Everything a status reader sees changes together, with no await
            # in between, on the event loop (or synchronously at start-up).
            self._blocked = blocked
            self._seen, self._serving, self._refused = scan.seen, serving, refused
            self._compiled = compiled
            self.generation, self.table = generation, table
            self.last_report, self.last_reload_at = report, now
            if self._publish is not None:
                self._publish(table)
            METRICS.config_reloads.labels("published").inc()
            METRICS.config_generation.set(generation)
            METRICS.config_rejected_files.set(len(refused))
            METRICS.routes.set(len(table.routes))
            METRICS.retain(route.name for route in table.routes)
            retain_consumers(consumer.username for consumer in table.consumers.consumers)
            log_report(report, self.files())

        if publish:
            commit()
        else:
            self._pending_commit = commit
        return report

    def _persist(self, accepted: dict[str, bytes], removed: list[str]) -> None:
        if self._store is not None:
            for name, raw in accepted.items():
                self._store.save(name, raw)
            for name in removed:
                self._store.delete(name)

    def _compile(self, file: RouteFile, global_plugins: AccessPlugins) -> CompiledRoute:
        # A changed global plugins file recompiles every route; nothing else
        # that is not the route's own file does (consumers are looked up per
        # request in the table's index, never compiled in).
        key = (file.source, file.digest, global_plugins)
        route = self._compiled.get(key)
        if route is None:
            route = compile_route(
                file,
                azure_base_url=self._azure_base_url,
                limits=self._limits,
                global_plugins=global_plugins,
                quotas=self.quotas,
                target_states=self.target_states,
                identities=self.identities,
            )
            self._compiled[key] = route
        return route
