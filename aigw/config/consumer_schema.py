"""Consumer files: ``consumer:`` (one consumer) or ``consumers:`` (a list, as decK writes them).

::

    consumer:
      username: team-search
      keyauth_credentials:
        - key: ${TEAM_SEARCH_KEY}     # hashed at load; the plain key is never kept
        - key_hash: sha256:9f86d0...  # or only the digest
      acls:
        - group: chat

SECURITY: a ``key`` is read as a secret (never echoed, see `aigw.config.checker`) and hashed
with `aigw.consumers.index.key_digest` as soon as it is read; ``key_hash`` is not echoed
either (the digest of a weak key can be reversed). A key given twice is reported by naming
the entries, never the key.

PERF: a file of 10,000 consumers must load in well under a second, so each field is read
once and the checks are plain regex matches and dict lookups.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from aigw.config.checker import Checker
from aigw.config.errors import ConfigIssue
from aigw.config.keypath import ROOT, child, item
from aigw.config.model import ConsumerConfig, KeyCredential
from aigw.config.yaml_strict import NodePosition
from aigw.consumers.index import credential_id, key_digest

__all__ = ["ValidatedConsumers", "validate_consumers"]

_TOP_KEYS = ("consumer", "consumers")
_KONG_TOP = dict.fromkeys(("_format_version", "_transform", "services", "routes"), "") | {
    "route": "does not belong in a consumer file: put the route in a file of its own",
    "plugins": "does not belong in a consumer file: put plugins in a route file or in a "
    "global plugins file (`plugins:` alone)",
}
_CONSUMER_KEYS = ("username", "custom_id", "keyauth_credentials", "acls")
_NOT_IMPLEMENTED = "is not supported: aigw's consumers authenticate with `keyauth_credentials`"
_KONG_CONSUMER = (
    dict.fromkeys(("id", "tags", "created_at", "updated_at", "plugins"), "")
    | {
        "consumer_groups": "is not supported: consumer groups are not implemented; "
        "put the consumer in `acls` groups",
    }
    | dict.fromkeys(
        (
            "jwt_secrets",
            "basicauth_credentials",
            "hmacauth_credentials",
            "oauth2_credentials",
            "mtls_auth_credentials",
        ),
        _NOT_IMPLEMENTED,
    )
)
_CREDENTIAL_KEYS = ("key", "key_hash")
_KONG_CREDENTIAL = dict.fromkeys(("id", "tags", "created_at"), "") | {
    "ttl": "is not supported: to rotate a key, add the new one, then remove the old one"
}
_ACL_KEYS = ("group",)
_KONG_ACL = dict.fromkeys(("id", "tags", "created_at"), "")

_WHY_USERNAME = "it is a log field and a metrics label"
_USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,128}\Z")
_KEY_BAD = re.compile(r"[\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_KEY_HASH = re.compile(r"sha256:([0-9A-Fa-f]{64})\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ValidatedConsumers:
    """The result of `validate_consumers`: the consumers, or the issues (never both).

    Attributes:
        consumers: The consumers in file order, if the data was valid.
        issues: Every problem found, in document order.
    """

    consumers: tuple[ConsumerConfig, ...] | None
    issues: tuple[ConfigIssue, ...]


def validate_consumers(
    data: object,
    *,
    file: str,
    positions: Mapping[str, NodePosition],
    sources: Mapping[str, tuple[str, ...]],
    reported: frozenset[str] = frozenset(),
) -> ValidatedConsumers:
    """Validate one consumer document.

    Args:
        data: Interpolated plain data.
        file: The file name to put in issues.
        positions: Key path -> position in the file.
        sources: Key path -> environment variables the value came from (never echoed).
        reported: Key paths an earlier stage already reported as unreadable.

    Returns:
        The consumers, or every issue found.
    """
    c = Checker(file, positions, sources, reported)
    root = c.mapping(data, ROOT, _TOP_KEYS, _KONG_TOP)
    if root is None:
        return ValidatedConsumers(None, tuple(c.issues))
    if "consumer" in root and "consumers" in root:
        c.report(
            "consumers", "a file holds either `consumer` (one) or `consumers` (a list)", key=True
        )
    consumers: list[ConsumerConfig] = []
    keys: dict[bytes, str] = {}  # digest -> path of the credential that first had it
    usernames: dict[str, str] = {}  # username -> path of the consumer that first had it
    if "consumer" in root:
        consumer = _consumer(c, root["consumer"], "consumer", keys)
        if consumer is not None:
            consumers.append(consumer)
    elif "consumers" in root:
        elements = c.sequence(root["consumers"], "consumers")
        if elements == []:
            c.report("consumers", "must list at least one consumer")
        for index, element in enumerate(elements or ()):
            path = item("consumers", index)
            consumer = _consumer(c, element, path, keys)
            # Checked on the raw value so a duplicate is reported even beside other errors.
            username = element.get("username") if isinstance(element, dict) else None
            if isinstance(username, str) and username:
                first = usernames.setdefault(username, path)
                if first != path:
                    reason = f"username `{username}` is already used by `{first}`"
                    c.report(child(path, "username"), reason)
            if consumer is not None:
                consumers.append(consumer)
    if c.issues:
        return ValidatedConsumers(None, tuple(c.issues))
    return ValidatedConsumers(tuple(consumers), ())


def _consumer(
    c: Checker, value: object, path: str, keys: dict[bytes, str]
) -> ConsumerConfig | None:
    m = c.mapping(value, path, _CONSUMER_KEYS, _KONG_CONSUMER)
    if m is None:
        return None
    username = c.text(m, path, "username", required=True, check=_check_username)
    custom_id = c.text(m, path, "custom_id", check=_check_no_control)
    credentials = _credentials(c, m, path, keys)
    groups = _acls(c, m.get("acls"), child(path, "acls"))
    if username is None or credentials is None:
        return None
    return ConsumerConfig(username, credentials, groups, custom_id)


def _credentials(
    c: Checker, m: Mapping[str, object], path: str, keys: dict[bytes, str]
) -> tuple[KeyCredential, ...] | None:
    value = m.get("keyauth_credentials")
    if value is None:
        c.absent(m, path, "keyauth_credentials")
        return None
    list_path = child(path, "keyauth_credentials")
    elements = c.sequence(value, list_path)
    if elements is None:
        return None
    if not elements:
        c.report(list_path, "must list at least one credential: `- key: ...` or `- key_hash: ...`")
        return None
    credentials: list[KeyCredential] = []
    for index, element in enumerate(elements):
        entry_path = item(list_path, index)
        digest = _digest(c, element, entry_path)
        if digest is None:
            continue
        first = keys.setdefault(digest, entry_path)
        if first != entry_path:
            c.report(entry_path, f"the same key as `{first}`", key=True)
            continue
        credentials.append(KeyCredential(digest=digest, id=credential_id(digest)))
    return tuple(credentials) if len(credentials) == len(elements) else None


def _digest(c: Checker, value: object, path: str) -> bytes | None:
    """The sha256 digest one credential entry stands for, or None (reported)."""
    m = c.mapping(value, path, _CREDENTIAL_KEYS, _KONG_CREDENTIAL)
    if m is None:
        return None
    has_key, has_hash = m.get("key") is not None, m.get("key_hash") is not None
    if has_key == has_hash:
        reason = "set exactly one of `key` and `key_hash`"
        c.report(child(path, "key_hash") if has_hash else path, reason, key=True)
        return None
    if has_key:
        key = c.text(m, path, "key", secret=True, check=_check_key)
        return None if key is None else key_digest(key)
    key_hash = c.text(m, path, "key_hash", secret=True, check=_check_key_hash)
    return None if key_hash is None else bytes.fromhex(key_hash[len("sha256:") :])


def _acls(c: Checker, value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    elements = c.sequence(value, path)
    groups: list[str] = []
    for index, element in enumerate(elements or ()):
        entry_path = item(path, index)
        if isinstance(element, str):
            c.report(entry_path, f"expected a mapping such as `{{group: {element}}}`; got a string")
            continue
        m = c.mapping(element, entry_path, _ACL_KEYS, _KONG_ACL)
        if m is None:
            continue
        group = c.text(m, entry_path, "group", required=True, check=_check_no_control)
        if group is not None and group not in groups:
            groups.append(group)
    return tuple(groups)


# -- string checks: return a reason, or None --------------------------------------------------


def _check_username(value: str) -> str | None:
    if _USERNAME.match(value):
        return None
    if len(value) > 128:
        return f"must be at most 128 characters ({_WHY_USERNAME}); got {len(value)}"
    return f"must contain only letters, digits, `.`, `_`, `@` and `-` ({_WHY_USERNAME})"


def _check_key(value: str) -> str | None:
    if _KEY_BAD.search(value):
        return "must not contain whitespace or control characters (a trailing newline?)"
    return None


def _check_key_hash(value: str) -> str | None:
    if _KEY_HASH.match(value):
        return None
    return "must be `sha256:` followed by 64 hex digits (e.g. the output of `sha256sum`)"


def _check_no_control(value: str) -> str | None:
    if _CONTROL.search(value):
        return "contains a control character such as a line break (a trailing newline?)"
    return None
