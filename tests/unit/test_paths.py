"""Request-path normalisation and route-template parsing (`aigw.routing.paths`)."""

from __future__ import annotations

import random
import re

import pytest

from aigw.routing.paths import (
    _CANONICAL_FAST,
    MAX_PATH_LENGTH,
    WILDCARD,
    InvalidPath,
    ParamSegment,
    Segment,
    StaticSegment,
    TemplateError,
    _normalize_slow,
    format_template,
    normalize_request_path,
    parse_template,
)

# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # already canonical
        ("/", "/"),
        ("/openai/deployments/gpt-4.1-mini/chat/completions", None),
        ("/a/b/", None),
        ("/a~b/c_d/e-f/g.h/x!$&'()*+,=:@", None),
        # repeated slashes
        ("//", "/"),
        ("//a", "/a"),
        ("/a//b", "/a/b"),
        ("/a///b//", "/a/b/"),
        # dot segments
        ("/.", "/"),
        ("/./a", "/a"),
        ("/a/./b", "/a/b"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/..", "/"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/../../c", "/c"),
        ("/a//../b", "/b"),  # empty segments collapse before ".." is resolved
        ("/openai/deployments/x/../../v1/models", "/openai/v1/models"),
        # dots that are not dot segments
        ("/.well-known/x", None),
        ("/a/.b/c.", None),
        ("/a/.../b", None),
        ("/a/..b", None),
        # percent-decoding of everything that may appear raw
        ("/%41%62%7e", "/Ab~"),
        ("/%2e", "/"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/b/.%2E", "/a/"),
        ("/a/%2E./b", "/b"),
        ("/%2e%2e%2e", "/..."),
        ("/%21%24%26%27%28%29%2A%2b%2C%3D%3a%40", "/!$&'()*+,=:@"),
        (
            "/openai/%64eployments/gpt-4o/chat/completions",
            "/openai/deployments/gpt-4o/chat/completions",
        ),
        # kept encoded, with upper-case hex
        ("/a%20b", "/a%20b"),
        ("/a%3fb%23c", "/a%3Fb%23c"),
        ("/%7b%7d%5b%5d%22%3c%3e%5e%60%7c", "/%7B%7D%5B%5D%22%3C%3E%5E%60%7C"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/%E2%82%AC/%f0%9f%98%80", "/%E2%82%AC/%F0%9F%98%80"),
        # trailing slash is significant and survives every rewrite
        ("/a/b//", "/a/b/"),
        ("/a/b/./", "/a/b/"),
        ("/a/b/%2e/", "/a/b/"),
    ],
)
def test_normalises(raw: str, expected: str | None) -> None:
    assert normalize_request_path(raw) == (raw if expected is None else expected)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "must start with '/'"),
        ("a/b", "must start with '/'"),
        ("%2Fa", "must start with '/'"),
        # separators hidden behind escapes
        ("/a%2Fb", "encoded '/' (%2F)"),
        ("/a%2fb", "encoded '/' (%2F)"),
        ("/a/..%2F..%2Fetc", "encoded '/' (%2F)"),
        ("/a%5Cb", "encoded '\\' (%5C)"),
        ("/a\\b", "'\\' is not allowed"),
        # path parameters
        ("/a;b", "';' is not allowed"),
        ("/a/..;/b", "';' is not allowed"),
        ("/a%3Bb", "encoded ';' (%3B)"),
        # double encoding
        ("/a%252Fb", "encoded '%' (%25)"),
        ("/a%25", "encoded '%' (%25)"),
        # NUL and control characters, raw and encoded
        ("/a%00", "encoded control character (%00)"),
        ("/a%0a", "encoded control character (%0A)"),
        ("/a%1F", "encoded control character (%1F)"),
        ("/a%7f", "encoded control character (%7F)"),
        ("/a%C2%85", "encoded control character U+0085"),
        ("/a\x00b", "control character U+0000"),
        ("/a\tb", "control character U+0009"),
        ("/a\x7fb", "control character U+007F"),
        ("/a\x85b", "control character U+0085"),
        # malformed escapes
        ("/%G1", "invalid percent-escape '%G1'"),
        ("/%1G", "invalid percent-escape '%1G'"),
        ("/%4", "invalid percent-escape '%4'"),
        ("/a%", "invalid percent-escape '%'"),
        ("/%4/b", "invalid percent-escape '%4'"),
        ("/%%41", "invalid percent-escape '%%4'"),
        ("/%C3%A9%G", "invalid percent-escape '%G'"),
        # octets that are not UTF-8, including an overlong "/"
        ("/%C0%AF", "not valid UTF-8"),
        ("/%E0%80%AF", "not valid UTF-8"),
        ("/%80", "not valid UTF-8"),
        ("/%C3", "not valid UTF-8"),
        ("/%C3/%A9", "not valid UTF-8"),
        ("/%ED%A0%80", "not valid UTF-8"),  # an encoded UTF-16 surrogate
        # traversal above the root
        ("/..", "climbs above the root"),
        ("/../a", "climbs above the root"),
        ("/a/../..", "climbs above the root"),
        ("/a/../../b", "climbs above the root"),
        ("/%2e%2e/a", "climbs above the root"),
        ("/a/%2E%2e/.%2e", "climbs above the root"),
        # raw characters that have to be encoded
        ("/a b", "character ' ' must be percent-encoded"),
        ("/a?b=c", "'?' is not allowed"),
        ("/a#frag", "'#' is not allowed"),
        ("/{x}", "character '{' must be percent-encoded"),
        ("/caf\u00e9", "character 'é' must be percent-encoded"),
        ("/a%", "invalid percent-escape"),
    ],
)
def test_rejects(raw: str, message: str) -> None:
    with pytest.raises(InvalidPath) as caught:
        normalize_request_path(raw)
    assert message in str(caught.value)


def test_invalid_path_is_a_value_error() -> None:
    assert issubclass(InvalidPath, ValueError)


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("/" + "a" * (MAX_PATH_LENGTH - 1), True),
        ("/" + "a" * MAX_PATH_LENGTH, False),
        ("/" + "%41" * MAX_PATH_LENGTH, False),  # the cap applies before decoding
    ],
)
def test_length_cap(raw: str, ok: bool) -> None:
    if ok:
        assert normalize_request_path(raw) == raw
    else:
        with pytest.raises(InvalidPath, match="longer than 4096"):
            normalize_request_path(raw)


def test_canonical_input_is_returned_as_is() -> None:
    raw = "/openai/deployments/gpt-4o/chat/completions"
    assert normalize_request_path(raw) is raw


@pytest.mark.parametrize(
    "raw",
    ["/", "/a", "/a/", "/a/b.c/-_~/d", "/x!$&'()*+,=:@/"],
)
def test_fast_path_accepts_canonical_paths(raw: str) -> None:
    assert _CANONICAL_FAST.fullmatch(raw) is not None


@pytest.mark.parametrize(
    "raw",
    ["", "a", "//", "/a//b", "/.", "/a/.", "/a/..", "/.x", "/%41", "/a;b", "/a b", "/a\\b", "/é"],
)
def test_fast_path_declines_everything_else(raw: str) -> None:
    assert _CANONICAL_FAST.fullmatch(raw) is None


# Characters the fuzzers draw from: every class of interest, weighted towards the tricky ones.
_FUZZ_ALPHABET = ["/", "/", ".", ".", "%", "a", "B", "7", "~", ";", "\\", " ", "é", "\x00"]
_FUZZ_ESCAPES = ["%2e", "%2E", "%2f", "%5c", "%41", "%7e", "%3f", "%c3%a9", "%C0%AF", "%00", "%25"]
_CANONICAL_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,=:@/]|%(?:[0-9A-F]{2}))*")


def _fuzz_path(rng: random.Random) -> str:
    parts = ["/"]
    for _ in range(rng.randint(0, 12)):
        parts.append(
            rng.choice(_FUZZ_ESCAPES) if rng.random() < 0.3 else rng.choice(_FUZZ_ALPHABET)
        )
    return "".join(parts)


def test_fuzz_results_are_canonical_fixed_points() -> None:
    """Every accepted path comes out canonical, and normalising it again changes nothing."""
    rng = random.Random(20260401)
    accepted = 0
    for _ in range(20_000):
        raw = _fuzz_path(rng)
        try:
            result = normalize_request_path(raw)
        except InvalidPath:
            continue
        accepted += 1
        assert result.startswith("/"), raw
        assert _CANONICAL_CHARS.fullmatch(result), (raw, result)
        segments = result[1:].split("/")
        assert all(s not in ("", ".", "..") for s in segments[:-1]), (raw, result)
        assert segments[-1] not in (".", ".."), (raw, result)
        assert normalize_request_path(result) == result, (raw, result)
        assert _normalize_slow(result) == result, (raw, result)
    assert accepted > 2_000  # the generator is not just producing rejects


def test_fast_path_agrees_with_slow_path() -> None:
    """Whatever the fast path returns unchanged, the full algorithm also leaves unchanged."""
    rng = random.Random(7)
    alphabet = ["/", "/", ".", "a", "Z", "0", "-", "_", "~", "!", "*", "@", ":", "="]
    matched = 0
    for _ in range(20_000):
        raw = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        if _CANONICAL_FAST.fullmatch(raw) is not None:
            matched += 1
            assert _normalize_slow(raw) == raw, raw
    assert matched > 1_000


# --------------------------------------------------------------------------- templates


def _s(*texts: str) -> tuple[StaticSegment, ...]:
    return tuple(StaticSegment(t) for t in texts)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/", _s("")),
        ("/a", _s("a")),
        ("/a/", _s("a", "")),
        (
            "/openai/deployments/gpt-4.1-mini/chat/completions",
            _s("openai", "deployments", "gpt-4.1-mini", "chat", "completions"),
        ),
        (
            "/openai/deployments/{deployment}/chat/completions",
            (*_s("openai", "deployments"), ParamSegment("deployment"), *_s("chat", "completions")),
        ),
        ("/{a}/{_b2}", (ParamSegment("a"), ParamSegment("_b2"))),
        ("/{a}/", (ParamSegment("a"), StaticSegment(""))),
        ("/*", (WILDCARD,)),
        ("/openai/*", (StaticSegment("openai"), WILDCARD)),
        ("/a/{b}/*", (StaticSegment("a"), ParamSegment("b"), WILDCARD)),
        ("/a%20b/%C3%A9", _s("a%20b", "%C3%A9")),  # canonical escapes are fine
        ("/.well-known/x", _s(".well-known", "x")),
        # Kong regex paths
        (
            "~/openai/deployments/gpt-4o/chat/completions$",
            _s("openai", "deployments", "gpt-4o", "chat", "completions"),
        ),
        (
            "~^/openai/deployments/gpt-4o/chat/completions$",
            _s("openai", "deployments", "gpt-4o", "chat", "completions"),
        ),
        (
            "~/openai/deployments/(?<azure_deployment>[^/]+)/chat/completions$",
            (
                *_s("openai", "deployments"),
                ParamSegment("azure_deployment"),
                *_s("chat", "completions"),
            ),
        ),
        (
            "~/openai/deployments/(?P<dep>[^/]+)/embeddings$",
            (*_s("openai", "deployments"), ParamSegment("dep"), StaticSegment("embeddings")),
        ),
        (
            "~/openai/deployments/gpt-4\\.1-mini/chat/completions$",
            _s("openai", "deployments", "gpt-4.1-mini", "chat", "completions"),
        ),
        (
            "~/openai/deployments/gpt-4.1-mini/chat/completions$",
            _s("openai", "deployments", "gpt-4.1-mini", "chat", "completions"),
        ),
        ("~/a\\-b\\/c\\_d\\~$", _s("a-b", "c_d~")),
        ("~/(?<a>[^/]+)/(?<b>[^/]+)/$", (ParamSegment("a"), ParamSegment("b"), StaticSegment(""))),
    ],
)
def test_parses(template: str, expected: tuple[Segment, ...]) -> None:
    assert parse_template(template) == expected


@pytest.mark.parametrize(
    ("template", "canonical"),
    [
        ("/", "/"),
        ("/a/{b}/c/", "/a/{b}/c/"),
        ("/a/{b}/*", "/a/{b}/*"),
        (
            "~/openai/deployments/(?<azure_deployment>[^/]+)/chat/completions$",
            "/openai/deployments/{azure_deployment}/chat/completions",
        ),
        (
            "~/openai/deployments/gpt-4\\.1/chat/completions$",
            "/openai/deployments/gpt-4.1/chat/completions",
        ),
    ],
)
def test_format_template_is_canonical_and_round_trips(template: str, canonical: str) -> None:
    segments = parse_template(template)
    assert format_template(segments) == canonical
    assert parse_template(canonical) == segments


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "template is empty"),
        ("a/b", "must start with '/'"),
        ("{a}", "must start with '/'"),
        # braces
        ("/a/{b", "malformed parameter segment '{b'"),
        ("/a/b}", "malformed parameter segment 'b}'"),
        ("/a/{b}c", "malformed parameter segment '{b}c'"),
        ("/a/x{b}", "malformed parameter segment 'x{b}'"),
        ("/a/{{b}}", "malformed parameter segment '{{b}}'"),
        ("/a/{}", "parameter name '' is not an identifier"),
        ("/a/{1b}", "parameter name '1b' is not an identifier"),
        ("/a/{b-c}", "parameter name 'b-c' is not an identifier"),
        ("/a/{é}", "parameter name 'é' is not an identifier"),
        ("/{a}/x/{a}", "parameter name 'a' is used twice"),
        # wildcard placement
        ("/*/a", "'*' is only allowed as the last segment"),
        ("/a/*/", "'*' is only allowed as the last segment"),
        ("/a/b*", "'*' is only allowed as a whole last segment, not in 'b*'"),
        ("/a/**", "'*' is only allowed as a whole last segment, not in '**'"),
        # not normalised
        ("/a//b", "is not in normalised form"),
        ("//a", "is not in normalised form"),
        ("/a/./b", "is not in normalised form"),
        ("/a/../b", "did you mean '/b'?"),
        ("/a/%41", "did you mean '/a/A'?"),
        ("/{x}//*", "did you mean '/{x}/*'?"),
        ("/a/%3f", "did you mean '/a/%3F'?"),
        ("/..", "climbs above the root"),
        ("/a%2Fb", "encoded '/' (%2F)"),
        ("/a;b", "';' is not allowed"),
        ("/a b", "must be percent-encoded"),
        # Kong regex paths that cannot be translated
        ("~/openai/deployments/gpt-4o/chat/completions", "without a trailing '$'"),
        ("~/openai/x\\$", "without a trailing '$'"),
        ("~/openai/deployments/(?<d>[^/]+)/chat/completions", "without a trailing '$'"),
        ("~/openai/(gpt-4o|gpt-4)/x$", "group at '(gpt-4o|gpt-4)/x'"),
        ("~/openai/([^/]+)/x$", "group at '([^/]+)/x'"),
        ("~/openai/(?<d>.+)$", "group at '(?<d>.+)'"),
        ("~/openai/(?<d>[^/]*)$", "group at '(?<d>[^/]*)'"),
        ("~/openai/.*$", "regex syntax '*'"),
        ("~/openai/x+$", "regex syntax '+'"),
        ("~/openai/[a-z]$", "regex syntax '['"),
        ("~/openai/x?$", "regex syntax '?'"),
        ("~/openai/x{2}$", "regex syntax '{'"),
        ("~/openai/a|b$", "regex syntax '|'"),
        ("~/openai/\\d$", "escape '\\\\d'"),
        ("~openai/x$", "must start with '/'"),
        ("~/a/x(?<d>[^/]+)$", "malformed parameter segment 'x{d}'"),
        ("~/a/(?<d>[^/]+)/(?<d>[^/]+)$", "parameter name 'd' is used twice"),
        ("~/a/(?<1d>[^/]+)$", "parameter name '1d' is not an identifier"),
        ("~/a//b$", "is not in normalised form"),
    ],
)
def test_template_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template(template)
    assert message in str(caught.value)
    if template:
        assert repr(template) in str(caught.value)  # the message says which template


def test_unsupported_kong_regex_says_what_is_supported() -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template("~/openai/deployments/gpt-4o.*")
    message = str(caught.value)
    assert "(?<name>[^/]+)" in message
    assert "(?P<name>[^/]+)" in message
    assert "'$'" in message
