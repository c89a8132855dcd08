"""An immutable segment trie mapping (method, normalised path) to a value.

Build a `RouterBuilder`, `add` every route (a failed `add` changes nothing, so a caller can
reject one file and go on), then `build` a `Router`. The router is never mutated, so one
instance can serve any number of concurrent requests and be replaced by a single assignment.

Exception tree::

    ValueError
    ├── RouteConflict    two routes claim the same method and path, or name a parameter
    │                    position differently; the message names both sources
    └── aigw.routing.paths.TemplateError    a template failed to parse (prefixed with source)

Precedence is by specificity, never by insertion or file order: at each position a static
segment beats ``{param}``, which beats ``*``, and the lookup backtracks when a more specific
branch dead-ends deeper. A route whose path matches but whose methods do not is skipped, so
``GET /a/b`` with routes ``POST /a/b`` and ``GET /a/{x}`` reaches ``/a/{x}``; `MethodNotAllowed`
is returned only when no route accepts both method and path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar

from aigw.routing.paths import (
    ParamSegment,
    Segment,
    StaticSegment,
    TemplateError,
    format_template,
    parse_template,
)

__all__ = [
    "Match",
    "MethodNotAllowed",
    "RouteConflict",
    "RouteEntry",
    "Router",
    "RouterBuilder",
]

T = TypeVar("T")

_EMPTY_PARAMS: Final[Mapping[str, str]] = MappingProxyType({})
# PERF: trie maps are plain dicts typed as read-only Mapping and never handed out: a
# MappingProxyType.get costs about twice a dict.get, once per path segment on the hot path.
_NO_CHILDREN: Final[Mapping[str, Any]] = {}
_METHOD_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token


class RouteConflict(ValueError):
    """A route cannot be added because another route already claims its place.

    The message starts with the new route's source and names the earlier one, e.g.
    ``conf.d/b.yaml: POST /openai/deployments/gpt-4o/chat/completions is already claimed by
    conf.d/a.yaml``.
    """


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    """A successful lookup.

    Attributes:
        value: The value given to `RouterBuilder.add`.
        params: Captured segments by parameter name; a wildcard's capture is under ``"*"``,
            the rest of the path without its leading slash (``""`` when it matched nothing).
            Values are in canonical form (see `aigw.routing.paths`), so they may hold
            upper-case ``%XX`` escapes.
        template: The route's template in canonical trie syntax (a Kong regex is shown
            translated).
    """

    value: T
    params: Mapping[str, str]
    template: str


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    """The path matched at least one route, but no route accepts the method (answer 405).

    Attributes:
        allowed: Every method some route would have accepted for this path (the ``Allow``
            header).
    """

    allowed: frozenset[str]


@dataclass(frozen=True, slots=True)
class RouteEntry(Generic[T]):
    """One route as added, for listing (``aigw check``).

    Attributes:
        template: Canonical trie syntax.
        methods: The methods, or None for any method.
        source: The label given to `RouterBuilder.add`.
        value: The value given to `RouterBuilder.add`.
    """

    template: str
    methods: frozenset[str] | None
    source: str
    value: T


# Slot setters for building a Match without its generated __init__ (see _pick).
_new_object: Final = object.__new__
_set_value: Final[Callable[[object, object], None]] = Match.__dict__["value"].__set__
_set_params: Final[Callable[[object, object], None]] = Match.__dict__["params"].__set__
_set_template: Final[Callable[[object, object], None]] = Match.__dict__["template"].__set__

# --------------------------------------------------------------------------- frozen trie


@dataclass(frozen=True, slots=True)
class _Route(Generic[T]):
    value: T
    template: str
    param_names: tuple[str, ...]  # in path order; "*" last for a wildcard route
    # PERF: a route without captures always produces the same Match; build it once.
    prebuilt: Match[T] | None


@dataclass(frozen=True, slots=True)
class _Endpoint(Generic[T]):
    """The routes that end at one trie position, by method."""

    by_method: Mapping[str, _Route[T]]
    any_method: _Route[T] | None
    allowed: frozenset[str]


@dataclass(frozen=True, slots=True)
class _StaticEndpoint(Generic[T]):
    """A route position with no captures, keyed by the whole path (the fast path)."""

    by_method: Mapping[str, Match[T]]
    any_method: Match[T] | None
    not_allowed: MethodNotAllowed


@dataclass(frozen=True, slots=True)
class _Node(Generic[T]):
    static: Mapping[str, _Node[T]]  # segment text -> child: one dict lookup per segment
    param: _Node[T] | None  # at most one {name} child, so the name never needs choosing
    wildcard: _Endpoint[T] | None  # "*" is always last, so it leads straight to routes
    endpoint: _Endpoint[T] | None  # routes whose template ends here


class Router(Generic[T]):
    """An immutable route table; create it with `RouterBuilder.build`.

    Safe to share between concurrent requests: nothing is mutated after construction, and
    assigning an attribute raises `AttributeError`.
    """

    __slots__ = ("_entries", "_root", "_static")

    _entries: tuple[RouteEntry[T], ...]
    _root: _Node[T] | None
    _static: Mapping[str, _StaticEndpoint[T]]

    def __init__(
        self,
        *,
        entries: tuple[RouteEntry[T], ...],
        root: _Node[T] | None,
        static: Mapping[str, _StaticEndpoint[T]],
    ) -> None:
        object.__setattr__(self, "_entries", entries)
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_static", static)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Router is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Router is immutable; cannot delete {name!r}")

    def __len__(self) -> int:
        """The number of routes added."""
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Router with {len(self._entries)} routes>"

    def routes(self) -> tuple[RouteEntry[T], ...]:
        """Every route, sorted by template, then any-method first, then by methods."""
        return self._entries

    def match(self, method: str, path: str) -> Match[T] | MethodNotAllowed | None:
        """Find the route for a request.

        Args:
            method: The request method, compared exactly (``"POST"``).
            path: A path as returned by `aigw.routing.paths.normalize_request_path`. Other
                spellings are not normalised here and simply fail to match.

        Returns:
            The most specific route accepting *method* and *path*; otherwise
            `MethodNotAllowed` if some route matches the path; otherwise None.
        """
        # PERF: a path naming a capture-free route is one dict lookup on the whole string, no
        # split. It is also the first candidate the backtracking walk would reach (static at
        # every position), so returning it here cannot change precedence.
        endpoint = self._static.get(path)
        if endpoint is not None:
            found = endpoint.by_method.get(method)
            if found is None:
                found = endpoint.any_method
            if found is not None:
                return found
            if self._root is None:
                return endpoint.not_allowed
        if self._root is None:
            return None
        segments = path.split("/")
        if len(segments) == 1 or segments[0]:
            return None  # not a normalised path (no leading "/"): nothing can match
        return _search(self._root, method, segments)


def _search(root: _Node[T], method: str, segments: list[str]) -> Match[T] | MethodNotAllowed | None:
    """Depth-first walk: static, then param, then wildcard at each position, backtracking.

    *segments* is the path split at "/"; ``segments[0]`` is the empty text before the first
    slash, so the walk starts at depth 1.
    """
    n = len(segments)
    values: list[str] = []  # captures on the current branch, in path order
    misses: list[frozenset[str]] = []  # methods of endpoints whose path matched, for 405
    # Frames to resume: (node, depth, next alternative: 1 = param / 2 = wildcard, len(values)).
    # PERF: pushed only at nodes that have an alternative, so a purely static descent
    # allocates nothing but the split.
    stack: list[tuple[_Node[T], int, int, int]] = []
    node, depth, stage, kept = root, 1, 0, 0  # segments[0] is the "" before the first "/"
    while True:
        if stage == 0:
            while True:
                if node.param is not None or node.wildcard is not None:
                    stack.append((node, depth, 1, kept))
                if depth == n:
                    found = _pick(node.endpoint, method, values, misses)
                    if found is not None:
                        return found
                    break
                child = node.static.get(segments[depth])
                if child is None:
                    break
                node = child
                depth += 1
        elif stage == 1:
            if node.wildcard is not None:
                stack.append((node, depth, 2, kept))
            # A parameter never captures the empty last segment of a trailing slash.
            if node.param is not None and depth < n and segments[depth]:
                values.append(segments[depth])
                node, depth, stage, kept = node.param, depth + 1, 0, kept + 1
                continue
        elif node.wildcard is not None:
            values.append("/".join(segments[depth:]))
            found = _pick(node.wildcard, method, values, misses)
            if found is not None:
                return found
        if not stack:
            break
        node, depth, stage, kept = stack.pop()
        del values[kept:]
    return MethodNotAllowed(frozenset().union(*misses)) if misses else None


def _pick(
    endpoint: _Endpoint[T] | None, method: str, values: list[str], misses: list[frozenset[str]]
) -> Match[T] | None:
    """The match for *method* at *endpoint*, or None after noting its methods in *misses*."""
    if endpoint is None:
        return None
    route = endpoint.by_method.get(method)
    if route is None:
        route = endpoint.any_method
        if route is None:
            misses.append(endpoint.allowed)
            return None
    if route.prebuilt is not None:
        return route.prebuilt
    names = route.param_names
    # PERF: a dict display is ~5x faster than dict(zip(...)), and one capture is the usual case.
    params = {names[0]: values[0]} if len(names) == 1 else dict(zip(names, values, strict=True))
    # PERF: a frozen dataclass's __init__ stores each field through object.__setattr__; storing
    # the slots directly halves the cost of the one object every dynamic match allocates.
    # test_routing checks the result equals Match(value, params, template).
    found: Match[T] = _new_object(Match)
    _set_value(found, route.value)
    _set_params(found, params)
    _set_template(found, route.template)
    return found


# --------------------------------------------------------------------------- builder


class _BuildEndpoint(Generic[T]):
    __slots__ = ("any_method", "by_method", "param_names")

    def __init__(self, param_names: tuple[str, ...]) -> None:
        self.by_method: dict[str, RouteEntry[T]] = {}
        self.any_method: RouteEntry[T] | None = None
        self.param_names = param_names


class _BuildNode(Generic[T]):
    __slots__ = ("endpoint", "param", "param_owner", "static", "wildcard")

    def __init__(self) -> None:
        self.static: dict[str, _BuildNode[T]] = {}
        self.param: _BuildNode[T] | None = None
        self.param_owner: tuple[str, str, str] = ("", "", "")  # name, template, source
        self.wildcard: _BuildEndpoint[T] | None = None
        self.endpoint: _BuildEndpoint[T] | None = None


class RouterBuilder(Generic[T]):
    """Collects routes and checks conflicts; `build` produces an immutable `Router`.

    Not thread-safe, and meant to be used by one config load. The builder stays usable after
    `build`; later additions do not affect routers already built.
    """

    __slots__ = ("_dynamic", "_entries", "_root", "_static")

    def __init__(self) -> None:
        self._root: _BuildNode[T] = _BuildNode()
        self._dynamic = False  # some route has a {param} or *
        self._entries: list[RouteEntry[T]] = []
        # Capture-free endpoints by canonical path, for the router's whole-path fast path.
        self._static: dict[str, _BuildEndpoint[T]] = {}

    def __len__(self) -> int:
        """The number of routes added so far."""
        return len(self._entries)

    def add(self, template: str, methods: frozenset[str] | None, value: T, source: str) -> None:
        """Add one route; on any error the builder is left exactly as it was.

        Args:
            template: The route path, in trie syntax or as a Kong regex; see
                `aigw.routing.paths.parse_template`.
            methods: The methods the route accepts, compared exactly; None for any method.
            value: What `Router.match` returns for this route.
            source: A label for error messages and `Router.routes`, e.g.
                ``conf.d/gpt-4o.yaml``.

        Raises:
            TemplateError: The template does not parse; the message starts with *source*.
            RouteConflict: Another route has the same canonical template and an overlapping
                method (an any-method route overlaps every method), or names the parameter
                at the same position differently (``/x/{a}`` and ``/x/{b}/y``).
            ValueError: *methods* is empty or holds something that is not an HTTP token.
        """
        try:
            segments = parse_template(template)
        except TemplateError as exc:
            raise TemplateError(f"{source}: {exc}") from exc
        if methods is not None:
            if not methods:
                raise ValueError(f"{source}: methods must be None (any method) or non-empty")
            for method in methods:
                if not isinstance(method, str) or _METHOD_TOKEN.fullmatch(method) is None:
                    raise ValueError(f"{source}: {method!r} is not an HTTP method token")
        canonical = format_template(segments)
        entry = RouteEntry(canonical, methods, source, value)
        # Check everything before touching the trie: no rollback is ever needed.
        existing = self._existing_endpoint(segments, entry)
        if existing is not None:
            _check_methods(existing, entry)
        endpoint = self._create_endpoint(segments, entry)
        if methods is None:
            endpoint.any_method = entry
        else:
            for method in methods:
                endpoint.by_method[method] = entry
        self._entries.append(entry)
        if not all(isinstance(segment, StaticSegment) for segment in segments):
            self._dynamic = True

    def _existing_endpoint(
        self, segments: tuple[Segment, ...], entry: RouteEntry[T]
    ) -> _BuildEndpoint[T] | None:
        """Walk without creating nodes; raise on a parameter-name clash."""
        node: _BuildNode[T] | None = self._root
        for index, segment in enumerate(segments):
            if node is None:
                return None
            if isinstance(segment, StaticSegment):
                node = node.static.get(segment.text)
            elif isinstance(segment, ParamSegment):
                name, template, source = node.param_owner
                if node.param is not None and name != segment.name:
                    raise RouteConflict(
                        f"{entry.source}: {entry.template} names segment {index + 1}"
                        f" {{{segment.name}}} but {template} from {source} names it {{{name}}};"
                        " parameters at the same position must have the same name"
                    )
                node = node.param
            else:
                return node.wildcard
        return None if node is None else node.endpoint

    def _create_endpoint(
        self, segments: tuple[Segment, ...], entry: RouteEntry[T]
    ) -> _BuildEndpoint[T]:
        node = self._root
        names: list[str] = []
        for segment in segments:
            if isinstance(segment, StaticSegment):
                child = node.static.get(segment.text)
                if child is None:
                    child = node.static[segment.text] = _BuildNode()
                node = child
            elif isinstance(segment, ParamSegment):
                names.append(segment.name)
                if node.param is None:
                    node.param = _BuildNode()
                    node.param_owner = (segment.name, entry.template, entry.source)
                node = node.param
            else:
                names.append("*")
                if node.wildcard is None:
                    node.wildcard = _BuildEndpoint(tuple(names))
                return node.wildcard
        if node.endpoint is None:
            node.endpoint = _BuildEndpoint(tuple(names))
            if not names:
                self._static[entry.template] = node.endpoint
        return node.endpoint

    def build(self) -> Router[T]:
        """Freeze the routes added so far into a `Router`.

        Returns:
            A new router that shares no mutable state with this builder.
        """
        entries = tuple(sorted(self._entries, key=_entry_order))
        static = {path: _freeze_static(endpoint) for path, endpoint in self._static.items()}
        # Without any capture the whole-path map answers every lookup; skip the trie.
        root = _freeze(self._root) if self._dynamic else None
        return Router(entries=entries, root=root, static=static)


def _check_methods(endpoint: _BuildEndpoint[T], entry: RouteEntry[T]) -> None:
    """Raise `RouteConflict` if *entry* claims a method *endpoint* already routes."""
    clash: tuple[str, RouteEntry[T]] | None = None
    if entry.methods is None:
        if endpoint.any_method is not None:
            clash = ("ANY", endpoint.any_method)
        elif endpoint.by_method:
            first = min(endpoint.by_method)
            clash = (first, endpoint.by_method[first])
    elif endpoint.any_method is not None:
        clash = (min(entry.methods), endpoint.any_method)
    else:
        common = endpoint.by_method.keys() & entry.methods
        if common:
            first = min(common)
            clash = (first, endpoint.by_method[first])
    if clash is not None:
        method, other = clash
        raise RouteConflict(
            f"{entry.source}: {method} {entry.template} is already claimed by {other.source}"
        )


def _entry_order(entry: RouteEntry[T]) -> tuple[str, bool, tuple[str, ...]]:
    return (entry.template, entry.methods is not None, tuple(sorted(entry.methods or ())))


def _freeze(root: _BuildNode[T]) -> _Node[T]:
    """Copy the builder trie bottom-up into frozen nodes (iterative: templates may be deep)."""
    order: list[_BuildNode[T]] = []
    pending = [root]
    while pending:
        node = pending.pop()
        order.append(node)
        pending.extend(node.static.values())
        if node.param is not None:
            pending.append(node.param)
    frozen: dict[int, _Node[T]] = {}
    # Parents precede their children in `order`, so reversed it yields children first.
    for node in reversed(order):
        static: Mapping[str, _Node[T]] = _NO_CHILDREN
        if node.static:
            static = {text: frozen[id(child)] for text, child in node.static.items()}
        frozen[id(node)] = _Node(
            static=static,
            param=None if node.param is None else frozen[id(node.param)],
            wildcard=_freeze_endpoint(node.wildcard),
            endpoint=_freeze_endpoint(node.endpoint),
        )
    return frozen[id(root)]


def _freeze_endpoint(endpoint: _BuildEndpoint[T] | None) -> _Endpoint[T] | None:
    if endpoint is None:
        return None
    names = endpoint.param_names

    def route(entry: RouteEntry[T]) -> _Route[T]:
        prebuilt = None if names else Match(entry.value, _EMPTY_PARAMS, entry.template)
        return _Route(entry.value, entry.template, names, prebuilt)

    routes: dict[int, _Route[T]] = {}  # one _Route per entry, even when it has many methods
    by_method: dict[str, _Route[T]] = {}
    for method, entry in endpoint.by_method.items():
        by_method[method] = routes.setdefault(id(entry), route(entry))
    return _Endpoint(
        by_method=by_method,
        any_method=None if endpoint.any_method is None else route(endpoint.any_method),
        allowed=frozenset(by_method),
    )


def _freeze_static(endpoint: _BuildEndpoint[T]) -> _StaticEndpoint[T]:
    matches: dict[int, Match[T]] = {}
    by_method: dict[str, Match[T]] = {}
    for method, entry in endpoint.by_method.items():
        if id(entry) not in matches:
            matches[id(entry)] = Match(entry.value, _EMPTY_PARAMS, entry.template)
        by_method[method] = matches[id(entry)]
    any_method = endpoint.any_method
    return _StaticEndpoint(
        by_method=by_method,
        any_method=None
        if any_method is None
        else Match(any_method.value, _EMPTY_PARAMS, any_method.template),
        not_allowed=MethodNotAllowed(frozenset(by_method)),
    )
