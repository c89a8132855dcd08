"""Watching conf.d: turn file-system events into reloads, promptly and not too often.

watchfiles batches events (a batch is released after ``step_ms`` of quiet), so
a burst of writes (a deploy dropping 50 files, an editor's save dance) becomes
one reload. Before reading, the watcher waits for the directory to *settle*:
two looks ``settle_ms`` apart must see the same size and mtime for every route
file, so a file being written in place is read once it is complete.

The whole directory is watched, not each file: editors and Kubernetes
ConfigMaps replace files by rename (a ConfigMap swaps a ``..data`` symlink),
which a watch on the file itself would never see. Every event triggers a
reload; a reload that finds no changed bytes costs a directory read and a few
hashes, and publishes nothing.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import watchfiles

from aigw.config.errors import ConfigError
from aigw.config.loader import discover
from aigw.logs import get_logger
from aigw.reload import Reloader

__all__ = ["watch_conf_dir"]

_log = get_logger("aigw.watch")

_SETTLE_LIMIT_S = 2.0  # a file still growing after this is read anyway (and likely refused)


async def watch_conf_dir(
    reloader: Reloader,
    stop: asyncio.Event,
    *,
    step_ms: int = 30,
    settle_ms: int = 50,
    retry_s: float = 1.0,
) -> None:
    """Reloads *reloader* whenever its directory changes, until *stop* is set."""
    conf_dir = reloader.conf_dir
    while not stop.is_set():
        # A change that lands after the last read of conf.d but before the watch
        # is in place would go unnoticed until some later event. awatch puts its
        # watches in place synchronously on its first step, before it first
        # waits; this task runs only once that step has waited, so it re-reads
        # conf.d with the watches in place (a no-op reload if nothing changed).
        catch_up = asyncio.create_task(_reload(reloader), name="watch-catch-up")
        try:
            async for _changes in watchfiles.awatch(
                conf_dir,
                step=step_ms,
                debounce=1_600,
                stop_event=stop,
                recursive=True,  # a ConfigMap's real files live in a ..<timestamp>/ subdir
                watch_filter=watchfiles.DefaultFilter(),
            ):
                await _settle(conf_dir, settle_ms)
                await _reload(reloader)
        except (FileNotFoundError, PermissionError, RuntimeError, OSError) as exc:
            # conf.d vanished or became unreadable: keep serving what we have
            # and keep trying to come back (the retry below re-reads conf.d).
            catch_up.cancel()
            _log.error("watch_failed", conf_dir=str(conf_dir), reason=str(exc))
            try:
                await asyncio.wait_for(stop.wait(), retry_s)
            except TimeoutError:
                await _reload(reloader)
        finally:
            catch_up.cancel()  # a no-op once it has run


async def _reload(reloader: Reloader) -> None:
    try:
        await reloader.reload("watch")
    except Exception:
        # A bug in a reload must not end the watcher; the old table keeps serving.
        _log.exception("reload_crashed", conf_dir=str(reloader.conf_dir))


async def _settle(conf_dir: Path, settle_ms: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SETTLE_LIMIT_S
    before = _fingerprint(conf_dir)
    while True:
        await asyncio.sleep(settle_ms / 1000)
        after = _fingerprint(conf_dir)
        if after == before or loop.time() > deadline:
            return
        before = after


def _fingerprint(conf_dir: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        paths = discover(conf_dir)
    except ConfigError:
        return ()
    result = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        result.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(result)
