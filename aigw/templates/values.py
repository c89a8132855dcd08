"""What a substituted value may be: checked per request, on the decoded value.

A value lands in the upstream URL (host label, path segment, query) or in logs
and metric labels, so it is restricted to what an Azure resource or deployment
name may contain. The router hands captures over in canonical form, in which
every octet outside the unreserved set stays ``%XX``; aiohttp decodes headers
and query values. Either way ``%``, ``/``, ``?``, ``#``, ``@``, ``:``, CR/LF
and spaces are outside the set below and so refused, whatever their spelling.
"""

from __future__ import annotations

import re

__all__ = ["DNS_LABEL_FIELDS", "MAX_VALUE", "value_problem"]

MAX_VALUE = 64
"""Longest value substituted anywhere (Azure deployment names are at most 64)."""

DNS_LABEL_FIELDS = frozenset({"azure_instance"})
"""Fields whose value becomes a host label: no dots, at most 63 characters."""

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def value_problem(value: str, field: str) -> str | None:
    """Why *value* may not be substituted into *field*, or None if it may."""
    if field in DNS_LABEL_FIELDS:
        if _LABEL.fullmatch(value) is None:
            return (
                "must be a DNS label: 1-63 letters, digits or `-`, not starting or ending with `-`"
            )
        return None
    if _NAME.fullmatch(value) is None:
        return f"must be 1-{MAX_VALUE} letters, digits, `.`, `_` or `-`"
    if value in (".", ".."):
        return "must not be `.` or `..`"
    return None
