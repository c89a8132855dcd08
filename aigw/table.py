"""The route table: a trie of compiled routes, the consumers and the global plugins,
built whole and never mutated.

A table is built off to the side, file by file, and then published by the
gateway with one reference assignment. A file is taken whole or not at all:
a route file whose paths are malformed or already claimed, or whose route name
is taken; a consumer file one of whose usernames or keys belongs to another
file; a global plugins file defining a plugin another file already defines:
each is refused and the table is exactly as if it had never been offered.
Whoever offers files first keeps what they claimed, which is how the reloader
gives incumbents precedence over newcomers.

Files are offered kind by kind: global plugins, then consumers, then routes,
so every route compiles with the final global plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aigw.config.errors import ConfigError, ConfigIssue
from aigw.config.model import (
    AccessPlugins,
    ConfFile,
    ConsumerFile,
    GlobalPluginsFile,
    RouteFile,
)
from aigw.consumers.index import EMPTY_CONSUMERS, Consumer, ConsumerIndex
from aigw.route import CompiledRoute
from aigw.routing import RouteConflict, Router, RouterBuilder, TemplateError

__all__ = ["PLUGIN_NAMES", "RouteTable", "TableBuilder", "plugin_names"]

_NO_PLUGINS = AccessPlugins()

PLUGIN_NAMES = {"key_auth": "key-auth", "acl": "acl", "token_limit": "ai-rate-limiting-advanced"}
"""`AccessPlugins` field -> the plugin's name in a config file (Kong's)."""


def plugin_names(plugins: AccessPlugins) -> list[str]:
    """The config names of the plugins *plugins* defines, in chain order."""
    return [name for attr, name in PLUGIN_NAMES.items() if getattr(plugins, attr) is not None]


@dataclass(frozen=True, slots=True)
class RouteTable:
    """An immutable snapshot of everything the gateway serves.

    Attributes:
        generation: Increases by one with every published table.
        router: Path trie whose values are compiled routes.
        routes: Every compiled route, in the order they were added.
        consumers: Every consumer key, by digest (what ``key-auth`` looks up).
        global_plugins: The plugins of conf.d's global plugins files, merged; every
            route's chain was compiled with them.
    """

    generation: int
    router: Router[CompiledRoute]
    routes: tuple[CompiledRoute, ...]
    consumers: ConsumerIndex = EMPTY_CONSUMERS
    global_plugins: AccessPlugins = field(default=_NO_PLUGINS)

    def secrets(self) -> frozenset[str]:
        """Every credential value the table injects or uses (for log scrubbing)."""
        values: set[str] = set()
        for route in self.routes:
            auth = route.file.proxy.targets[0].auth
            values.update(v for v in (auth.header_value, auth.param_value) if v)
            limit = route.file.plugins.over(self.global_plugins).token_limit
            if limit is not None and limit.redis is not None and limit.redis.password:
                values.add(limit.redis.password)
        return frozenset(values)


class TableBuilder:
    """Collects conf.d files into a new table, refusing any file that does not fit.

    Offer global plugins files first, then consumer files, then route files: a
    route compiles with the global plugins offered before it, so a global
    plugins file offered after a route is a programming error.

    Args:
        compile_route: Turns a validated route file and the merged global plugins
            into a compiled route (the reloader passes a cached version, so
            unchanged files are not recompiled).
    """

    def __init__(self, compile_route: Callable[[RouteFile, AccessPlugins], CompiledRoute]) -> None:
        self._compile = compile_route
        self._router: RouterBuilder[CompiledRoute] = RouterBuilder()
        self._routes: list[CompiledRoute] = []
        self._names: dict[str, str] = {}  # route name -> file
        self._globals = _NO_PLUGINS
        self._global_owners: dict[str, str] = {}  # AccessPlugins field -> file
        self._usernames: dict[str, str] = {}  # username -> file
        self._by_digest: dict[bytes, tuple[Consumer, str]] = {}
        self._consumers: list[Consumer] = []
        self._routes_offered = False

    @property
    def global_plugins(self) -> AccessPlugins:
        """The global plugins taken so far, merged."""
        return self._globals

    def offer(self, file: ConfFile) -> ConfigError | None:
        """Adds *file*, or returns why it cannot be added (and adds nothing)."""
        if isinstance(file, RouteFile):
            self._routes_offered = True
            return self._offer_route(file)
        if isinstance(file, ConsumerFile):
            return self._offer_consumers(file)
        return self._offer_globals(file)

    def offer_all(self, files: Iterable[ConfFile]) -> list[ConfigError]:
        """Offers each file in order; returns the refusals."""
        return [error for file in files if (error := self.offer(file)) is not None]

    def build(self, generation: int) -> RouteTable:
        """The table of every file taken so far."""
        consumers = (
            ConsumerIndex(self._by_digest, tuple(self._consumers))
            if self._consumers
            else EMPTY_CONSUMERS
        )
        return RouteTable(
            generation=generation,
            router=self._router.build(),
            routes=tuple(self._routes),
            consumers=consumers,
            global_plugins=self._globals,
        )

    # -- each kind ----------------------------------------------------------

    def _offer_route(self, file: RouteFile) -> ConfigError | None:
        owner = self._names.get(file.route.name)
        if owner is not None:
            reason = f"route name `{file.route.name}` is already used by {owner}"
            return _refusal(file.source, "route.name", reason)
        route = self._compile(file, self._globals)
        try:
            _add_paths(self._router, route)
        except (RouteConflict, TemplateError) as exc:
            # Paths added before the failing one must go too: rebuild the trie
            # from the routes already taken (only on this rare path).
            self._router = RouterBuilder()
            for kept in self._routes:
                _add_paths(self._router, kept)
            return _refusal(file.source, "route.paths", str(exc))
        self._routes.append(route)
        self._names[file.route.name] = file.source
        return None

    def _offer_consumers(self, file: ConsumerFile) -> ConfigError | None:
        # Everything is checked before anything is taken: the file goes in whole or not at all.
        issues: list[ConfigIssue] = []
        usernames: dict[str, str] = {}
        digests: dict[bytes, str] = {}  # digest -> username, within this file
        for consumer in file.consumers:
            name = consumer.username
            owner = self._usernames.get(name) or usernames.get(name)
            if owner is not None:
                reason = f"username `{name}` is already used by {owner}"
                issues.append(ConfigIssue(file.source, "", reason))
            usernames[name] = file.source
            for index, credential in enumerate(consumer.keyauth_credentials):
                taken = self._by_digest.get(credential.digest)
                other: tuple[str, str] | None = None
                if taken is not None:
                    other = (taken[0].username, taken[0].source)
                elif digests.get(credential.digest, name) != name:
                    other = (digests[credential.digest], file.source)
                if other is not None:
                    # Name the other consumer and its file, never the key or its digest.
                    reason = (
                        f"keyauth_credentials[{index}] of consumer `{name}` is already "
                        f"a key of consumer `{other[0]}` in {other[1]}"
                    )
                    issues.append(ConfigIssue(file.source, "", reason))
                digests[credential.digest] = name
        if issues:
            return ConfigError(tuple(issues))
        for consumer in file.consumers:
            taken_consumer = Consumer(
                username=consumer.username, groups=frozenset(consumer.acls), source=file.source
            )
            self._consumers.append(taken_consumer)
            self._usernames[consumer.username] = file.source
            for credential in consumer.keyauth_credentials:
                self._by_digest[credential.digest] = (taken_consumer, credential.id)
        return None

    def _offer_globals(self, file: GlobalPluginsFile) -> ConfigError | None:
        if self._routes_offered:
            raise ValueError(f"global plugins file {file.source} offered after a route file")
        issues = [
            ConfigIssue(
                file.source, "plugins", f"global plugin `{name}` is already defined by {owner}"
            )
            for attr, name in PLUGIN_NAMES.items()
            if getattr(file.plugins, attr) is not None
            and (owner := self._global_owners.get(attr)) is not None
        ]
        if issues:
            return ConfigError(tuple(issues))
        for attr in PLUGIN_NAMES:
            if getattr(file.plugins, attr) is not None:
                self._global_owners[attr] = file.source
        self._globals = file.plugins.over(self._globals)
        return None


def _refusal(source: str, key_path: str, reason: str) -> ConfigError:
    return ConfigError((ConfigIssue(source, key_path, reason),))


def _add_paths(builder: RouterBuilder[CompiledRoute], route: CompiledRoute) -> None:
    methods = route.file.route.methods
    allowed = frozenset(methods) if methods is not None else None
    for path in route.file.route.paths:
        builder.add(path, allowed, route, route.file.source)
