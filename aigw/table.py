"""The route table: a trie of compiled routes, built whole and never mutated.

A table is built off to the side, file by file, and then published by the
gateway with one reference assignment. A file is taken whole or not at all:
if any of its paths is malformed or already claimed, or its route name is
taken, the file is refused and the table is exactly as if it had never been
offered. Whoever offers files first keeps their paths, which is how the
reloader gives incumbents precedence over newcomers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aigw.config.errors import ConfigError, ConfigIssue
from aigw.config.model import RouteFile
from aigw.route import CompiledRoute
from aigw.routing import RouteConflict, Router, RouterBuilder, TemplateError

__all__ = ["RouteTable", "TableBuilder"]


@dataclass(frozen=True, slots=True)
class RouteTable:
    """An immutable snapshot of everything the gateway routes.

    Attributes:
        generation: Increases by one with every published table.
        router: Path trie whose values are compiled routes.
        routes: Every compiled route, in the order they were added.
    """

    generation: int
    router: Router[CompiledRoute]
    routes: tuple[CompiledRoute, ...]

    def secrets(self) -> frozenset[str]:
        """Every credential value the table injects (for log scrubbing)."""
        values: set[str] = set()
        for route in self.routes:
            auth = route.file.proxy.targets[0].auth
            values.update(v for v in (auth.header_value, auth.param_value) if v)
        return frozenset(values)


class TableBuilder:
    """Collects route files into a new table, refusing any file that does not fit.

    Args:
        compile_route: Turns a validated file into a compiled route (the
            reloader passes a cached version, so unchanged files are not
            recompiled).
    """

    def __init__(self, compile_route: Callable[[RouteFile], CompiledRoute]) -> None:
        self._compile = compile_route
        self._router: RouterBuilder[CompiledRoute] = RouterBuilder()
        self._routes: list[CompiledRoute] = []
        self._names: dict[str, str] = {}

    def offer(self, file: RouteFile) -> ConfigError | None:
        """Adds *file*'s route, or returns why it cannot be added (and adds nothing)."""
        owner = self._names.get(file.route.name)
        if owner is not None:
            reason = f"route name `{file.route.name}` is already used by {owner}"
            return ConfigError((ConfigIssue(file.source, "route.name", reason),))
        route = self._compile(file)
        try:
            _add_paths(self._router, route)
        except (RouteConflict, TemplateError) as exc:
            # Paths added before the failing one must go too: rebuild the trie
            # from the routes already taken (only on this rare path).
            self._router = RouterBuilder()
            for kept in self._routes:
                _add_paths(self._router, kept)
            return ConfigError((ConfigIssue(file.source, "route.paths", str(exc)),))
        self._routes.append(route)
        self._names[file.route.name] = file.source
        return None

    def offer_all(self, files: Iterable[RouteFile]) -> list[ConfigError]:
        """Offers each file in order; returns the refusals."""
        return [error for file in files if (error := self.offer(file)) is not None]

    def build(self, generation: int) -> RouteTable:
        """The table of every file taken so far."""
        return RouteTable(
            generation=generation, router=self._router.build(), routes=tuple(self._routes)
        )


def _add_paths(builder: RouterBuilder[CompiledRoute], route: CompiledRoute) -> None:
    methods = route.file.route.methods
    allowed = frozenset(methods) if methods is not None else None
    for path in route.file.route.paths:
        builder.add(path, allowed, route, route.file.source)
