"""How a reload went and how each conf.d file stands: the views of ``/status`` and the log."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aigw.config.errors import ConfigError
from aigw.config.model import ConfFile, ConsumerFile, RouteFile
from aigw.logs import get_logger

__all__ = ["FileKind", "FileState", "ReloadReport", "file_kind", "iso", "log_report"]

_log = get_logger("aigw.reload")

FileKind = Literal["plugins", "consumer", "route"]
"""What a conf.d file holds."""


def file_kind(file: ConfFile) -> FileKind:
    """The kind of a parsed conf.d file."""
    if isinstance(file, RouteFile):
        return "route"
    if isinstance(file, ConsumerFile):
        return "consumer"
    return "plugins"


@dataclass(frozen=True, slots=True)
class FileState:
    """How one conf.d file stands after the latest reload.

    Attributes:
        name: File name in conf.d.
        state: ``active`` (its current content serves), ``lkg`` (its current
            content was refused; its last known good version serves) or
            ``rejected`` (refused, and nothing of it serves).
        kind: What the serving version holds (or, for a rejected file, the
            refused version, when it could be parsed); None when unknown.
        route: The route name of the serving version, for a route file.
        models: The models the serving version's route serves (``route.models``;
            empty on a path route), for a route file.
        consumers: How many consumers the serving version defines, for a consumer file.
        plugins: The plugin names the serving version defines, for a global plugins file.
        digest: sha256 of the serving version.
        accepted_at: When the serving version was accepted (Unix time).
        error: Why the current content was refused.
    """

    name: str
    state: Literal["active", "lkg", "rejected"]
    kind: FileKind | None = None
    route: str | None = None
    models: tuple[str, ...] | None = None
    consumers: int | None = None
    plugins: tuple[str, ...] | None = None
    digest: str | None = None
    accepted_at: float | None = None
    error: ConfigError | None = None

    def as_json(self) -> dict[str, Any]:
        """The status-endpoint view of this file."""
        return {
            "state": self.state,
            "kind": self.kind,
            "route": self.route,
            "models": list(self.models) if self.models is not None else None,
            "consumers": self.consumers,
            "plugins": list(self.plugins) if self.plugins is not None else None,
            "digest": self.digest,
            "accepted_at": iso(self.accepted_at),
            "error": [str(issue) for issue in self.error.issues] if self.error else None,
        }


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What one reload did.

    Attributes:
        trigger: What started it.
        published: A new table was published.
        generation: The generation serving after the reload.
        added: New files whose content now serves (a refused one is only in ``rejected``).
        changed / removed: File names whose content changed, vanished.
        rejected: The refusals of this reload, one per file.
        routes: Routes in the serving table.
        consumers: Consumers in the serving table.
        build_ms: Time spent reading, validating and building.
        error: Set when conf.d itself could not be read (nothing changed).
    """

    trigger: str
    published: bool
    generation: int
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rejected: tuple[ConfigError, ...] = ()
    routes: int = 0
    consumers: int = 0
    build_ms: float = 0.0
    error: str | None = None


def log_report(report: ReloadReport, files: list[FileState]) -> None:
    """Logs one ``config_rejected`` event per refused file, then the ``config_reload`` event."""
    lkg = {f.name for f in files if f.state == "lkg"}
    for error in report.rejected:
        _log.error(
            "config_rejected",
            file=error.source,
            issues=[str(issue) for issue in error.issues],
            generation=report.generation,
            serving="last known good" if Path(error.source).name in lkg else "nothing",
        )
    _log.info(
        "config_reload",
        trigger=report.trigger,
        generation=report.generation,
        added=list(report.added),
        changed=list(report.changed),
        removed=list(report.removed),
        rejected=[
            {"file": e.source, "issues": [str(i) for i in e.issues]} for e in report.rejected
        ],
        routes=report.routes,
        consumers=report.consumers,
        build_ms=report.build_ms,
        degraded=any(f.state != "active" for f in files),
    )


def iso(timestamp: float | None) -> str | None:
    """*timestamp* (Unix time) as ISO 8601 UTC; None for none (or 0: never)."""
    if not timestamp:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
