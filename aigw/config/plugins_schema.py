"""The access plugins: ``key-auth``, ``acl`` and ``ai-rate-limiting-advanced`` (its config in
`aigw.config.limit_schema`), on a route or in a global plugins file (``plugins:`` without
``route:``).

Kong's names and fields, checked as strictly as the route schema: unknown keys get a "did you
mean", Kong settings aigw does not implement are named as such with the reason, and a value aigw
would silently treat differently from Kong is refused rather than ignored.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aigw.config.checker import Check, Checker, backticked
from aigw.config.errors import ConfigIssue
from aigw.config.keypath import ROOT, child, item
from aigw.config.limit_schema import token_limit
from aigw.config.model import (
    AccessPlugins,
    AclConfig,
    KeyAuthConfig,
)
from aigw.config.yaml_strict import NodePosition
from aigw.upstream.headers import REQUEST_POLICY

__all__ = [
    "ACCESS_PLUGINS",
    "PluginEntry",
    "ValidatedPlugins",
    "access_plugins",
    "plugin_entries",
    "validate_global",
]

ACCESS_PLUGINS = ("key-auth", "acl", "ai-rate-limiting-advanced")
"""The plugins a route or a global plugins file may hold besides ``ai-proxy-advanced``."""

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLUGIN_KEYS = ("name", "config")
# `route` never reaches here (file_kind makes that a route file); listed so that a misspelt
# `route` gets "did you mean `route`?" rather than a suggestion of `plugins`.
_GLOBAL_TOP_KEYS = ("plugins", "route")
_GLOBAL_KONG_PLUGIN = dict.fromkeys(
    ("enabled", "protocols", "instance_name", "ordering", "tags", "id", "consumer"), ""
) | dict.fromkeys(
    ("route", "service"),
    "is not supported in a global plugins file: its plugins apply to every route; "
    "put a plugin for one route in that route's file",
)
_KONG_TOP = dict.fromkeys(("_format_version", "_transform", "services", "routes"), "")

# Kong plugins people reach for, with what to use instead.
_INSTEAD = {
    "rate-limiting": "it counts requests; aigw limits tokens with `ai-rate-limiting-advanced`",
    "rate-limiting-advanced": "it counts requests; aigw limits tokens with "
    "`ai-rate-limiting-advanced`",
    "ai-rate-limiting": "the plugin is `ai-rate-limiting-advanced`",
    "basic-auth": "authenticate consumers with `key-auth`",
    "jwt": "authenticate consumers with `key-auth`",
    "hmac-auth": "authenticate consumers with `key-auth`",
    "oauth2": "authenticate consumers with `key-auth`",
    "openid-connect": "authenticate consumers with `key-auth`",
    "key-auth-enc": "`key-auth` already stores only key digests",
}

_KEY_AUTH_KEYS = (
    "key_names",
    "key_in_header",
    "key_in_query",
    "hide_credentials",
    "run_on_preflight",
)
_KONG_KEY_AUTH = {
    "anonymous": "is not supported: every request on a key-auth route must carry a consumer's "
    "key; leave key-auth off a route that anyone may use",
    "key_in_body": "is not supported: the key is checked before the body is read, so a "
    "stranger costs no body read; send the key in a header",
    "realm": "is not supported: aigw's 401 is an OpenAI-style JSON error whose challenge is "
    'always `WWW-Authenticate: Key realm="aigw"`',
}
_ACL_KEYS = ("allow", "deny")
_KONG_ACL = {
    "hide_groups_header": "is not supported: aigw never sends the consumer's groups upstream",
    "include_consumer_groups": "is not supported: consumer groups are not implemented; "
    "list the groups in each consumer's `acls`",
    "always_use_authenticated_groups": "is not supported: the groups are always the "
    "authenticated consumer's `acls`",
}


@dataclass(frozen=True, slots=True)
class PluginEntry:
    """One readable entry of a ``plugins`` list.

    Attributes:
        name: The plugin name (a supported one).
        path: Its key path, e.g. ``plugins[1]``.
        entry: The entry mapping (``name``, ``config``).
    """

    name: str
    path: str
    entry: dict[str, object]


@dataclass(frozen=True, slots=True)
class ValidatedPlugins:
    """The result of `validate_global`: the plugins, or the issues (never both).

    Attributes:
        plugins: The plugins, if the data was valid.
        issues: Every problem found, in document order.
    """

    plugins: AccessPlugins | None
    issues: tuple[ConfigIssue, ...]


def validate_global(
    data: object,
    *,
    file: str,
    positions: Mapping[str, NodePosition],
    sources: Mapping[str, tuple[str, ...]],
    reported: frozenset[str] = frozenset(),
) -> ValidatedPlugins:
    """Validate a global plugins document: ``plugins:`` alone, access plugins only.

    Args:
        data: Interpolated plain data.
        file: The file name to put in issues.
        positions: Key path -> position in the file.
        sources: Key path -> environment variables the value came from (never echoed).
        reported: Key paths an earlier stage already reported as unreadable.

    Returns:
        The plugins, or every issue found.
    """
    c = Checker(file, positions, sources, reported)
    root = c.mapping(data, ROOT, _GLOBAL_TOP_KEYS, _KONG_TOP)
    if root is None:
        return ValidatedPlugins(None, tuple(c.issues))
    value = root.get("plugins")
    if value is None:
        c.absent(root, ROOT, "plugins")
        return ValidatedPlugins(None, tuple(c.issues))
    refused = dict.fromkeys(
        ("ai-proxy-advanced", "ai-proxy"),
        "belongs in a route file (with `route:`): it says where one route's requests go; "
        "a global plugins file holds only " + backticked(ACCESS_PLUGINS),
    )
    entries, _ = plugin_entries(c, value, "plugins", ACCESS_PLUGINS, _GLOBAL_KONG_PLUGIN, refused)
    if isinstance(value, list) and not value:
        c.report("plugins", f"must hold at least one of {backticked(ACCESS_PLUGINS)}")
    plugins = access_plugins(c, entries)
    if c.issues:
        return ValidatedPlugins(None, tuple(c.issues))
    return ValidatedPlugins(plugins, ())


def plugin_entries(
    c: Checker,
    value: object,
    path: str,
    names: tuple[str, ...],
    kong: Mapping[str, str],
    refused: Mapping[str, str],
) -> tuple[list[PluginEntry], bool]:
    """Read a ``plugins`` list: each entry a mapping with a supported ``name``, each name once.

    Args:
        c: The checker.
        value: The list.
        path: Its key path.
        names: The plugin names allowed here.
        kong: Kong's plugin-entry keys aigw does not support, with reasons.
        refused: Plugin names refused here with a specific reason.

    Returns:
        The readable entries, in order, and whether every entry was readable (so a missing
        plugin is worth reporting: a misspelt one has been already).
    """
    elements = c.sequence(value, path)
    seen: dict[str, str] = {}
    entries: list[PluginEntry] = []
    for index, element in enumerate(elements or ()):
        entry_path = item(path, index)
        m = c.mapping(element, entry_path, _PLUGIN_KEYS, kong)
        if m is None:
            continue
        raw = m.get("name")
        if isinstance(raw, str) and raw in refused:
            c.report(child(entry_path, "name"), f"`{raw}` {refused[raw]}")
            continue
        name = c.text(m, entry_path, "name", required=True, check=_name_check(names))
        if name is None:
            continue
        first = seen.setdefault(name, entry_path)
        if first != entry_path:
            c.report(entry_path, f"a second `{name}` plugin; the first is `{first}`")
            continue
        entries.append(PluginEntry(name, entry_path, m))
    return entries, elements is not None and len(entries) == len(elements)


def _name_check(names: tuple[str, ...]) -> Check:
    def check(value: str) -> str | None:
        if value in names:
            return None
        supported = f"supported plugins: {backticked(names)}"
        if value in _INSTEAD:
            return f"unsupported plugin: {_INSTEAD[value]}; {supported}"
        close = difflib.get_close_matches(value, names, n=1)
        if close:
            return f"unsupported plugin; did you mean `{close[0]}`? {supported}"
        return f"unsupported plugin; {supported}"

    return check


def access_plugins(c: Checker, entries: list[PluginEntry]) -> AccessPlugins:
    """Read the access plugins among *entries* (others are left to the caller)."""
    plugins = AccessPlugins()
    for entry in entries:
        if entry.name == "key-auth":
            plugins = AccessPlugins(_key_auth(c, entry), plugins.acl, plugins.token_limit)
        elif entry.name == "acl":
            plugins = AccessPlugins(plugins.key_auth, _acl(c, entry), plugins.token_limit)
        elif entry.name == "ai-rate-limiting-advanced":
            limit = token_limit(c, entry.entry, entry.path)
            plugins = AccessPlugins(plugins.key_auth, plugins.acl, limit)
    return plugins


# -- key-auth -------------------------------------------------------------------------------


def _key_auth(c: Checker, entry: PluginEntry) -> KeyAuthConfig:
    m = c.section(entry.entry, entry.path, "config", _KEY_AUTH_KEYS, _KONG_KEY_AUTH)
    path = child(entry.path, "config")
    if not m:
        return KeyAuthConfig()
    if m.get("hide_credentials") is False:
        c.report(
            child(path, "hide_credentials"),
            "`false` is not supported: aigw never sends the client's key upstream "
            "(`true`, the only behaviour, may be written)",
        )
    else:
        c.boolean(m, path, "hide_credentials", default=True)
    # Kong's default, and what aigw does: a key is asked of every request.
    if m.get("run_on_preflight") is False:
        c.report(
            child(path, "run_on_preflight"),
            "`false` is not supported: aigw checks the key on every request, `OPTIONS` "
            "included (`true`, the only behaviour, may be written)",
        )
    else:
        c.boolean(m, path, "run_on_preflight", default=True)
    in_header = c.boolean(m, path, "key_in_header", default=True)
    in_query = c.boolean(m, path, "key_in_query", default=False)
    if not in_header and not in_query:
        c.report(
            child(path, "key_in_header"),
            "no key could ever be found with both `key_in_header` and `key_in_query` false",
            at=child(path, "key_in_header") if "key_in_header" in m else path,
        )
    names = _key_names(c, m.get("key_names"), child(path, "key_names"))
    return KeyAuthConfig(key_names=names, key_in_header=in_header, key_in_query=in_query)


def _key_names(c: Checker, value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return KeyAuthConfig().key_names
    if isinstance(value, list) and not value:
        c.report(path, "must list at least one name, or be left out (default `[apikey]`)")
    names: list[str] = []
    for element_path, name in c.strings(value, path):
        reason = _check_key_name(name)
        if reason is not None:
            c.report(element_path, reason + c.got(element_path, name))
        elif name.lower() not in names:
            names.append(name.lower())
    return tuple(names)


def _check_key_name(name: str) -> str | None:
    if not _HEADER_NAME.match(name):
        return "must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~"
    if REQUEST_POLICY.allows(name):
        return "would be forwarded to Azure; choose a name aigw does not forward"
    if name.lower() == "api-version":
        return "is the Azure API version parameter, not a key; choose another name"
    return None


# -- acl ------------------------------------------------------------------------------------


def _acl(c: Checker, entry: PluginEntry) -> AclConfig:
    m = c.section(entry.entry, entry.path, "config", _ACL_KEYS, _KONG_ACL, required=True)
    path = child(entry.path, "config")
    if m is None:
        return AclConfig()
    given = [key for key in _ACL_KEYS if m.get(key) is not None]
    if not given:
        c.report(path, "must set `allow` or `deny` (a list of consumer groups)", key=True)
    elif len(given) == 2:
        c.report(child(path, "deny"), "set either `allow` or `deny`, not both (Kong's rule)")
    allow = _groups(c, m.get("allow"), child(path, "allow"))
    deny = _groups(c, m.get("deny"), child(path, "deny"))
    return AclConfig(allow=allow, deny=deny)


def _groups(c: Checker, value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list) and not value:
        c.report(path, "must list at least one group")
    groups: list[str] = []
    for element_path, group in c.strings(value, path):
        if _CONTROL.search(group):
            c.report(element_path, "contains a control character" + c.got(element_path, group))
        elif group not in groups:
            groups.append(group)
    return tuple(groups)


# -- ai-rate-limiting-advanced ----------------------------------------------------------------
