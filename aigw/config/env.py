"""``${VAR}`` interpolation of string values.

Syntax, applied to every string *value* in a route file (never to keys):

==========================  ===========================================================
``${NAME}``                 the value of ``NAME``; an issue if ``NAME`` is not set
``${NAME:-default}``        ``NAME`` if set and non-empty, else ``default`` (shell rules);
                            ``default`` is literal text up to the first ``}``
``$${``                     a literal ``${`` (the escape)
``$`` anywhere else         literal, so regex paths such as ``~/chat/completions$`` and
                            Kong templates such as ``$(uri_captures.name)`` pass untouched
==========================  ===========================================================

``NAME`` is ``[A-Za-z_][A-Za-z0-9_]*``. Inside YAML flow collections (``[...]``, ``{...}``)
quote the value, ``["${PATH}"]``, because braces are YAML syntax there.

Expansion is a single pass: a value taken from the environment is never scanned again, so a
secret that happens to contain ``${`` stays literal. Only strings are interpolated, so numbers
and booleans (``max_tokens``, ``log_payloads``) cannot come from the environment; the schema
reports ``${...}`` in such a field as a type error.

The environment is passed in (a `Mapping`) rather than read from `os.environ`, so loading is
pure and tests need no monkeypatching.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from aigw.config.errors import ConfigIssue
from aigw.config.keypath import child, item
from aigw.config.yaml_strict import NodePosition

__all__ = ["Expansion", "Interpolated", "expand", "interpolate"]

_REFERENCE = re.compile(
    r"\$\$\{"  # escape
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"  # ${NAME} / ${NAME:-x}
    r"|\$\{(?P<bad>[^}]*)(?P<close>\})?"  # anything else that opens ${
)
_LEADING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Expansion:
    """The result of expanding one string.

    Attributes:
        text: The expanded string (references that failed are left as written).
        names: Every variable referenced, in order; non-empty means the value (partly) came
            from the environment and must not be echoed in messages.
        problems: Why expansion failed, one reason per bad reference; empty on success.
    """

    text: str
    names: tuple[str, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Interpolated:
    """The result of `interpolate`.

    Attributes:
        data: A copy of the input with every string value expanded.
        issues: One issue per failed reference.
        sources: Key path -> names of the variables its value was built from.
        unusable: Key paths whose value could not be expanded.
    """

    data: object
    issues: tuple[ConfigIssue, ...]
    sources: Mapping[str, tuple[str, ...]]
    unusable: frozenset[str]


def expand(value: str, env: Mapping[str, str]) -> Expansion:
    """Expand the ``${...}`` references in one string.

    Args:
        value: The string as written in the file.
        env: The variables to substitute.

    Returns:
        The expanded text, the referenced names and any problems. Problem texts name variables
        but never contain a value.
    """
    if "$" not in value:  # PERF: almost every value
        return Expansion(value, (), ())
    names: list[str] = []
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is not None:
            names.append(name)
            found = env.get(name)
            default = match.group("default")
            if default is not None:
                return found or default  # shell `:-`: empty counts as unset
            if found is not None:
                return found
            # Says how to set it: the usual cause is a shell, or a service, that
            # never had it (`aigw check` on the shipped examples, for one).
            problems.append(
                f"environment variable `{name}` is not set (set it where aigw runs: "
                f"`export {name}=...` in a shell, a line `{name}=...` in /etc/aigw/aigw.env "
                f"for the systemd service; or write `${{{name}:-default}}` to give a default)"
            )
            return match.group()
        bad = match.group("bad")
        if bad is None:
            return "${"  # the $${ escape
        if match.group("close") is None:
            problems.append("unterminated `${` (no closing `}`)")
        else:
            # SECURITY: quote only a leading variable name, never the rest of the text.
            lead = _LEADING_NAME.match(bad)
            shown = f" to `{lead.group()}`" if lead else ""
            problems.append(
                f"malformed variable reference{shown}; write `${{NAME}}` or `${{NAME:-default}}`"
            )
        return match.group()

    text = _REFERENCE.sub(replace, value)
    return Expansion(text, tuple(names), tuple(problems))


def interpolate(
    data: object,
    env: Mapping[str, str],
    *,
    file: str,
    positions: Mapping[str, NodePosition],
) -> Interpolated:
    """Expand ``${...}`` in every string value of a document.

    Args:
        data: Plain data from `aigw.config.yaml_strict.read_yaml`.
        env: The variables to substitute.
        file: The file name to put in issues.
        positions: Key path -> position, to give issues a line and column.

    Returns:
        The expanded copy, the issues, and which key paths drew on which variables.
    """
    walker = _Walker(env, file, positions)
    result = walker.walk(data, "")
    return Interpolated(result, tuple(walker.issues), walker.sources, frozenset(walker.unusable))


class _Walker:
    __slots__ = ("_env", "_file", "_positions", "issues", "sources", "unusable")

    def __init__(self, env: Mapping[str, str], file: str, pos: Mapping[str, NodePosition]) -> None:
        self._env = env
        self._file = file
        self._positions = pos
        self.issues: list[ConfigIssue] = []
        self.sources: dict[str, tuple[str, ...]] = {}
        self.unusable: set[str] = set()

    def walk(self, value: object, path: str) -> object:
        if isinstance(value, dict):
            return {key: self._child(sub, path, key) for key, sub in value.items()}
        if isinstance(value, list):
            return [self._child(sub, path, index) for index, sub in enumerate(value)]
        if isinstance(value, str):
            return self._string(value, path)
        return value

    def _child(self, value: object, parent: str, segment: str | int) -> object:
        # PERF: the key path is only formatted for containers and for strings holding a `$`.
        if isinstance(value, str):
            if "$" not in value:
                return value
        elif not isinstance(value, dict | list):
            return value
        path = item(parent, segment) if isinstance(segment, int) else child(parent, segment)
        return self.walk(value, path)

    def _string(self, value: str, path: str) -> str:
        expansion = expand(value, self._env)
        if expansion.names:
            self.sources[path] = expansion.names
        if expansion.problems:
            self.unusable.add(path)
            pos = self._positions.get(path)
            line, column = (pos.line, pos.column) if pos is not None else (None, None)
            self.issues.extend(
                ConfigIssue(self._file, path, problem, line, column)
                for problem in expansion.problems
            )
        return expansion.text
