"""The route trie (`aigw.routing.trie`): conflicts, precedence, 405s and immutability."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from aigw.routing import (
    InvalidPath,
    Match,
    MethodNotAllowed,
    RouteConflict,
    RouteEntry,
    Router,
    RouterBuilder,
    TemplateError,
    normalize_request_path,
)
from aigw.routing.trie import _Endpoint, _pick, _Route

POST = frozenset({"POST"})
GET = frozenset({"GET"})
ANY = None

# (template, methods, source); the value of each route is its index in the list.
RouteSpec = tuple[str, frozenset[str] | None, str]


def build(routes: Iterable[RouteSpec]) -> Router[int]:
    builder: RouterBuilder[int] = RouterBuilder()
    for index, (template, methods, source) in enumerate(routes):
        builder.add(template, methods, index, source)
    return builder.build()


def found(result: Match[int] | MethodNotAllowed | None) -> tuple[str, dict[str, str]] | None:
    """The (template, params) of a match, for compact table assertions."""
    assert result is None or isinstance(result, Match), result
    return None if result is None else (result.template, dict(result.params))


# --------------------------------------------------------------------------- conflicts


@pytest.mark.parametrize(
    ("existing", "new", "message"),
    [
        # same template, overlapping methods
        (
            [("/openai/deployments/gpt-4o/chat/completions", POST, "conf.d/a.yaml")],
            ("/openai/deployments/gpt-4o/chat/completions", POST, "conf.d/b.yaml"),
            "conf.d/b.yaml: POST /openai/deployments/gpt-4o/chat/completions"
            " is already claimed by conf.d/a.yaml",
        ),
        (
            [("/x", frozenset({"GET", "POST"}), "a.yaml")],
            ("/x", frozenset({"PUT", "POST", "PATCH"}), "b.yaml"),
            "b.yaml: POST /x is already claimed by a.yaml",
        ),
        # any-method overlaps every method, in both directions
        (
            [("/x", ANY, "a.yaml")],
            ("/x", POST, "b.yaml"),
            "b.yaml: POST /x is already claimed by a.yaml",
        ),
        (
            [("/x", frozenset({"PUT", "DELETE"}), "a.yaml")],
            ("/x", ANY, "b.yaml"),
            "b.yaml: DELETE /x is already claimed by a.yaml",
        ),
        (
            [("/x", ANY, "a.yaml")],
            ("/x", ANY, "b.yaml"),
            "b.yaml: ANY /x is already claimed by a.yaml",
        ),
        # the same route spelled differently is the same template
        (
            [("/openai/deployments/{deployment}/chat/completions", POST, "a.yaml")],
            ("~/openai/deployments/(?<deployment>[^/]+)/chat/completions$", POST, "kong.yaml"),
            "kong.yaml: POST /openai/deployments/{deployment}/chat/completions"
            " is already claimed by a.yaml",
        ),
        (
            [("/a/*", GET, "a.yaml")],
            ("/a/*", GET, "b.yaml"),
            "b.yaml: GET /a/* is already claimed by a.yaml",
        ),
        (
            [("/", GET, "a.yaml")],
            ("/", ANY, "b.yaml"),
            "b.yaml: GET / is already claimed by a.yaml",
        ),
        # different parameter names at the same position (Falcon's rule)
        (
            [("/x/{a}", GET, "a.yaml")],
            ("/x/{b}/y", GET, "b.yaml"),
            "b.yaml: /x/{b}/y names segment 2 {b} but /x/{a} from a.yaml names it {a};"
            " parameters at the same position must have the same name",
        ),
        (
            [("/x/{a}/y", GET, "a.yaml"), ("/x/{a}/z", GET, "c.yaml")],
            ("/x/{b}", POST, "b.yaml"),
            "b.yaml: /x/{b} names segment 2 {b} but /x/{a}/y from a.yaml names it {a}",
        ),
        (
            [("/openai/deployments/{deployment}/chat/completions", POST, "a.yaml")],
            ("~/openai/deployments/(?<azure_deployment>[^/]+)/embeddings$", POST, "kong.yaml"),
            "kong.yaml: /openai/deployments/{azure_deployment}/embeddings names segment 3"
            " {azure_deployment} but /openai/deployments/{deployment}/chat/completions from"
            " a.yaml names it {deployment}",
        ),
    ],
)
def test_conflicts_name_both_sources(
    existing: list[RouteSpec], new: RouteSpec, message: str
) -> None:
    builder: RouterBuilder[int] = RouterBuilder()
    for index, (template, methods, source) in enumerate(existing):
        builder.add(template, methods, index, source)
    with pytest.raises(RouteConflict) as caught:
        builder.add(*new[:2], 99, new[2])
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("/x", GET), ("/x", POST)),  # disjoint methods share a path
        (("/x", GET), ("/x/", GET)),  # a trailing slash is a different path
        (("/x/{a}", GET), ("/x/y", GET)),  # static beside param
        (("/x/{a}", GET), ("/x/*", GET)),  # param beside wildcard
        (("/x", GET), ("/x/*", GET)),  # the wildcard's zero-segment match ranks below
        (("/x/{a}/y", GET), ("/x/{a}/z", GET)),  # same name at the same position
        (("/{a}", GET), ("/{a}/{b}", GET)),
    ],
)
def test_non_conflicts(
    first: tuple[str, frozenset[str] | None], second: tuple[str, frozenset[str] | None]
) -> None:
    router = build([(*first, "a.yaml"), (*second, "b.yaml")])
    assert len(router) == 2


def test_template_errors_name_the_source() -> None:
    builder: RouterBuilder[int] = RouterBuilder()
    with pytest.raises(TemplateError, match=r"^conf.d/x.yaml: template '/a//b': "):
        builder.add("/a//b", GET, 0, "conf.d/x.yaml")


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        (frozenset(), "methods must be None (any method) or non-empty"),
        (frozenset({""}), "'' is not an HTTP method token"),
        (frozenset({"GET POST"}), "'GET POST' is not an HTTP method token"),
    ],
)
def test_bad_methods(methods: frozenset[str], message: str) -> None:
    builder: RouterBuilder[int] = RouterBuilder()
    with pytest.raises(ValueError, match=r"^a.yaml: ") as caught:
        builder.add("/x", methods, 0, "a.yaml")
    assert message in str(caught.value)
    assert len(builder) == 0


@pytest.mark.parametrize(
    ("rejected", "message"),
    [
        (("/x/{b}/deeper/still", GET), "names segment 2 {b}"),  # fails halfway down new nodes
        (("/x/{a}", GET), "GET /x/{a} is already claimed"),
        (("/x/{a}/new/*", frozenset({"GET", "GET POST"})), "not an HTTP method token"),
        (("/x/{a}/new/{", GET), "malformed parameter"),
    ],
)
def test_failed_add_leaves_the_builder_unchanged(
    rejected: tuple[str, frozenset[str] | None], message: str
) -> None:
    builder: RouterBuilder[int] = RouterBuilder()
    builder.add("/x/{a}", GET, 0, "a.yaml")
    before = builder.build()
    with pytest.raises(ValueError) as caught:
        builder.add(*rejected, 1, "b.yaml")
    assert message in str(caught.value)
    after = builder.build()
    assert after.routes() == before.routes()
    for path in ("/x/1", "/x/1/deeper/still", "/x/1/new/a", "/x/1/new"):
        assert found(after.match("GET", path)) == found(before.match("GET", path))
    # The position the rejected route touched is still free for a well-formed route.
    builder.add("/x/{a}/deeper/still", GET, 2, "c.yaml")
    builder.add("/x/{a}/new/*", ANY, 3, "c.yaml")
    assert found(builder.build().match("GET", "/x/1/new/a/b")) == (
        "/x/{a}/new/*",
        {"a": "1", "*": "a/b"},
    )


# --------------------------------------------------------------------------- matching

TABLE: list[RouteSpec] = [
    ("/", GET, "root.yaml"),
    ("/openai/deployments/gpt-4o/chat/completions", POST, "gpt-4o.yaml"),
    ("/openai/deployments/gpt-4o/embeddings", POST, "gpt-4o.yaml"),
    ("/openai/deployments/{deployment}/chat/completions", POST, "azure.yaml"),
    ("/openai/deployments/{deployment}/embeddings", POST, "azure.yaml"),
    ("/openai/deployments/{deployment}/chat/completions/", ANY, "slash.yaml"),
    ("/openai/deployments/{deployment}/extensions/*", POST, "ext.yaml"),
    ("/openai/files", frozenset({"GET", "POST"}), "files.yaml"),
    ("/openai/files/{file_id}", frozenset({"GET", "DELETE"}), "files.yaml"),
    ("/openai/files/{file_id}/content", GET, "files.yaml"),
    ("/openai/v1/*", ANY, "v1.yaml"),
    ("/openai/v1/models", GET, "v1.yaml"),
    ("/openai/v1/{kind}/special", GET, "v1.yaml"),
    ("/health", ANY, "health.yaml"),
    # precedence and backtracking fixtures
    ("/p/a/b/c", GET, "p.yaml"),
    ("/p/{x}/b/d", GET, "p.yaml"),
    ("/p/{x}/{y}/e", GET, "p.yaml"),
    ("/p/*", GET, "p.yaml"),
    ("/m/{x}", GET, "m.yaml"),
    ("/m/static", POST, "m.yaml"),
    ("/m/{x}/*", frozenset({"PUT"}), "m.yaml"),
    ("/w/*", POST, "w.yaml"),
    ("/w/", GET, "w.yaml"),
]


@pytest.fixture(scope="module")
def router() -> Router[int]:
    return build(TABLE)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/", ("/", {})),
        # static beats param, whichever file declared it
        (
            "POST",
            "/openai/deployments/gpt-4o/chat/completions",
            ("/openai/deployments/gpt-4o/chat/completions", {}),
        ),
        (
            "POST",
            "/openai/deployments/gpt-4o/embeddings",
            ("/openai/deployments/gpt-4o/embeddings", {}),
        ),
        (
            "POST",
            "/openai/deployments/gpt-4.1-mini/chat/completions",
            ("/openai/deployments/{deployment}/chat/completions", {"deployment": "gpt-4.1-mini"}),
        ),
        (
            "POST",
            "/openai/deployments/gpt-4ox/chat/completions",
            ("/openai/deployments/{deployment}/chat/completions", {"deployment": "gpt-4ox"}),
        ),
        # trailing slash is a distinct route; the static gpt-4o branch dead-ends there
        (
            "POST",
            "/openai/deployments/gpt-4o/chat/completions/",
            ("/openai/deployments/{deployment}/chat/completions/", {"deployment": "gpt-4o"}),
        ),
        (
            "PATCH",
            "/openai/deployments/x/chat/completions/",
            ("/openai/deployments/{deployment}/chat/completions/", {"deployment": "x"}),
        ),
        # escapes stay in captures
        (
            "POST",
            "/openai/deployments/my%20dep/embeddings",
            ("/openai/deployments/{deployment}/embeddings", {"deployment": "my%20dep"}),
        ),
        # wildcards: rest without the leading slash, zero segments allowed
        (
            "POST",
            "/openai/deployments/d/extensions/a/b/",
            ("/openai/deployments/{deployment}/extensions/*", {"deployment": "d", "*": "a/b/"}),
        ),
        (
            "POST",
            "/openai/deployments/d/extensions",
            ("/openai/deployments/{deployment}/extensions/*", {"deployment": "d", "*": ""}),
        ),
        (
            "POST",
            "/openai/deployments/d/extensions/",
            ("/openai/deployments/{deployment}/extensions/*", {"deployment": "d", "*": ""}),
        ),
        ("DELETE", "/openai/v1/responses/abc", ("/openai/v1/*", {"*": "responses/abc"})),
        ("GET", "/openai/v1/models", ("/openai/v1/models", {})),
        ("POST", "/openai/v1/models", ("/openai/v1/*", {"*": "models"})),  # method falls through
        ("GET", "/openai/v1/files/special", ("/openai/v1/{kind}/special", {"kind": "files"})),
        ("GET", "/openai/v1/files/special/x", ("/openai/v1/*", {"*": "files/special/x"})),
        ("GET", "/openai/v1", ("/openai/v1/*", {"*": ""})),
        ("GET", "/openai/files", ("/openai/files", {})),
        ("DELETE", "/openai/files/file-1", ("/openai/files/{file_id}", {"file_id": "file-1"})),
        (
            "GET",
            "/openai/files/file-1/content",
            ("/openai/files/{file_id}/content", {"file_id": "file-1"}),
        ),
        # any-method routes
        ("GET", "/health", ("/health", {})),
        ("BREW", "/health", ("/health", {})),
        # backtracking: static dead-ends deeper, param next, wildcard last
        ("GET", "/p/a/b/c", ("/p/a/b/c", {})),
        ("GET", "/p/a/b/d", ("/p/{x}/b/d", {"x": "a"})),
        ("GET", "/p/a/b/e", ("/p/{x}/{y}/e", {"x": "a", "y": "b"})),
        ("GET", "/p/a/q/e", ("/p/{x}/{y}/e", {"x": "a", "y": "q"})),
        ("GET", "/p/a/b/c/d", ("/p/*", {"*": "a/b/c/d"})),
        ("GET", "/p/a/b", ("/p/*", {"*": "a/b"})),
        ("GET", "/p", ("/p/*", {"*": ""})),
        ("GET", "/p/", ("/p/*", {"*": ""})),
        # a static route with the wrong method does not hide a param route with the right one
        ("GET", "/m/static", ("/m/{x}", {"x": "static"})),
        ("POST", "/m/static", ("/m/static", {})),
        ("PUT", "/m/static", ("/m/{x}/*", {"x": "static", "*": ""})),
        # a param never captures the empty segment of a trailing slash
        ("GET", "/m/", None),
        ("GET", "/w/", ("/w/", {})),
        ("POST", "/w/", ("/w/*", {"*": ""})),
        # misses
        ("GET", "/nope", None),
        ("GET", "/openai", None),
        ("GET", "/openai/deployments", None),
        ("POST", "/openai/deployments/d", None),
        ("POST", "/openai/deployments/d/chat", None),
        ("POST", "/openai/deployments/d/chat/completions/x", None),
        ("GET", "/openai/files/a/b", None),
        ("GET", "", None),  # not a normalised path: no route
        ("GET", "//", None),
    ],
)
def test_match(
    router: Router[int], method: str, path: str, expected: tuple[str, dict[str, str]] | None
) -> None:
    assert found(router.match(method, path)) == expected


def test_match_returns_the_added_value(router: Router[int]) -> None:
    result = router.match("POST", "/openai/deployments/x/embeddings")
    assert isinstance(result, Match)
    assert TABLE[result.value][0] == "/openai/deployments/{deployment}/embeddings"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/openai/deployments/gpt-4o/chat/completions", {"POST"}),
        ("PUT", "/openai/files", {"GET", "POST"}),
        ("POST", "/openai/files/f1", {"GET", "DELETE"}),
        ("POST", "/", {"GET"}),
        # union over every route whose path matches
        ("DELETE", "/m/static", {"GET", "POST", "PUT"}),  # PUT: /m/{x}/* with zero segments
        ("GET", "/m/x/y", {"PUT"}),
        ("GET", "/w/a", {"POST"}),
        ("PUT", "/w/", {"GET", "POST"}),
        ("POST", "/p/a/b/d", {"GET"}),
        ("GET", "/openai/deployments/d/extensions/x", {"POST"}),
    ],
)
def test_method_not_allowed_lists_every_method_for_the_path(
    router: Router[int], method: str, path: str, allowed: set[str]
) -> None:
    assert router.match(method, path) == MethodNotAllowed(frozenset(allowed))


@pytest.mark.parametrize(
    ("routes", "method", "path", "expected"),
    [
        # static-only tables answer from the whole-path map, including 405s
        ([("/a", GET, "s")], "GET", "/a", ("/a", {})),
        ([("/a", GET, "s")], "POST", "/a", MethodNotAllowed(frozenset({"GET"}))),
        ([("/a", GET, "s")], "GET", "/b", None),
        ([("/a", ANY, "s")], "PURGE", "/a", ("/a", {})),
        ([], "GET", "/", None),
        # one wildcard at the root takes everything, even "/"
        ([("/*", ANY, "s")], "GET", "/", ("/*", {"*": ""})),
        ([("/*", ANY, "s")], "GET", "/a/b/", ("/*", {"*": "a/b/"})),
        ([("/*", ANY, "s"), ("/", GET, "s")], "GET", "/", ("/", {})),
        # input that is not a normalised path matches nothing, not even "/*"
        ([("/*", ANY, "s")], "GET", "", None),
        ([("/*", ANY, "s")], "GET", "a/b", None),
        (
            [("/{a}/{b}/{c}", GET, "s")],
            "GET",
            "/1/2/3",
            ("/{a}/{b}/{c}", {"a": "1", "b": "2", "c": "3"}),
        ),
        ([("/{a}/{b}/{c}", GET, "s")], "GET", "/1/2", None),
    ],
)
def test_small_tables(
    routes: list[RouteSpec],
    method: str,
    path: str,
    expected: tuple[str, dict[str, str]] | MethodNotAllowed | None,
) -> None:
    result = build(routes).match(method, path)
    if isinstance(expected, MethodNotAllowed):
        assert result == expected
    else:
        assert found(result) == expected


def test_static_matches_are_shared_and_immutable(router: Router[int]) -> None:
    first = router.match("GET", "/health")
    second = router.match("POST", "/health")
    assert isinstance(first, Match)
    assert first is second  # prebuilt: a static hit allocates nothing
    with pytest.raises(TypeError):
        first.params["x"] = "y"  # type: ignore[index]
    with pytest.raises(AttributeError):
        first.value = 3  # type: ignore[misc]


def test_fast_match_construction_equals_the_dataclass() -> None:
    route = _Route(7, "/a/{b}/*", ("b", "*"), None)
    endpoint = _Endpoint(by_method={"GET": route}, any_method=None, allowed=GET)
    built = _pick(endpoint, "GET", ["x", "y/z"], [])
    assert built == Match(7, {"b": "x", "*": "y/z"}, "/a/{b}/*")
    assert repr(built) == repr(Match(7, {"b": "x", "*": "y/z"}, "/a/{b}/*"))


def test_routes_are_listed_sorted_with_their_sources() -> None:
    router = build(
        [
            ("/b", POST, "b.yaml"),
            ("/a/{x}", frozenset({"PUT", "GET"}), "a.yaml"),
            ("/a/{x}", frozenset({"DELETE"}), "a2.yaml"),
            ("/a", ANY, "a3.yaml"),
            ("~/k/(?<n>[^/]+)$", GET, "kong.yaml"),
        ]
    )
    assert len(router) == 5
    assert router.routes() == (
        RouteEntry("/a", None, "a3.yaml", 3),
        RouteEntry("/a/{x}", frozenset({"DELETE"}), "a2.yaml", 2),
        RouteEntry("/a/{x}", frozenset({"GET", "PUT"}), "a.yaml", 1),
        RouteEntry("/b", POST, "b.yaml", 0),
        RouteEntry("/k/{n}", GET, "kong.yaml", 4),
    )


def test_router_is_immutable_and_independent_of_its_builder() -> None:
    builder: RouterBuilder[int] = RouterBuilder()
    builder.add("/a/{x}", GET, 0, "a.yaml")
    router = builder.build()
    builder.add("/a/b", GET, 1, "b.yaml")
    builder.add("/c", GET, 2, "b.yaml")
    assert len(router) == 1
    assert found(router.match("GET", "/a/b")) == ("/a/{x}", {"x": "b"})
    assert router.match("GET", "/c") is None
    assert len(builder.build()) == 3
    with pytest.raises(AttributeError, match="immutable"):
        router._root = None
    with pytest.raises(AttributeError, match="immutable"):
        del router._static
    assert repr(router) == "<Router with 1 routes>"


def test_deep_templates_do_not_recurse() -> None:
    depth = 1_500  # above the default recursion limit, within MAX_PATH_LENGTH
    template = "/s" * depth + "/{p}"
    router = build([(template, GET, "deep.yaml"), ("/s/*", GET, "deep.yaml")])
    path = "/s" * depth + "/v"
    assert found(router.match("GET", path)) == (template, {"p": "v"})
    assert found(router.match("GET", path + "/x")) == ("/s/*", {"*": path[3:] + "/x"})


# --------------------------------------------------------------------------- spellings

SPELLING_ROUTES: list[RouteSpec] = [
    ("/openai/deployments/gpt-4o/chat/completions", POST, "gpt-4o.yaml"),
    ("/openai/deployments/{deployment}/chat/completions", POST, "azure.yaml"),
    ("/openai/deployments/{deployment}/embeddings", POST, "azure.yaml"),
    ("/openai/deployments/admin/chat/completions", POST, "admin.yaml"),
    ("/openai/v1/*", POST, "v1.yaml"),
    ("/openai/v1/private/", POST, "private.yaml"),
    ("/", POST, "root.yaml"),
]

CANONICAL_PATHS = [
    "/",
    "/openai/deployments/gpt-4o/chat/completions",
    "/openai/deployments/admin/chat/completions",
    "/openai/deployments/gpt-4.1-mini/chat/completions",
    "/openai/deployments/my~dep_1/embeddings",
    "/openai/deployments/a.b/embeddings/",
    "/openai/v1/private/",
    "/openai/v1/private",
    "/openai/v1/responses/x:1@y",
    "/openai/v1/",
    "/openai/deployments/gpt-4o/chat",
    "/other/..../x",
]


def _encode(char: str, rng: random.Random) -> str:
    escape = f"%{ord(char):02X}"
    return escape.lower() if rng.random() < 0.5 else escape


def _spell(canonical: str, rng: random.Random) -> tuple[str, bool]:
    """Another spelling of *canonical*; the flag says it must be rejected instead."""
    must_reject = False
    out: list[str] = []
    segments = canonical[1:].split("/")
    for index, segment in enumerate(segments):
        # Noise before a segment never changes the path it names: ".", an empty segment
        # ("//"), or a detour "x/.." in any spelling of the dots.
        for _ in range(rng.choice((0, 0, 1, 2))):
            out += rng.choice(
                [
                    ["."],
                    ["%2e"],
                    [""],
                    ["detour", ".."],
                    ["gpt-4o", "%2e%2E"],
                    ["admin", ".%2e"],
                    ["a", "b", "..", "%2E."],
                ]
            )
        spelled = "".join(_encode(c, rng) if rng.random() < 0.3 else c for c in segment)
        if index < len(segments) - 1 and rng.random() < 0.03:
            # A hidden separator: must never be decoded into one.
            spelled += "%2F"
            must_reject = True
        elif rng.random() < 0.02:
            spelled += rng.choice([";x", "%3B", "%00", "%2", "\\", "%5C"])
            must_reject = True
        out.append(spelled)
    return "/" + "/".join(out), must_reject


def test_no_spelling_reaches_a_route_its_canonical_form_does_not_name() -> None:
    """Every spelling is rejected, or normalises to the canonical path and matches its route."""
    router = build(SPELLING_ROUTES)
    rng = random.Random(1_234_567)
    accepted = rejected = 0
    for canonical in CANONICAL_PATHS:
        assert normalize_request_path(canonical) == canonical
        expected = router.match("POST", canonical)
        for _ in range(1_500):
            spelling, must_reject = _spell(canonical, rng)
            try:
                normalised = normalize_request_path(spelling)
            except InvalidPath:
                rejected += 1
                continue
            accepted += 1
            assert not must_reject, spelling
            assert normalised == canonical, spelling
            assert router.match("POST", normalised) == expected, spelling
    assert accepted > 10_000
    assert rejected > 100


def test_random_paths_match_only_through_their_normal_form() -> None:
    """Arbitrary input: whatever is accepted matches exactly as its normal form does."""
    router = build(SPELLING_ROUTES)
    rng = random.Random(99)
    pieces = [
        "openai",
        "deployments",
        "gpt-4o",
        "admin",
        "chat",
        "completions",
        "v1",
        "private",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        "",
        "%61dmin",
        "gpt-4%6F",
        "%2F",
        "x",
    ]
    for _ in range(20_000):
        raw = "/" + "/".join(rng.choice(pieces) for _ in range(rng.randint(0, 7)))
        try:
            normalised = normalize_request_path(raw)
        except InvalidPath:
            continue
        result = router.match("POST", normalised)
        assert result == router.match("POST", normalize_request_path(normalised)), raw
        if (
            isinstance(result, Match)
            and result.template == "/openai/deployments/admin/chat/completions"
        ):
            assert normalised == "/openai/deployments/admin/chat/completions", raw
