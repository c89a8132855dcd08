"""Typed field readers that record issues instead of raising.

Every reader takes the parent mapping, its key path and a key; it returns the value (or a
default) and appends a `ConfigIssue` when the value is wrong, so one pass reports everything.

SECURITY: the rule for echoing a value in a message lives here, in `Checker.got`:

- a value built from ``${VAR}`` is never shown, only the variable names;
- a value of a secret field (``header_value``, ``param_value``) is never shown;
- a URL is never shown (it may carry credentials or a signed query);
- anything else written literally in the file is shown, truncated, to help find it.
"""

from __future__ import annotations

import difflib
import enum
import json
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import TypeVar

from aigw.config.errors import ConfigIssue
from aigw.config.keypath import child, is_under, item
from aigw.config.yaml_strict import NodePosition
from aigw.templates import Template, TemplateSyntaxError, Variable, parse, path_captures

__all__ = ["Check", "Checker", "backticked"]

Check = Callable[[str], "str | None"]
"""A string check: returns the reason the value is bad, or ``None``."""

_T = TypeVar("_T", bound=str)
_SHOW_MAX = 60
_GENERIC_KONG_REASON = "is a Kong setting that aigw does not support"


class _Absent(enum.Enum):
    ABSENT = enum.auto()


_ABSENT = _Absent.ABSENT


def backticked(names: tuple[str, ...] | list[str]) -> str:
    """Format names for a message: ``a``, ``b`` -> "`a`, `b`"."""
    return ", ".join(f"`{name}`" for name in names)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, datetime):
        return "a timestamp"
    if isinstance(value, date):
        return "a date"
    return type(value).__name__  # pragma: no cover - read_yaml produces nothing else


class Checker:
    """Reads fields out of plain data and collects issues for one file.

    Args:
        file: The file name to put in issues.
        positions: Key path -> position, from `aigw.config.yaml_strict.read_yaml`.
        sources: Key path -> variables the value came from, from `aigw.config.env.interpolate`.
    """

    __slots__ = ("_file", "_positions", "_reported", "_sources", "issues", "templates")

    def __init__(
        self,
        file: str,
        positions: Mapping[str, NodePosition],
        sources: Mapping[str, tuple[str, ...]],
        reported: frozenset[str] = frozenset(),
    ) -> None:
        self._file = file
        self._positions = positions
        self._sources = sources
        self._reported = reported
        self.issues: list[ConfigIssue] = []
        # (key path, template) of each templated field read, for check_captures.
        self.templates: list[tuple[str, Template]] = []

    # -- reporting -------------------------------------------------------------------------

    def report(
        self,
        path: str,
        reason: str,
        *,
        at: str | None = None,
        key: bool = False,
        always: bool = False,
    ) -> None:
        """Record an issue at *path*, positioned at *at* (default *path*).

        Issues at or under a path in *reported* (values an earlier stage could not read, such
        as an unset ``${VAR}``) are dropped: the operator already has the real cause.

        Args:
            path: The key path the issue is about.
            reason: The message.
            at: The key path whose position to use, e.g. the parent of a missing key.
            key: Use the position of the mapping key rather than of its value.
            always: Report even under an already-reported path (the issue is about the key).
        """
        if not always and any(is_under(path, done) for done in self._reported):
            return
        pos = self._positions.get(path if at is None else at)
        if pos is None:
            self.issues.append(ConfigIssue(self._file, path, reason))
        elif key and pos.key_line is not None:
            self.issues.append(ConfigIssue(self._file, path, reason, pos.key_line, pos.key_column))
        else:
            self.issues.append(ConfigIssue(self._file, path, reason, pos.line, pos.column))

    def got(self, path: str, value: str, *, secret: bool = False) -> str:
        """Describe a bad string value for a message without leaking secrets (see module doc)."""
        names = self._sources.get(path)
        if names:
            return f"; value from {', '.join('`${' + name + '}`' for name in names)}"
        if secret:
            return ""
        shown = json.dumps(value if len(value) <= _SHOW_MAX else value[:_SHOW_MAX] + "...")
        return f"; got {shown}"

    def wrong_type(self, path: str, value: object, expected: str, *, secret: bool = False) -> None:
        """Report that *value* at *path* is not *expected* (e.g. "a string"), with YAML hints."""
        kind = _kind(value)
        reason = f"expected {expected}; got {kind}"
        pos = self._positions.get(path)
        plain = pos.plain if pos is not None else None
        # Only explain YAML's reading where it surprises: `no` -> false, `2024-10-21` -> date,
        # or any unquoted scalar where text was wanted; "got a number" needs no explanation.
        surprising = isinstance(value, bool | date) or expected not in ("an integer", "a number")
        if plain and surprising and not secret:
            reason += f" (YAML reads the unquoted `{plain}` as {kind})"
        if plain and expected == "a string":
            reason += "; put the value in quotes"
        self.report(path, reason)

    def missing(
        self, parent: str, key: str, reason: str | None = None, *, at: str | None = None
    ) -> None:
        """Report that required *key* is absent from the mapping at *parent*.

        The issue is positioned at the parent's key line (or at *at*, if given).
        """
        reason = reason or f"missing required key `{key}`"
        self.report(child(parent, key), reason, at=parent if at is None else at, key=True)

    def absent(self, m: Mapping[str, object], parent: str, key: str) -> None:
        """Report required *key* as missing, or as null if it is written without a value."""
        if key in m:
            self.report(child(parent, key), "must have a value; got null")
        else:
            self.missing(parent, key)

    # -- containers ------------------------------------------------------------------------

    def mapping(
        self,
        value: object,
        path: str,
        known: tuple[str, ...],
        kong: Mapping[str, str] | None = None,
        *,
        expected: str = "a mapping",
    ) -> dict[str, object] | None:
        """Check that *value* is a mapping with only *known* keys.

        Args:
            value: The value to check.
            path: Its key path.
            known: The keys aigw understands.
            kong: Keys Kong has but aigw does not, with the reason to give ("" for a generic one).
            expected: How to describe a mapping in a type error.

        Returns:
            The mapping, or ``None`` if *value* is not one. Unknown keys are reported but kept.
        """
        if not isinstance(value, dict):
            self.wrong_type(path, value, expected)
            return None
        for key in value:
            if key not in known:
                self._unknown_key(child(path, key), key, known, kong or {})
        return value

    def _unknown_key(
        self, path: str, key: str, known: tuple[str, ...], kong: Mapping[str, str]
    ) -> None:
        if key in kong:
            reason = f"`{key}` {kong[key] or _GENERIC_KONG_REASON}"
        else:
            close = difflib.get_close_matches(key, known, n=1)
            hint = (
                f"did you mean `{close[0]}`?" if close else f"expected one of {backticked(known)}"
            )
            reason = f"unknown key `{key}`; {hint}"
        self.report(path, reason, key=True, always=True)

    def section(
        self,
        parent: Mapping[str, object],
        parent_path: str,
        key: str,
        known: tuple[str, ...],
        kong: Mapping[str, str] | None = None,
        *,
        required: bool = False,
    ) -> dict[str, object] | None:
        """Read a nested mapping; an absent or null optional section reads as ``{}``.

        Returns:
            The mapping, or ``None`` if it is missing-but-required or not a mapping.
        """
        value = parent.get(key)
        if value is None:
            if required:
                self.absent(parent, parent_path, key)
                return None
            return {}
        return self.mapping(value, child(parent_path, key), known, kong)

    def sequence(self, value: object, path: str) -> list[object] | None:
        """Check that *value* is a list; report and return ``None`` otherwise."""
        if isinstance(value, list):
            return value
        self.wrong_type(path, value, "a list")
        return None

    # -- scalars ---------------------------------------------------------------------------

    def _get(self, m: Mapping[str, object], parent: str, key: str, required: bool) -> object:
        """Return the raw value, or `_ABSENT` (reported if required) for absent or null."""
        value = m.get(key)
        if value is None:
            if required:
                self.absent(m, parent, key)
            return _ABSENT
        return value

    def text(
        self,
        m: Mapping[str, object],
        parent: str,
        key: str,
        *,
        required: bool = False,
        secret: bool = False,
        allow_empty: bool = False,
        check: Check | None = None,
        templated: bool = False,
    ) -> str | None:
        """Read a string field.

        Args:
            m: The parent mapping.
            parent: Its key path.
            key: The field.
            required: Report if absent or null.
            secret: Never echo the value.
            allow_empty: Accept ``""``.
            check: Further validation; its reason is followed by a safe description of the value.
            templated: The field may hold Kong's ``$(kind.NAME)`` variables
                (`aigw.templates`): a value with ``$(`` must parse, and *check*
                applies to it with each variable read as a plain name.

        Returns:
            The string (a template still as text), or ``None`` if absent or invalid.
        """
        value = self._get(m, parent, key, required)
        if value is _ABSENT:
            return None
        path = child(parent, key)
        if not isinstance(value, str):
            self.wrong_type(path, value, "a string", secret=secret)
            return None
        if not value and not allow_empty:
            self.report(path, "must not be empty" + self.got(path, value, secret=True))
            return None
        checked = value
        if templated and "$(" in value:
            try:
                template = parse(value)
            except TemplateSyntaxError as exc:
                self.report(path, str(exc))
                return None
            self.templates.append((path, template))
            # Each value is checked per request (aigw.templates.values): here
            # only the text around the variables is, with a name in their place.
            checked = template.render(dict.fromkeys(template.variables, "x"))
        problem = check(checked) if check is not None and value else None
        if problem is not None:
            self.report(path, problem + self.got(path, value, secret=secret))
            return None
        return value

    def check_captures(self, paths: tuple[str, ...]) -> None:
        """Report each ``$(uri_captures.NAME)`` read by `text` that not every one of
        *paths* captures (a request could never provide it)."""
        captures = path_captures(paths)
        if captures is None:
            return  # a path the router will reject: that is the error to read
        for path, template in self.templates:
            for variable in dict.fromkeys(template.variables):
                if variable.kind == "uri_captures" and variable.name not in captures:
                    self.report(path, _no_capture(variable, captures))

    def choice(
        self,
        m: Mapping[str, object],
        parent: str,
        key: str,
        choices: tuple[_T, ...],
        *,
        default: _T,
        required: bool = False,
    ) -> _T:
        """Read an enum field; return *default* if absent or invalid."""
        value = self._get(m, parent, key, required)
        if value is _ABSENT:
            return default
        if isinstance(value, str) and value in choices:
            return choices[choices.index(value)]
        self._bad_choice(child(parent, key), value, choices)
        return default

    def optional_choice(
        self, m: Mapping[str, object], parent: str, key: str, choices: tuple[_T, ...]
    ) -> _T | None:
        """Read an optional enum field; ``None`` if absent or invalid."""
        value = m.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value in choices:
            return choices[choices.index(value)]
        self._bad_choice(child(parent, key), value, choices)
        return None

    def _bad_choice(self, path: str, value: object, choices: tuple[str, ...]) -> None:
        expected = f"one of {backticked(choices)}"
        if isinstance(value, str):
            self.report(path, f"expected {expected}{self.got(path, value)}")
        else:
            self.wrong_type(path, value, expected)

    def boolean(self, m: Mapping[str, object], parent: str, key: str, *, default: bool) -> bool:
        """Read a boolean field; YAML 1.1's ``yes``/``no``/``on``/``off`` are booleans too."""
        value = self._get(m, parent, key, False)
        if value is _ABSENT:
            return default
        if isinstance(value, bool):
            return value
        self.wrong_type(child(parent, key), value, "a boolean (true or false)")
        return default

    def integer(
        self,
        m: Mapping[str, object],
        parent: str,
        key: str,
        *,
        low: int,
        high: int | None = None,
    ) -> int | None:
        """Read an integer in ``[low, high]``; ``None`` if absent or invalid.

        Booleans are not accepted as integers (Python would, YAML authors do not mean it).
        """
        value = self._get(m, parent, key, False)
        if value is _ABSENT:
            return None
        path = child(parent, key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(path, value, "an integer")
            return None
        if value < low or (high is not None and value > high):
            self.report(path, f"must be {_range(low, high)}; got {value}")
            return None
        return value

    def number(
        self, m: Mapping[str, object], parent: str, key: str, *, low: float, high: float
    ) -> float | None:
        """Read a number in ``[low, high]`` (integers accepted); ``None`` if absent or invalid."""
        value = self._get(m, parent, key, False)
        if value is _ABSENT:
            return None
        path = child(parent, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(path, value, "a number")
            return None
        number = float(value)
        if not low <= number <= high:  # also rejects nan
            self.report(path, f"must be {_range(low, high)}; got {value}")
            return None
        return number

    def strings(self, value: object, path: str) -> list[tuple[str, str]]:
        """Read a list of non-empty strings as ``(path, string)`` pairs, reporting bad elements."""
        elements = self.sequence(value, path)
        result: list[tuple[str, str]] = []
        for index, element in enumerate(elements or ()):
            element_path = item(path, index)
            if not isinstance(element, str):
                self.wrong_type(element_path, element, "a string")
            elif not element:
                self.report(element_path, "must not be empty")
            else:
                result.append((element_path, element))
        return result


def _range(low: float, high: float | None) -> str:
    if high is None:
        return f"at least {low}"
    return f"between {low} and {high}"


def _no_capture(variable: Variable, captures: frozenset[str]) -> str:
    reason = f"`{variable}` names a capture that not every path of `route.paths` has"
    if not captures:
        return reason + "; capture it with a named group, e.g. `(?<name>[^/]+)`, or `{name}`"
    close = difflib.get_close_matches(variable.name, sorted(captures), n=1)
    if close:
        return reason + f"; did you mean `$(uri_captures.{close[0]})`?"
    return reason + f"; the paths capture {backticked(sorted(captures))}"
