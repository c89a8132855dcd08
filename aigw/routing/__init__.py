"""Route matching: request-path normalisation, route templates and an immutable trie.

Pure Python, no aiohttp import. Typical use::

    builder: RouterBuilder[Route] = RouterBuilder()
    builder.add("/openai/deployments/{deployment}/chat/completions", frozenset({"POST"}),
                route, "conf.d/azure.yaml")
    router = builder.build()
    found = router.match(request.method, normalize_request_path(raw_path))
"""

from aigw.routing.paths import (
    MAX_PATH_LENGTH,
    WILDCARD,
    InvalidPath,
    ParamSegment,
    Segment,
    StaticSegment,
    TemplateError,
    WildcardSegment,
    format_template,
    normalize_request_path,
    parse_template,
)
from aigw.routing.trie import (
    Match,
    MethodNotAllowed,
    RouteConflict,
    RouteEntry,
    Router,
    RouterBuilder,
)

__all__ = [
    "MAX_PATH_LENGTH",
    "WILDCARD",
    "InvalidPath",
    "Match",
    "MethodNotAllowed",
    "ParamSegment",
    "RouteConflict",
    "RouteEntry",
    "Router",
    "RouterBuilder",
    "Segment",
    "StaticSegment",
    "TemplateError",
    "WildcardSegment",
    "format_template",
    "normalize_request_path",
    "parse_template",
]
