"""Which ``uri_captures`` a route's paths provide (check time only)."""

from __future__ import annotations

from aigw.routing import ParamSegment, TemplateError, parse_template

__all__ = ["path_captures"]


def path_captures(paths: tuple[str, ...]) -> frozenset[str] | None:
    """The capture names every one of *paths* provides.

    Returns None if a path does not parse: the router reports that path, and
    checking captures against it would only add noise.
    """
    common: frozenset[str] | None = None
    for path in paths:
        try:
            segments = parse_template(path)
        except TemplateError:
            return None
        names = frozenset(s.name for s in segments if isinstance(s, ParamSegment))
        common = names if common is None else common & names
    return common if common is not None else frozenset()
