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

A model route (``route.models``) claims its models the way a path route claims
paths: a model already served by another file refuses the newcomer whole. Each
model also claims ``/openai/deployments/{model}/*`` for POST (unless
``deployment_paths: false``): a static segment, so it beats ``{deployment}``
templates and loses to a route's explicit static path.

Two kinds of entries are soft claims, added by `TableBuilder.build` once every
file is in, only where no path route holds the path (whatever the file order):
each operation's static classic path (`aigw.apis.classic`, the fast way to the
same route), and one `ModelDispatch` per model-in-body path
(``/openai/v1/chat/completions``, ``/openai/responses``, realtime...) bound to
the final model index. A path route naming one of those paths therefore serves
it, and the model routes keep every other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from aigw.apis.classic import ClassicPath, classic_paths
from aigw.apis.dispatch import ModelDispatch, model_dispatchers
from aigw.config.errors import ConfigError, ConfigIssue
from aigw.config.model import (
    AccessPlugins,
    ConfFile,
    ConsumerFile,
    GlobalPluginsFile,
    RouteConfig,
    RouteFile,
)
from aigw.consumers.index import EMPTY_CONSUMERS, Consumer, ConsumerIndex
from aigw.limits import DEFAULT_LIMITS, Limits
from aigw.route import CompiledRoute
from aigw.routing import RouteConflict, Router, RouterBuilder, TemplateError

__all__ = [
    "PLUGIN_NAMES",
    "RouteTable",
    "Routed",
    "TableBuilder",
    "deployment_path",
    "plugin_names",
]

_NO_PLUGINS = AccessPlugins()

Routed: TypeAlias = CompiledRoute | ModelDispatch | ClassicPath
"""What the router finds for a path: a route, the dispatcher that picks one by model, or
one operation's classic path of a model route. Each has ``handler``, which the gateway
calls the same way."""

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
        router: Path trie whose values are compiled routes and, on the model-in-body
            paths, model dispatchers.
        routes: Every compiled route, in the order they were added.
        consumers: Every consumer key, by digest (what ``key-auth`` looks up).
        global_plugins: The plugins of conf.d's global plugins files, merged; every
            route's chain was compiled with them.
        models: Model name -> the route serving it (``route.models``); what the
            model dispatchers look up.
    """

    generation: int
    router: Router[Routed]
    routes: tuple[CompiledRoute, ...]
    consumers: ConsumerIndex = EMPTY_CONSUMERS
    global_plugins: AccessPlugins = field(default=_NO_PLUGINS)
    models: Mapping[str, CompiledRoute] = field(default_factory=dict)

    def secrets(self) -> frozenset[str]:
        """Every credential value the table injects or uses (for log scrubbing)."""
        values: set[str] = set()
        for route in self.routes:
            for target in route.file.proxy.targets:  # a pool's every target
                auth = target.auth
                secrets = (auth.header_value, auth.param_value, auth.azure_client_secret)
                values.update(v for v in secrets if v)
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
        limits: The process's body deadlines, for the model dispatchers' body reads.
    """

    def __init__(
        self,
        compile_route: Callable[[RouteFile, AccessPlugins], CompiledRoute],
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._compile = compile_route
        self._limits = limits
        self._router: RouterBuilder[Routed] = RouterBuilder()
        self._routes: list[CompiledRoute] = []
        self._models: dict[str, CompiledRoute] = {}  # model name -> the route serving it
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
        # A copy: the built table's dispatchers never see a model offered later.
        models = dict(self._models)
        router = self._router
        if models:
            # The soft claims go on a trie of their own, where no path route holds the
            # path: the builder's stays as offered (more files may come).
            router = self._claims()
            self._add_classic_paths(router)
            self._add_dispatchers(router, models)
        return RouteTable(
            generation=generation,
            router=router.build(),
            routes=tuple(self._routes),
            consumers=consumers,
            global_plugins=self._globals,
            models=models,
        )

    def _claims(self) -> RouterBuilder[Routed]:
        """A trie of the routes taken so far, their own claims only."""
        router: RouterBuilder[Routed] = RouterBuilder()
        for route in self._routes:
            _add_claims(router, route)
        return router

    def _add_classic_paths(self, router: RouterBuilder[Routed]) -> None:
        """Each model route's static classic paths (`aigw.apis.classic`), added once every
        file is in, so a route's explicit static path wins whatever the file order."""
        for route in self._routes:
            config = route.file.route
            methods = _deployment_methods(config)
            if not methods:
                continue
            for model in config.models:
                for path, entry in classic_paths(route, model):
                    # A path route that claimed it serves it, as it did beside the wildcard.
                    with contextlib.suppress(RouteConflict):
                        router.add(path, methods, entry, route.file.source)

    def _add_dispatchers(
        self, router: RouterBuilder[Routed], models: dict[str, CompiledRoute]
    ) -> None:
        """One dispatcher per model-in-body path, bound to *models*, where no path route
        holds the path: a route that names ``/openai/v1/chat/completions`` itself serves
        it (every model's v1 chat then goes there), and the model routes keep the rest."""
        for path, dispatcher in model_dispatchers(models, self._limits).items():
            methods = frozenset({dispatcher.operation.method})
            with contextlib.suppress(RouteConflict):
                router.add(path, methods, dispatcher, _DISPATCHER_SOURCE)

    # -- each kind ----------------------------------------------------------

    def _offer_route(self, file: RouteFile) -> ConfigError | None:
        owner = self._names.get(file.route.name)
        if owner is not None:
            reason = f"route name `{file.route.name}` is already used by {owner}"
            return _refusal(file.source, "route.name", reason)
        for model in file.route.models:
            holder = self._models.get(model)
            if holder is not None:
                reason = (
                    f"model `{model}` is already served by route `{holder.name}` "
                    f"({holder.info.source})"
                )
                return _refusal(file.source, "route.models", reason)
        route = self._compile(file, self._globals)
        try:
            _add_claims(self._router, route)
        except (RouteConflict, TemplateError) as exc:
            # Paths added before the failing one must go too: rebuild the trie
            # from the routes already taken (only on this rare path).
            self._router = self._claims()
            key = "route.models" if isinstance(exc, _ModelPathConflict) else "route.paths"
            return _refusal(file.source, key, str(exc))
        self._routes.append(route)
        self._names[file.route.name] = file.source
        for model in file.route.models:
            self._models[model] = route
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


_DEPLOYMENT_METHODS = frozenset({"POST"})
_DISPATCHER_SOURCE = "the model routes' dispatcher (route.models)"


class _ModelPathConflict(RouteConflict):
    """A path a route claims for its models (not one of its ``route.paths``) is taken."""


def deployment_path(model: str) -> str:
    """The classic paths a model route serves for *model*, as a trie template."""
    return f"/openai/deployments/{model}/*"


def _deployment_methods(config: RouteConfig) -> frozenset[str]:
    """The methods a route claims its models' classic paths for (none: it claims none).

    Every operation of a deployment path is a POST: other methods stay free for other
    routes (a pass-through's GET) and are otherwise answered 405.
    """
    if not (config.models and config.deployment_paths):
        return frozenset()
    return _DEPLOYMENT_METHODS.intersection(config.methods or _DEPLOYMENT_METHODS)


def _add_claims(router: RouterBuilder[Routed], route: CompiledRoute) -> None:
    """Adds *route*'s own trie entries: its paths, and its models' classic prefixes.

    Raises:
        RouteConflict: A path is taken (`_ModelPathConflict` for a model's prefix).
        TemplateError: A path is malformed.
    """
    _add_paths(router, route)
    config = route.file.route
    methods = _deployment_methods(config)
    if not methods:
        return
    try:
        for model in config.models:
            router.add(deployment_path(model), methods, route, route.file.source)
    except RouteConflict as exc:
        raise _ModelPathConflict(str(exc)) from exc


def _add_paths(builder: RouterBuilder[Routed], route: CompiledRoute) -> None:
    methods = route.file.route.methods
    allowed = frozenset(methods) if methods is not None else None
    for path in route.file.route.paths:
        builder.add(path, allowed, route, route.file.source)
