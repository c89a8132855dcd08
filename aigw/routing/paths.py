"""Request-path normalisation and route-template parsing.

Pure functions, no aiohttp import: the router (`aigw.routing.trie`) matches the output of
`normalize_request_path` against templates parsed by `parse_template`.

Exception tree::

    ValueError
    ├── InvalidPath      a request path that cannot be normalised safely (answer 400)
    └── TemplateError    a route template from config is malformed (reject the file)

The canonical form
------------------
`normalize_request_path` returns the path the router matches *and* the path the gateway may
forward upstream on pass-through routes, so it must be one string per resource and safe to put
on the wire as is. The choice made here (RFC 3986 section 6.2.2 normalisation, made stricter):

* Every character that may appear raw in a path segment is **decoded**: the unreserved
  characters ``A-Z a-z 0-9 - . _ ~``, the sub-delimiters ``! $ & ' ( ) * + , =`` and
  ``: @``. ``/openai/%64eployments`` and ``/openai/deployments`` are the same path, so route
  templates are written decoded and stay readable.
* Every other octet that is harmless is **kept percent-encoded**, with upper-case hex:
  space, ``" < > ? # [ ] ^ ` { | }`` and UTF-8 encoded non-ASCII (``%C3%A9``). The output is
  therefore a valid RFC 3986 ``path-absolute``; forwarding it needs no re-encoding, and no
  character has two spellings in it.
* Anything that lets two components disagree about where segments end, or smuggles a second
  decoding, is **rejected**: encoded ``/`` (``%2F``) and ``\\`` (``%5C``), ``;`` raw or
  encoded (path parameters, which Tomcat-style servers strip), encoded ``%`` (``%25``, double
  encoding), NUL and other control characters raw or encoded (C0, DEL and C1), a raw ``\\``,
  malformed escapes (``%G1``, ``%4``), percent-encoded octets that are not valid UTF-8
  (overlong forms such as ``%C0%AF`` included), raw characters that must be encoded (space,
  ``?``, ``#``, non-ASCII, ...), and a ``..`` that climbs above the root.
* Repeated slashes collapse, then ``.`` and ``..`` segments are resolved (RFC 3986
  ``remove_dot_segments``), after decoding, so ``%2e%2e`` is ``..``. Because empty segments
  are dropped first, ``/a//../b`` is ``/b``. A trailing slash is kept: ``/a/`` and ``/a`` are
  different paths.
* No Unicode normalisation is applied: non-ASCII stays as the client's encoded octets.

Route templates
---------------
``/static/{name}/more/*``: static segments, ``{name}`` for exactly one non-empty segment, and
a trailing ``*`` for the rest of the path (zero or more segments). Templates must already be in
canonical form. Kong-style regex paths (``~/openai/deployments/(?<dep>[^/]+)/chat/completions$``)
are translated when they are anchored literals with whole-segment named groups.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "MAX_PATH_LENGTH",
    "WILDCARD",
    "InvalidPath",
    "ParamSegment",
    "Segment",
    "StaticSegment",
    "TemplateError",
    "WildcardSegment",
    "format_template",
    "normalize_request_path",
    "parse_template",
]

MAX_PATH_LENGTH: Final = 4096
"""Longest raw request path accepted, in characters; longer paths raise `InvalidPath`."""


class InvalidPath(ValueError):
    """A request path was rejected by `normalize_request_path`.

    The message says what was wrong (``encoded '/' (%2F) is not allowed in a path``) and quotes
    at most the offending escape or character, never the whole path.
    """


class TemplateError(ValueError):
    """A route template was rejected by `parse_template`; the message quotes the template."""


# Characters kept raw in the canonical form: unreserved, sub-delims without ";", ":" and "@".
_SAFE_PUNCTUATION: Final = "-._~!$&'()*+,=:@"
_SAFE: Final = frozenset(string.ascii_letters + string.digits + _SAFE_PUNCTUATION)
_HEX: Final = frozenset(string.hexdigits)

# PERF: one fullmatch answers "already canonical" for almost every real request: only safe
# characters, every segment non-empty (no "//") and not starting with "." (no "." or ".."
# segment, at the cost of sending "/.well-known" down the slow path), no "%" at all.
_CANONICAL_FAST: Final = re.compile(
    r"(?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*)+/?|/"
)
# Any raw character the slow path must look at: not safe, not "/", not the start of an escape.
_UNSAFE_RAW: Final = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,=:@/%]")

# SECURITY: octets whose decoding would move a segment boundary or hide a second escape layer.
_REJECTED_ESCAPES: Final[dict[int, str]] = {
    0x2F: "encoded '/' (%2F) is not allowed in a path",
    0x5C: "encoded '\\' (%5C) is not allowed in a path",
    0x3B: "encoded ';' (%3B) is not allowed in a path (path parameters are rejected)",
    0x25: "encoded '%' (%25) is not allowed in a path (double encoding)",
}


def normalize_request_path(raw_path: str) -> str:
    """Return the canonical form of a request path, or raise `InvalidPath`.

    See the module docstring for the canonical form. The result starts with ``/``, has no
    empty, ``.`` or ``..`` segment (except that it may end with ``/``), contains only
    ``/``, the safe characters and upper-case ``%XX`` escapes, and is a fixed point:
    ``normalize_request_path(p) == p`` for every result ``p``.

    Args:
        raw_path: The path exactly as the client sent it, still percent-encoded, without the
            query string (the part of aiohttp's ``request.raw_path`` before ``?``).

    Returns:
        The canonical path. Already-canonical input is returned unchanged (same object).

    Raises:
        InvalidPath: The path is empty, does not start with ``/``, is longer than
            `MAX_PATH_LENGTH`, or contains something the module docstring lists as rejected.
    """
    if len(raw_path) > MAX_PATH_LENGTH:
        raise InvalidPath(f"path is longer than {MAX_PATH_LENGTH} characters")
    if _CANONICAL_FAST.fullmatch(raw_path) is not None:
        return raw_path
    return _normalize_slow(raw_path)


def _normalize_slow(raw_path: str) -> str:
    """Normalise any path; `normalize_request_path` without the length check and fast path."""
    if not raw_path.startswith("/"):
        raise InvalidPath("path must start with '/'")
    bad = _UNSAFE_RAW.search(raw_path)
    if bad is not None:
        raise InvalidPath(_raw_character_error(bad.group()))
    # NOTE: raw "/" is the only separator: "%2F" is rejected, so splitting before decoding is
    # exact, and decoding a segment can never create a new boundary.
    segments = raw_path.split("/")
    kept: list[str] = []
    last = ""
    for segment in segments[1:]:
        last = _decode_segment(segment) if "%" in segment else segment
        if last in ("", "."):
            continue
        if last == "..":
            if not kept:
                raise InvalidPath("'..' segment climbs above the root")
            kept.pop()
            continue
        kept.append(last)
    # RFC 3986 remove_dot_segments: a path ending in "/", "/." or "/.." ends with "/".
    trailing = "/" if kept and last in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing


def _raw_character_error(char: str) -> str:
    if char == "\\":
        return "'\\' is not allowed in a path"
    if char == ";":
        return "';' is not allowed in a path (path parameters are rejected)"
    if char < " " or "\x7f" <= char <= "\x9f":
        return f"control character U+{ord(char):04X} is not allowed in a path"
    if char in "?#":
        return f"{char!r} is not allowed in a path (strip the query string and fragment first)"
    return f"character {char!r} must be percent-encoded in a path"


def _decode_segment(segment: str) -> str:
    """Decode the escapes of one segment into canonical form (see the module docstring)."""
    out: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        j = segment.find("%", i)
        if j < 0:
            out.append(segment[i:])
            break
        out.append(segment[i:j])
        octet = _octet_at(segment, j)
        if octet >= 0x80:
            # A UTF-8 character spans several escapes: validate the whole run at once, so an
            # overlong "/" (%C0%AF) or a lone continuation byte cannot slip through.
            run = bytearray()
            while j < n and segment[j] == "%" and (octet := _octet_at(segment, j)) >= 0x80:
                run.append(octet)
                j += 3
            _check_utf8(run)
            out.append("".join(f"%{b:02X}" for b in run))
            i = j
            continue
        char = chr(octet)
        if char in _SAFE:
            out.append(char)
        elif octet in _REJECTED_ESCAPES:
            raise InvalidPath(_REJECTED_ESCAPES[octet])
        elif octet < 0x20 or octet == 0x7F:
            raise InvalidPath(f"encoded control character (%{octet:02X}) is not allowed in a path")
        else:
            out.append(f"%{octet:02X}")
        i = j + 3
    return "".join(out)


def _octet_at(segment: str, index: int) -> int:
    """The octet of the escape starting at *index* (which holds a "%")."""
    digits = segment[index + 1 : index + 3]
    if len(digits) == 2 and digits[0] in _HEX and digits[1] in _HEX:
        return int(digits, 16)
    raise InvalidPath(f"invalid percent-escape {segment[index : index + 3]!r}")


def _check_utf8(run: bytearray) -> None:
    try:
        text = run.decode("utf-8")  # strict: rejects overlong forms and encoded surrogates
    except UnicodeDecodeError:
        raise InvalidPath("percent-encoded octets are not valid UTF-8") from None
    for char in text:
        if char <= "\x9f":  # only C1 controls can be <= U+009F here: the run is all >= 0x80
            raise InvalidPath(
                f"encoded control character U+{ord(char):04X} is not allowed in a path"
            )


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class StaticSegment:
    """A segment matched literally.

    Attributes:
        text: The canonical segment text. The empty string appears only as the last segment
            and stands for a trailing slash (``/a/`` is ``("a", "")``; ``/`` is ``("",)``).
    """

    text: str


@dataclass(frozen=True, slots=True)
class ParamSegment:
    """``{name}``: matches exactly one non-empty segment and captures it under *name*."""

    name: str


@dataclass(frozen=True, slots=True)
class WildcardSegment:
    """``*``: the last segment; matches the rest of the path (zero or more segments).

    The capture is named ``"*"`` and holds the rest without its leading slash.
    """


WILDCARD: Final = WildcardSegment()
"""The one `WildcardSegment` instance `parse_template` returns."""

Segment: TypeAlias = StaticSegment | ParamSegment | WildcardSegment
"""One parsed template segment."""

_PARAM: Final = re.compile(r"\{([^{}/]*)\}")
# ASCII only: names travel into logs, upstream templates and Kong-style captures.
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The class may also exclude '#' and '?' (Kong's own examples write [^#?/]+): a
# canonical path segment never holds either raw, so it matches what [^/]+ does.
_KONG_GROUP: Final = re.compile(r"\(\?P?<([^<>]*)>\[\^(?=[#?]*/)[#?/]{1,3}\]\+\)")
# Backslash escapes a Kong regex may use for a literal character.
_KONG_ESCAPABLE: Final = frozenset("./-_~")
_REGEX_SYNTAX: Final = frozenset("^$*+?()[]{}|\\")
_KONG_SUPPORTED: Final = (
    "aigw translates only a '~' + an anchored literal path ending in '$', in which '\\.' or '.'"
    " is a literal dot and a whole segment may be (?<name>[^/]+) or (?P<name>[^/]+) ([^#?/]+"
    " too); write"
    " anything else as a template with {name} segments and a trailing *"
)


def parse_template(template: str) -> tuple[Segment, ...]:
    """Parse a route path from config into segments.

    Two syntaxes are accepted:

    * Trie templates: ``/openai/deployments/{deployment}/chat/completions``,
      ``/openai/*``. Static segments must be in the form `normalize_request_path` returns;
      ``{name}`` is one whole segment with an ASCII identifier name, unique in the template;
      ``*`` may only be the whole last segment.
    * Kong regex paths, for configs carried over from Kong: ``~`` + an optional ``^`` + a
      literal path + ``$``, where a whole segment may be the named group ``(?<name>[^/]+)`` or
      ``(?P<name>[^/]+)`` and ``\\.`` is a dot. An unescaped ``.`` is also read as a literal
      dot: Kong would let it match any character, so the translation can only match *fewer*
      paths than Kong did (``gpt-4.1`` never matches ``gpt-4x1``), never more. A regex
      without the trailing ``$`` is rejected rather than translated, because in Kong it is a
      prefix match that also matches ``/openai/deployments/gpt-4ox/...``, which no trie
      template expresses.

    Args:
        template: The path as written in config.

    Returns:
        The segments; `format_template` turns them back into canonical trie syntax.

    Raises:
        TemplateError: The template is empty, does not start with ``/`` (or ``~/``), has
            malformed braces, a non-identifier or duplicate parameter name, a ``*`` that is not
            the whole last segment, is not in normalised form (``//``, ``.``, ``..``,
            ``%41``, ...), or is a Kong regex using unsupported features.
    """
    if not template:
        raise TemplateError("template is empty")
    if template.startswith("~"):
        translated = _translate_kong_regex(template)
        try:
            return _parse_trie_template(translated)
        except TemplateError as exc:
            raise TemplateError(
                f"Kong regex path {template!r} (read as {translated!r}): {exc}"
            ) from None
    try:
        return _parse_trie_template(template)
    except TemplateError as exc:
        raise TemplateError(f"template {template!r}: {exc}") from None


def format_template(segments: tuple[Segment, ...]) -> str:
    """Render segments in canonical trie syntax; the inverse of `parse_template`.

    Args:
        segments: Segments as returned by `parse_template`.

    Returns:
        The template, e.g. ``/openai/deployments/{deployment}/chat/completions``.
    """
    parts: list[str] = []
    for segment in segments:
        if isinstance(segment, StaticSegment):
            parts.append(segment.text)
        elif isinstance(segment, ParamSegment):
            parts.append("{" + segment.name + "}")
        else:
            parts.append("*")
    return "/" + "/".join(parts)


def _parse_trie_template(template: str) -> tuple[Segment, ...]:
    """Parse trie syntax; errors do not repeat the template (the caller adds it)."""
    if not template.startswith("/"):
        raise TemplateError("must start with '/'")
    parts = template[1:].split("/")
    segments: list[Segment] = []
    # Probe: the template with each parameter and the wildcard replaced by a placeholder
    # segment; it must be a fixed point of normalize_request_path.
    probe: list[str] = []
    for index, part in enumerate(parts):
        placeholder = f"~{index}~"
        if part == "*":
            if index != len(parts) - 1:
                raise TemplateError("'*' is only allowed as the last segment")
            segments.append(WILDCARD)
            probe.append(placeholder)
        elif "{" in part or "}" in part:
            segments.append(ParamSegment(_param_name(part, segments)))
            probe.append(placeholder)
        elif "*" in part:
            raise TemplateError(f"'*' is only allowed as a whole last segment, not in {part!r}")
        else:
            segments.append(StaticSegment(part))
            probe.append(part)
    probe_path = "/" + "/".join(probe)
    try:
        canonical = normalize_request_path(probe_path)
    except InvalidPath as exc:
        raise TemplateError(str(exc)) from None
    if canonical != probe_path:
        for index, segment in enumerate(segments):
            if not isinstance(segment, StaticSegment):
                canonical = canonical.replace(f"~{index}~", format_template((segment,))[1:])
        raise TemplateError(
            "is not in normalised form (no '//', '.' or '..' segments, no escapes of"
            f" characters that can be written as is); did you mean {canonical!r}?"
        )
    return tuple(segments)


def _param_name(part: str, earlier: list[Segment]) -> str:
    match = _PARAM.fullmatch(part)
    if match is None:
        raise TemplateError(
            f"malformed parameter segment {part!r}: a parameter is a whole segment, {{name}}"
        )
    name = match.group(1)
    if _IDENTIFIER.fullmatch(name) is None:
        raise TemplateError(
            f"parameter name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)"
        )
    if ParamSegment(name) in earlier:
        raise TemplateError(f"parameter name {name!r} is used twice")
    return name


def _translate_kong_regex(template: str) -> str:
    """Translate a Kong ``~`` regex path into trie syntax, or raise `TemplateError`."""

    def unsupported(detail: str) -> TemplateError:
        return TemplateError(
            f"unsupported Kong regex path {template!r}: {detail}; {_KONG_SUPPORTED}"
        )

    body = template[1:]
    if body.startswith("^"):
        body = body[1:]  # Kong anchors regex paths at the start anyway
    if not body.endswith("$") or body.endswith("\\$"):
        raise unsupported(
            "without a trailing '$' Kong matches every path that merely starts with it"
            " (e.g. '.../gpt-4o' also matches '.../gpt-4ox'); add '$' for an exact path or"
            " write a template ending in '/*' for a prefix of whole segments"
        )
    body = body[:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            escaped = body[i + 1 : i + 2]
            if escaped not in _KONG_ESCAPABLE:
                raise unsupported(f"escape {body[i : i + 2]!r}")
            out.append(escaped)
            i += 2
        elif char == "(":
            group = _KONG_GROUP.match(body, i)
            if group is None:
                raise unsupported(f"group at {body[i:]!r}")
            out.append("{" + group.group(1) + "}")
            i = group.end()
        elif char == ".":
            out.append(".")  # NOTE: narrowed to a literal dot, see parse_template
            i += 1
        elif char in _REGEX_SYNTAX:
            raise unsupported(f"regex syntax {char!r}")
        else:
            out.append(char)
            i += 1
    return "".join(out)
