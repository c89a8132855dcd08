"""The consumers of one route table, found by the digest of a key in O(1)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["EMPTY_CONSUMERS", "Consumer", "ConsumerIndex", "credential_id", "key_digest"]


def key_digest(key: str) -> bytes:
    """sha256 of a key as UTF-8: how keys are stored and looked up."""
    return hashlib.sha256(key.encode()).digest()


def credential_id(digest: bytes) -> str:
    """A short id for the credential whose key hashes to *digest*, for logs and
    per-credential quotas: a hash of the digest, so it reveals nothing usable."""
    return hashlib.sha256(b"aigw-credential:" + digest).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Consumer:
    """An authenticated caller, as the chain and the logs see it.

    Attributes:
        username: The consumer's unique name (logged, a metrics label).
        groups: Its ``acls`` groups.
        source: The file it came from.
    """

    username: str
    groups: frozenset[str]
    source: str


class ConsumerIndex:
    """Every consumer key of a table, by digest; immutable once built.

    Args:
        by_digest: Key digest -> (consumer, credential id).
        consumers: Every consumer, in file order.
    """

    __slots__ = ("_by_digest", "consumers")

    def __init__(
        self, by_digest: Mapping[bytes, tuple[Consumer, str]], consumers: tuple[Consumer, ...]
    ) -> None:
        self._by_digest = dict(by_digest)
        self.consumers = consumers

    def authenticate(self, key: str) -> tuple[Consumer, str] | None:
        """The consumer and credential id that *key* belongs to, or None.

        The key is hashed first, so lookup costs the same whatever the number
        of consumers, and the map is probed with an unpredictable digest: how
        long a probe takes says nothing about any stored key.
        """
        return self._by_digest.get(key_digest(key))

    def __len__(self) -> int:
        return len(self.consumers)


EMPTY_CONSUMERS = ConsumerIndex({}, ())
"""The index of a table without consumer files."""
