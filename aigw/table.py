"""The route table: a trie of compiled routes, built whole and never mutated.

A table is built off to the side from a set of validated route files and then
published by the gateway with one reference assignment. Files whose routes
conflict with routes already in the table are rejected here, the earlier file
(lexical order) keeping the path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aigw.config.errors import ConfigError, ConfigIssue
from aigw.config.model import RouteFile
from aigw.route import CompiledRoute, compile_route
from aigw.routing import RouteConflict, Router, RouterBuilder, TemplateError

__all__ = ["RouteTable", "build_table"]


@dataclass(frozen=True, slots=True)
class RouteTable:
    """An immutable snapshot of everything the gateway routes.

    Attributes:
        generation: Increases by one with every published table.
        router: Path trie whose values are compiled routes.
        routes: Every compiled route, in file order.
        rejected: One error per file that was not taken into this table.
    """

    generation: int
    router: Router[CompiledRoute]
    routes: tuple[CompiledRoute, ...]
    rejected: tuple[ConfigError, ...] = ()

    def secrets(self) -> frozenset[str]:
        """Every credential value the table injects (for log scrubbing)."""
        values: set[str] = set()
        for route in self.routes:
            auth = route.file.proxy.targets[0].auth
            values.update(v for v in (auth.header_value, auth.param_value) if v)
        return frozenset(values)


def build_table(
    files: Sequence[RouteFile],
    *,
    generation: int,
    rejected: Iterable[ConfigError] = (),
    azure_base_url: str | None = None,
) -> RouteTable:
    """Compiles *files* (in the given order) into a table.

    A file whose paths are malformed or claimed by an earlier file is rejected
    whole and reported in ``RouteTable.rejected``; the other files still make
    it into the table.
    """
    problems = list(rejected)
    accepted: list[CompiledRoute] = []
    builder: RouterBuilder[CompiledRoute] = RouterBuilder()
    for file in files:
        route = compile_route(file, azure_base_url=azure_base_url)
        try:
            _add(builder, route)
        except (RouteConflict, TemplateError) as exc:
            problems.append(ConfigError((ConfigIssue(file.source, "route.paths", str(exc)),)))
            # A file is taken whole or not at all: rebuild without its
            # partially added paths (only on this rare path).
            builder = RouterBuilder()
            for kept in accepted:
                _add(builder, kept)
            continue
        accepted.append(route)
    return RouteTable(
        generation=generation,
        router=builder.build(),
        routes=tuple(accepted),
        rejected=tuple(problems),
    )


def _add(builder: RouterBuilder[CompiledRoute], route: CompiledRoute) -> None:
    methods = route.file.route.methods
    allowed = frozenset(methods) if methods is not None else None
    for path in route.file.route.paths:
        builder.add(path, allowed, route, route.file.source)
