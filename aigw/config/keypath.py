"""Key paths such as ``plugins[0].config.targets[0].auth.header_value``.

The YAML reader, the interpolator and the schema must spell a path identically: the reader's
position map and the interpolator's source map are looked up by these strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["ROOT", "child", "is_under", "item", "join"]

ROOT = ""
"""The path of the document itself."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def child(parent: str, key: str) -> str:
    """Return the path of mapping entry *key* under *parent*.

    Keys that are not plain identifiers are written as ``["a key"]`` so a path stays unambiguous.
    """
    if _BARE_KEY.match(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key)}]"


def item(parent: str, index: int) -> str:
    """Return the path of sequence element *index* under *parent*."""
    return f"{parent}[{index}]"


def join(segments: Iterable[str | int]) -> str:
    """Build a path from mapping keys (``str``) and sequence indexes (``int``)."""
    path = ROOT
    for segment in segments:
        path = item(path, segment) if isinstance(segment, int) else child(path, segment)
    return path


def is_under(path: str, prefix: str) -> bool:
    """Tell whether *path* is *prefix* itself or lies inside it."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or not prefix or path[len(prefix)] in ".["
