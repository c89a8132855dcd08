"""The gateway: the one place that reads the current route table.

Every request reads ``Gateway._table`` exactly once, into a local, and runs to
completion on that snapshot: a table published mid-request (hot reload) is
seen only by the requests that start after it. Publishing is one reference
assignment on the event loop thread, so there is no lock and no moment where a
request can see half a table.

The upstream connection pool (``UpstreamPool``) belongs to the gateway (and
through it to the app), never to a table: swapping tables never closes a
connection an in-flight stream is using.
"""

from __future__ import annotations

from collections.abc import Awaitable

from aiohttp import web

from aigw.chain.body_budget import BodyBudget
from aigw.chain.exchange import Exchange
from aigw.chain.unmatched import answer_unmatched
from aigw.errors import BadRequest, GatewayError, MethodNotAllowed, RouteNotFound
from aigw.logs import scrubber
from aigw.routing import InvalidPath, Match, normalize_request_path
from aigw.table import RouteTable
from aigw.upstream.pool import UpstreamPool

__all__ = ["Gateway"]


class Gateway:
    """Dispatches each request to the route its path names.

    On a model-in-body path (``/openai/v1/…``) the trie's value is a model
    dispatcher (`aigw.apis.dispatch`), called exactly like a route: it picks the
    route by the body's ``model``, and answers what it cannot route through the
    same unmatched chain as a path no route claims.

    Args:
        table: The first route table to serve.
        pool: The app's upstream connection pool.
        body_budget: The worker's budget for buffered request bodies.
    """

    __slots__ = ("_body_budget", "_pool", "_table")

    def __init__(self, table: RouteTable, pool: UpstreamPool, body_budget: BodyBudget) -> None:
        self._pool = pool
        self._body_budget = body_budget
        self._table = table
        scrubber.replace(table.secrets())

    @property
    def table(self) -> RouteTable:
        """The table new requests are served from."""
        return self._table

    def swap(self, table: RouteTable) -> RouteTable:
        """Publishes *table* for new requests and returns the previous one."""
        # Secrets of both tables stay scrubbed until the old one has drained.
        scrubber.replace(table.secrets() | self._table.secrets())
        previous, self._table = self._table, table
        return previous

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The handler for every request on the proxy port.

        aiohttp's low-level ``web.Server`` calls it directly: no
        ``Application``, whose router would match every request against one
        catch-all regex before aigw's own trie does the real routing.
        """
        table = self._table  # NOTE: read once; see the module docstring.
        raw_path = request.raw_path
        query_at = raw_path.find("?")
        if query_at >= 0:
            raw_path = raw_path[:query_at]
        try:
            path = normalize_request_path(raw_path)
        except InvalidPath as exc:
            return await self._reject(
                request, raw_path[:200], table, BadRequest("invalid_path", str(exc))
            )
        found = table.router.match(request.method, path)
        if isinstance(found, Match):
            exchange = self._exchange(request, path, table)
            exchange.params = found.params
            return await found.value.handler(exchange)
        if found is None:
            error: GatewayError = RouteNotFound(
                "route_not_found", f"no route for {request.method} {path}"
            )
        else:
            allowed = ", ".join(sorted(found.allowed))
            error = MethodNotAllowed(
                "method_not_allowed",
                f"{request.method} is not allowed on {path}; allowed: {allowed}",
                headers={"Allow": allowed},
            )
        return await self._reject(request, path, table, error)

    def _reject(
        self, request: web.BaseRequest, path: str, table: RouteTable, error: GatewayError
    ) -> Awaitable[web.StreamResponse]:
        # Requests that match no route still get an id, a JSON error and a log line.
        return answer_unmatched(self._exchange(request, path, table), error)

    def _exchange(
        self,
        request: web.BaseRequest,
        path: str,
        table: RouteTable,
    ) -> Exchange:
        """A new exchange on this worker's pool and body budget, tagged with *table*'s
        generation."""
        return Exchange(
            request=request,
            path=path,
            pool=self._pool,
            body_budget=self._body_budget,
            generation=table.generation,
            consumers=table.consumers,
        )
