"""Loading conf.d files: bytes -> `ConfFile`, one file, or a whole conf.d directory.

Pipeline for one file (each step collects issues; the file is rejected if any step found one)::

    bytes -utf-8-> text -read_yaml-> data, positions -interpolate-> data -validate-> ConfFile

The root keys decide which validator runs (`aigw.config.schema.file_kind`): ``route`` makes a
`RouteFile`, ``consumer``/``consumers`` a `ConsumerFile`, ``plugins`` alone a
`GlobalPluginsFile`.

Value issues of a later step are dropped where an earlier step already reported the key path
(an unset ``${VAR}`` is not also reported as a bad hostname). All remaining issues are
reported, sorted by position.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aigw.config.consumer_schema import validate_consumers
from aigw.config.env import Interpolated, interpolate
from aigw.config.errors import ConfigDirectoryError, ConfigError, ConfigIssue
from aigw.config.keypath import ROOT
from aigw.config.model import ConfFile, ConsumerFile, GlobalPluginsFile, RouteFile
from aigw.config.plugins_schema import validate_global
from aigw.config.schema import file_kind, validate
from aigw.config.yaml_strict import YamlDocument, read_yaml

__all__ = [
    "DirLoad",
    "discover",
    "load_dir",
    "load_file",
    "parse_conf_file",
    "parse_route_file",
]

_SUFFIXES = (".yaml", ".yml")
# Most of these never end in .yaml anyway; listed so the intent survives a suffix change.
_EDITOR_SUFFIXES = ("~", ".swp", ".swx")
_EDITOR_NAMES = frozenset({"4913"})  # vim's "can I write here?" probe file
_GC_PAUSE_BYTES = 64 * 1024  # see _gc_paused


@dataclass(frozen=True, slots=True)
class DirLoad:
    """The result of `load_dir`.

    Attributes:
        accepted: Route files that loaded, in `discover` order.
        rejected: One `ConfigError` per file that did not (``error.source`` is the file).
        consumers: Consumer files that loaded, in `discover` order.
        global_plugins: Global plugins files that loaded, in `discover` order.
    """

    accepted: tuple[RouteFile, ...]
    rejected: tuple[ConfigError, ...]
    consumers: tuple[ConsumerFile, ...] = ()
    global_plugins: tuple[GlobalPluginsFile, ...] = ()


def parse_conf_file(source: str, data: bytes, env: Mapping[str, str]) -> ConfFile:
    """Parse and validate the raw bytes of one conf.d file, whatever it holds.

    Args:
        source: The file name, used in messages and as the result's ``source``.
        data: The raw file contents.
        env: Variables for ``${VAR}`` interpolation.

    Returns:
        A `RouteFile`, `ConsumerFile` or `GlobalPluginsFile`, by the file's root keys.

    Raises:
        ConfigError: With every issue found in the file.
    """
    result = _parse(source, data, env)
    if isinstance(result, tuple):
        raise ConfigError(result)
    return result


def parse_route_file(source: str, data: bytes, env: Mapping[str, str]) -> RouteFile:
    """Parse and validate the raw bytes of one route file.

    Args:
        source: The file name, used in messages and as `RouteFile.source`.
        data: The raw file contents.
        env: Variables for ``${VAR}`` interpolation.

    Returns:
        The validated route file.

    Raises:
        ConfigError: With every issue found in the file, or saying that the file is a valid
            consumer or global plugins file rather than a route file.
    """
    result = parse_conf_file(source, data, env)
    if isinstance(result, RouteFile):
        return result
    kind = "consumer" if isinstance(result, ConsumerFile) else "global plugins"
    reason = f"not a route file: this is a {kind} file (it has no `route`)"
    raise ConfigError((ConfigIssue(source, ROOT, reason),))


def load_file(path: Path, env: Mapping[str, str]) -> RouteFile:
    """Read and validate one route file.

    Args:
        path: The file.
        env: Variables for ``${VAR}`` interpolation.

    Returns:
        The validated route file.

    Raises:
        ConfigError: If the file cannot be read or is invalid; lists every issue.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError((_read_issue(str(path), exc),)) from None
    return parse_route_file(str(path), data, env)


def discover(conf_dir: Path) -> list[Path]:
    """List the route files in a directory, sorted by name.

    A route file is a ``*.yaml`` or ``*.yml`` entry that is a regular file or a symlink to one
    (Kubernetes ConfigMap mounts expose ``name.yaml -> ..data/name.yaml``). Hidden entries
    (which includes ConfigMap's ``..data`` machinery) and editor droppings (``*~``, ``.#*``,
    ``*.swp``, ``*.swx``, ``4913``) are skipped. Subdirectories are not searched. Broken
    symlinks are skipped like any other non-file.

    Args:
        conf_dir: The directory.

    Returns:
        ``conf_dir / name`` for each route file, sorted lexically by name.

    Raises:
        ConfigDirectoryError: If the directory is missing, not a directory, or unreadable.
    """
    try:
        with os.scandir(conf_dir) as entries:
            names = [entry.name for entry in entries if _is_route_file(entry)]
    except FileNotFoundError:
        raise ConfigDirectoryError(str(conf_dir), "directory does not exist") from None
    except NotADirectoryError:
        raise ConfigDirectoryError(str(conf_dir), "not a directory") from None
    except OSError as exc:
        reason = f"cannot read directory: {exc.strerror or type(exc).__name__}"
        raise ConfigDirectoryError(str(conf_dir), reason) from None
    return [conf_dir / name for name in sorted(names)]


def load_dir(conf_dir: Path, env: Mapping[str, str]) -> DirLoad:
    """Load every file in a directory; a bad file never stops the others.

    Route names must be unique: a file reusing a name already taken by an earlier file (in
    `discover` order) is rejected. Consumer and global plugins files are returned as they
    parse; what they may not share across files (usernames, keys, global plugin names) is
    decided by the table builder (`aigw.table`), which sees every file.

    Args:
        conf_dir: The directory.
        env: Variables for ``${VAR}`` interpolation.

    Returns:
        The accepted files and one error per rejected file.

    Raises:
        ConfigDirectoryError: If the directory is missing, not a directory, or unreadable.
    """
    accepted: list[RouteFile] = []
    rejected: list[ConfigError] = []
    consumers: list[ConsumerFile] = []
    global_plugins: list[GlobalPluginsFile] = []
    owners: dict[str, str] = {}
    for path in discover(conf_dir):
        source = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:  # e.g. deleted or replaced since discover()
            rejected.append(ConfigError((_read_issue(source, exc),)))
            continue
        result = _parse(source, data, env)
        if isinstance(result, tuple):
            rejected.append(ConfigError(result))
            continue
        if isinstance(result, ConsumerFile):
            consumers.append(result)
            continue
        if isinstance(result, GlobalPluginsFile):
            global_plugins.append(result)
            continue
        owner = owners.setdefault(result.route.name, source)
        if owner != source:
            reason = f"route name `{result.route.name}` is already used by {owner}"
            rejected.append(ConfigError((ConfigIssue(source, "route.name", reason),)))
            continue
        accepted.append(result)
    return DirLoad(tuple(accepted), tuple(rejected), tuple(consumers), tuple(global_plugins))


def _is_route_file(entry: os.DirEntry[str]) -> bool:
    name = entry.name
    if name.startswith(".") or name.endswith(_EDITOR_SUFFIXES) or name in _EDITOR_NAMES:
        return False
    # is_file() follows symlinks and answers False for broken ones.
    return name.endswith(_SUFFIXES) and entry.is_file()


def _read_issue(source: str, exc: OSError) -> ConfigIssue:
    return ConfigIssue(source, ROOT, f"cannot read file: {exc.strerror or type(exc).__name__}")


_EMPTY = (
    "file is empty; expected `route` and `plugins` (a route), `consumer` or `consumers`, "
    "or `plugins` alone (global plugins)"
)


def _parse(source: str, data: bytes, env: Mapping[str, str]) -> ConfFile | tuple[ConfigIssue, ...]:
    with _gc_paused(len(data)):
        return _parse_now(source, data, env)


@contextmanager
def _gc_paused(size: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while a large file is parsed.

    PERF: a large file builds a few hundred thousand live objects in one go (YAML nodes, plain
    data, positions), and each object count threshold crossed starts a collection that walks
    all of them again: a ``consumers:`` file of 10,000 took 1.5 s with the collector on and
    0.5 s with it paused. Nothing a parse builds is cyclic, so reference counting frees it all
    the same. Small files are left alone (nothing to gain).
    """
    if size < _GC_PAUSE_BYTES or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _parse_now(
    source: str, data: bytes, env: Mapping[str, str]
) -> ConfFile | tuple[ConfigIssue, ...]:
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return (_decode_issue(source, data, exc),)
    doc = read_yaml(text, source)
    if doc.data is None and not doc.issues:
        return (ConfigIssue(source, ROOT, _EMPTY),)
    if doc.data is None:  # syntax error: nothing to interpolate or validate
        return doc.issues
    interpolated = interpolate(doc.data, env, file=source, positions=doc.positions)
    result, issues = _validate(source, digest, doc, interpolated)
    if result is not None and not doc.issues and not interpolated.issues:
        return result
    found = [*doc.issues, *interpolated.issues, *issues]
    return tuple(sorted(found, key=_position))


def _validate(
    source: str, digest: str, doc: YamlDocument, interpolated: Interpolated
) -> tuple[ConfFile | None, tuple[ConfigIssue, ...]]:
    """Run the validator the root keys call for; the file, or None and the issues."""
    data, positions, sources = interpolated.data, doc.positions, interpolated.sources
    reported = doc.unusable | interpolated.unusable
    kind = file_kind(data)
    if kind == "consumer":
        consumers = validate_consumers(
            data, file=source, positions=positions, sources=sources, reported=reported
        )
        if consumers.consumers is None:
            return None, consumers.issues
        return ConsumerFile(source, digest, consumers.consumers), ()
    if kind == "plugins":
        plugins = validate_global(
            data, file=source, positions=positions, sources=sources, reported=reported
        )
        if plugins.plugins is None:
            return None, plugins.issues
        return GlobalPluginsFile(source, digest, plugins.plugins), ()
    route = validate(data, file=source, positions=positions, sources=sources, reported=reported)
    if route.route is None or route.proxy is None:
        return None, route.issues
    return RouteFile(source, digest, route.route, route.proxy, route.plugins), ()


def _position(issue: ConfigIssue) -> tuple[bool, int, int]:
    return issue.line is None, issue.line or 0, issue.column or 0


def _decode_issue(source: str, data: bytes, exc: UnicodeDecodeError) -> ConfigIssue:
    line_start = data.rfind(b"\n", 0, exc.start) + 1
    line = data.count(b"\n", 0, exc.start) + 1
    column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
    reason = f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x})"
    return ConfigIssue(source, ROOT, reason, line, column)
