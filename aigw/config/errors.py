"""Configuration errors.

Exception tree::

    Exception
    └── ConfigError                 one file (or the directory) failed; carries every ConfigIssue
        └── ConfigDirectoryError    the conf.d directory itself is missing or unreadable

A `ConfigIssue` is one problem at one place. Its ``str()`` is the compiler-style line operators
grep for: ``conf.d/gpt-4o.yaml:12:13: plugins[0].config.targets[0].auth.header_vaule: unknown key``.

SECURITY: no message built by this package contains a configured secret or a value that came
from the environment; see `aigw.config.schema` for how values are (not) echoed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigDirectoryError", "ConfigError", "ConfigIssue"]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a configuration file.

    Attributes:
        file: The file path as given to the loader.
        key_path: Where in the document, e.g. ``plugins[0].config.targets[0].auth.header_value``;
            empty when the problem is not tied to a key (a YAML syntax error, an empty file).
        reason: What is wrong, in words an operator can act on.
        line: 1-based line in the file, when known.
        column: 1-based column in the file, when known.
    """

    file: str
    key_path: str
    reason: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.column or 1}"
        if self.key_path:
            return f"{where}: {self.key_path}: {self.reason}"
        return f"{where}: {self.reason}"


class ConfigError(Exception):
    """A configuration file was rejected.

    ``str(error)`` lists every issue, one per line, as ``file:line:col: key.path: reason``.

    Args:
        issues: Every problem found; at least one.

    Raises:
        ValueError: If *issues* is empty (an error without a reason helps nobody).
    """

    issues: tuple[ConfigIssue, ...]

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        if not self.issues:
            raise ValueError("ConfigError needs at least one ConfigIssue")
        super().__init__(self.issues)

    @property
    def source(self) -> str:
        """The file (or directory) the issues are about."""
        return self.issues[0].file

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


class ConfigDirectoryError(ConfigError):
    """The configuration directory is missing, not a directory, or unreadable.

    Args:
        directory: The directory path as given.
        reason: Why it cannot be used, e.g. ``"directory does not exist"``.
    """

    def __init__(self, directory: str, reason: str) -> None:
        super().__init__((ConfigIssue(directory, "", reason),))
        self.directory = directory
