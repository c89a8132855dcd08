"""Kong's template variables in ``model.name`` and ``model.options``.

``$(uri_captures.NAME)``, ``$(headers.NAME)`` and ``$(query_params.NAME)`` are
parsed once at load (`parse`), checked against the route's paths at check time
(`captures`), and folded into one resolver per route (`resolve`), a chain stage
that puts each request's resolved target on the exchange. Every substituted
value is checked against a strict character set (`values`), so a client never
steers the upstream host, path or query.

This package's top level is what config checking needs and imports nothing of
the request path; the chain stage is `aigw.templates.resolve`.
"""

from aigw.templates.captures import path_captures
from aigw.templates.parse import (
    KINDS,
    Template,
    TemplateSyntaxError,
    Variable,
    is_templated,
    parse,
)
from aigw.templates.values import value_problem

__all__ = [
    "KINDS",
    "Template",
    "TemplateSyntaxError",
    "Variable",
    "is_templated",
    "parse",
    "path_captures",
    "value_problem",
]
