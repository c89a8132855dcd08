"""Template text -> literal parts and variables, once, at load."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["KINDS", "Kind", "Template", "TemplateSyntaxError", "Variable", "is_templated", "parse"]

Kind = Literal["uri_captures", "headers", "query_params"]
KINDS: tuple[Kind, ...] = get_args(Kind)
"""The variable kinds Kong's AI plugins substitute."""

_OPEN = "$("
_VARIABLE = re.compile(r"\$\(([^()]*)\)")
# Capture names are identifiers (aigw.routing), header names RFC 9110 tokens,
# query parameter names anything printable but the template's own syntax.
_NAMES: dict[str, re.Pattern[str]] = {
    "uri_captures": re.compile(r"[A-Za-z_][A-Za-z0-9_]*"),
    "headers": re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"),
    "query_params": re.compile(r"[A-Za-z0-9._~-]+"),
}


class TemplateSyntaxError(ValueError):
    """A ``$(...)`` that is not ``$(kind.name)`` with a known kind; the message says why."""


@dataclass(frozen=True, slots=True)
class Variable:
    """One ``$(kind.name)``.

    Attributes:
        kind: ``uri_captures``, ``headers`` or ``query_params``.
        name: The capture, header (lower-cased: header names are case-insensitive)
            or query parameter name.
    """

    kind: Kind
    name: str

    def __str__(self) -> str:
        return f"$({self.kind}.{self.name})"

    @property
    def param(self) -> str:
        """How an error response names it in ``param``: ``headers.x-deployment``."""
        return f"{self.kind}.{self.name}"


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal strings and variables, in order.

    Attributes:
        parts: Never two literals in a row, never an empty literal.
    """

    parts: tuple[str | Variable, ...]

    @property
    def variables(self) -> tuple[Variable, ...]:
        """The variables, in order of appearance (repeats kept)."""
        return tuple(part for part in self.parts if isinstance(part, Variable))

    def render(self, values: dict[Variable, str]) -> str:
        """The text with each variable replaced by its value in *values*."""
        return "".join(part if isinstance(part, str) else values[part] for part in self.parts)


def is_templated(text: str | None) -> bool:
    """True if *text* holds a ``$(``, i.e. must be read as a template."""
    return text is not None and _OPEN in text


def parse(text: str) -> Template:
    """Parses *text*; a text without ``$(`` is one literal.

    Raises:
        TemplateSyntaxError: An unterminated ``$(``, or a variable that is not
            ``$(kind.name)`` with a known kind and a well-formed name.
    """
    parts: list[str | Variable] = []
    at = 0
    for match in _VARIABLE.finditer(text):
        literal = text[at : match.start()]
        if _OPEN in literal:
            raise TemplateSyntaxError(f"unterminated `$(` in {literal[literal.index(_OPEN) :]!r}")
        if literal:
            parts.append(literal)
        parts.append(_variable(match.group(1)))
        at = match.end()
    rest = text[at:]
    if _OPEN in rest:
        raise TemplateSyntaxError(
            "unterminated `$(`: a variable is `$(uri_captures.NAME)`, `$(headers.NAME)` "
            "or `$(query_params.NAME)`"
        )
    if rest:
        parts.append(rest)
    return Template(tuple(parts))


def _variable(inner: str) -> Variable:
    kind, dot, name = inner.partition(".")
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = (
            f"did you mean `{close[0]}`?"
            if close
            else "expected `uri_captures`, `headers` or `query_params`"
        )
        raise TemplateSyntaxError(
            f"unknown template variable kind `{kind}` in `$({inner})`; {hint}"
        )
    if not dot or not name:
        raise TemplateSyntaxError(f"`$({inner})` names no {kind} field; write `$({kind}.NAME)`")
    if _NAMES[kind].fullmatch(name) is None:
        raise TemplateSyntaxError(f"`$({inner})`: {name!r} is not a valid {kind} name")
    typed = KINDS[KINDS.index(kind)]
    return Variable(typed, name.lower() if typed == "headers" else name)
