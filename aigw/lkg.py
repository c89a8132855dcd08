"""Last-known-good store: the raw text of every accepted route file, on disk.

A restart with a broken file in conf.d then still serves that file's last
accepted version (and says it is degraded) instead of silently dropping the
route. Files are stored unresolved, exactly as the operator wrote them, so no
secret from the environment ever lands in the state directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from aigw.logs import get_logger

__all__ = ["LastKnownGood"]

_log = get_logger("aigw.lkg")


class LastKnownGood:
    """Stores accepted route files by name under ``state_dir/lkg``.

    Args:
        state_dir: The service's state directory (systemd ``StateDirectory``).
    """

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "lkg"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load(self) -> dict[str, bytes]:
        """Every stored file, by name."""
        stored: dict[str, bytes] = {}
        for path in sorted(self.directory.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                stored[path.name] = path.read_bytes()
        return stored

    def save(self, name: str, data: bytes) -> None:
        """Stores *data* as the accepted version of *name*, atomically."""
        target = self.directory / name
        # Unique per process: with --workers N every worker writes the same files.
        temporary = self.directory / f".{name}.{os.getpid()}.tmp"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as exc:
            # Losing the LKG copy degrades a future restart, not this process:
            # log it and keep serving.
            _log.error("lkg_write_failed", file=name, reason=exc.strerror or str(exc))

    def delete(self, name: str) -> None:
        """Forgets *name* (its file was removed from conf.d)."""
        try:
            (self.directory / name).unlink(missing_ok=True)
        except OSError as exc:
            _log.error("lkg_delete_failed", file=name, reason=exc.strerror or str(exc))
