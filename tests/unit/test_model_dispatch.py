"""Model routes in the table (the model index, conflicts, the claimed paths) and the model
dispatcher (the body's ``model`` picks the route; errors before a route is known)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from aigw.apis.classic import ClassicPath, classic_paths
from aigw.apis.dispatch import ModelDispatch
from aigw.apis.operations import BY_ROUTE_TYPE, BY_SUFFIX, MODEL_PATHS, REALTIME, REALTIME_PATHS
from aigw.chain.body_budget import BodyBudget
from aigw.chain.exchange import Exchange
from aigw.check import check_warnings
from aigw.config.loader import parse_route_file
from aigw.config.model import AccessPlugins, RouteFile
from aigw.reload import Reloader
from aigw.route import CompiledRoute, compile_route
from aigw.routing import Match, MethodNotAllowed
from aigw.table import RouteTable, TableBuilder
from tests.unit.test_chain import MiB, exchange

ENV = {"KEY": "azure-key-123456"}


def route_text(head: str, model: str, deployment: str, route_type: str = "") -> str:
    """A route file: *head* (``route:`` and what it claims), then one Azure target for
    *deployment*."""
    return f"""route:
{head}plugins:
  - name: ai-proxy-advanced
    config:
      targets:
        - {route_type}auth: {{header_name: api-key, header_value: "${{KEY}}"}}
          model:
            provider: azure
            name: {model}
            options: {{azure_instance: res, azure_deployment_id: {deployment}}}
"""


def model_route(name: str, *models: str, extra: str = "", route_type: str = "") -> RouteFile:
    head = f"  name: {name}\n  models: [{', '.join(models)}]\n{extra}"
    text = route_text(head, models[0], models[0], route_type)
    return parse_route_file(f"conf.d/{name}.yaml", text.encode(), ENV)


def path_route(name: str, path: str, methods: str = "[POST]") -> RouteFile:
    head = f'  name: {name}\n  paths: ["{path}"]\n  methods: {methods}\n'
    text = route_text(head, "m", "m", "route_type: llm/v1/chat\n          ")
    return parse_route_file(f"conf.d/{name}.yaml", text.encode(), ENV)


class Recorder:
    """A route's chain that records the exchanges it is handed and the body budget then."""

    def __init__(self) -> None:
        self.seen: list[Exchange] = []
        self.budget_used: list[int] = []

    async def __call__(self, ex: Exchange) -> web.StreamResponse:
        self.seen.append(ex)
        self.budget_used.append(ex.body_budget.held)
        return web.Response(status=200)


class Compiler:
    """Compiles each route as chat (the chain is not under test here) with a recording
    handler, tagged with its own file."""

    def __init__(self) -> None:
        self.handlers: dict[str, Recorder] = {}

    def __call__(self, file: RouteFile, plugins: AccessPlugins) -> CompiledRoute:
        targets = tuple(replace(t, route_type="llm/v1/chat") for t in file.proxy.targets)
        plain = replace(file, proxy=replace(file.proxy, targets=targets), plugins=AccessPlugins())
        handler = self.handlers.setdefault(file.route.name, Recorder())
        return replace(compile_route(plain), file=file, handler=handler)


def table(*files: RouteFile) -> tuple[RouteTable, Compiler]:
    compiler = Compiler()
    builder = TableBuilder(compiler)
    for file in files:
        assert builder.offer(file) is None, file.source
    return builder.build(1), compiler


def found(t: RouteTable, path: str, method: str = "POST") -> Match[Any]:
    match = t.router.match(method, path)
    assert isinstance(match, Match), (method, path, match)
    return match


def route_at(t: RouteTable, path: str, method: str = "POST") -> str:
    value = found(t, path, method).value
    if isinstance(value, ClassicPath):
        return value.route.name
    assert isinstance(value, CompiledRoute)
    return value.name


# -- the table ------------------------------------------------------------------------------


def test_a_model_route_claims_its_classic_paths_and_every_model_in_body_path() -> None:
    t, _ = table(model_route("gpt-4o", "gpt-4o", "gpt-4o-mini"))
    # Each operation the route serves has a static classic path that knows its operation
    # (the Compiler compiles every route as llm/v1/chat).
    classic = found(t, "/openai/deployments/gpt-4o-mini/chat/completions")
    assert isinstance(classic.value, ClassicPath) and classic.value.route.name == "gpt-4o"
    assert classic.value.operation is BY_ROUTE_TYPE["llm/v1/chat"]
    # Anything else under the prefix still reaches the route (which says what it serves).
    match = found(t, "/openai/deployments/gpt-4o-mini/audio/speech")
    assert isinstance(match.value, CompiledRoute) and match.value.name == "gpt-4o"
    assert match.params == {"*": "audio/speech"}
    assert set(t.models) == {"gpt-4o", "gpt-4o-mini"}
    for path, (operation, style) in MODEL_PATHS.items():
        dispatcher = found(t, path).value
        assert isinstance(dispatcher, ModelDispatch)
        assert (dispatcher.operation, dispatcher.style) == (operation, style)
        assert dispatcher.models["gpt-4o-mini"].name == "gpt-4o"
    for path in REALTIME_PATHS:
        dispatcher = found(t, path, "GET").value
        assert isinstance(dispatcher, ModelDispatch) and dispatcher.operation is REALTIME
    assert t.routes == (t.models["gpt-4o"],)  # the dispatchers are not routes


def test_without_model_routes_the_model_in_body_paths_are_unrouted() -> None:
    t, _ = table(path_route("p", "/openai/deployments/{deployment}/chat/completions"))
    assert t.router.match("POST", "/openai/v1/chat/completions") is None
    assert t.models == {}


def test_deployment_paths_false_claims_only_the_model_in_body_paths() -> None:
    t, _ = table(model_route("gpt-4o", "gpt-4o", extra="  deployment_paths: false\n"))
    assert t.router.match("POST", "/openai/deployments/gpt-4o/chat/completions") is None
    assert isinstance(found(t, "/openai/v1/embeddings").value, ModelDispatch)


def test_the_classic_paths_are_claimed_for_post_only() -> None:
    t, _ = table(model_route("gpt-4o", "gpt-4o"))
    refused = t.router.match("GET", "/openai/deployments/gpt-4o/chat/completions")
    assert refused == MethodNotAllowed(frozenset({"POST"}))
    # Another method goes on to a route that takes it.
    t, _ = table(model_route("gpt-4o", "gpt-4o"), path_route("files", "/openai/*", "[GET]"))
    assert route_at(t, "/openai/deployments/gpt-4o/chat/completions", "GET") == "files"
    assert route_at(t, "/openai/deployments/gpt-4o/chat/completions") == "gpt-4o"


def test_a_model_another_file_serves_is_refused_and_the_first_keeps_it() -> None:
    builder = TableBuilder(Compiler())
    assert builder.offer(model_route("a", "gpt-4o")) is None
    error = builder.offer(model_route("b", "gpt-4o-mini", "gpt-4o"))
    assert error is not None
    (issue,) = error.issues
    assert (issue.file, issue.key_path) == ("conf.d/b.yaml", "route.models")
    assert issue.reason == "model `gpt-4o` is already served by route `a` (conf.d/a.yaml)"
    t = builder.build(1)
    # Nothing of the refused file stays: not its other model, not its classic paths.
    assert set(t.models) == {"gpt-4o"}
    assert t.router.match("POST", "/openai/deployments/gpt-4o-mini/chat/completions") is None
    assert route_at(t, "/openai/deployments/gpt-4o/chat/completions") == "a"


def test_an_explicit_static_path_beats_the_model_routes_classic_path() -> None:
    t, _ = table(
        model_route("gpt-4o", "gpt-4o"),
        path_route("pinned", "/openai/deployments/gpt-4o/chat/completions"),
        path_route("any", "/openai/deployments/{deployment}/chat/completions"),
    )
    assert route_at(t, "/openai/deployments/gpt-4o/chat/completions") == "pinned"
    # The model's static segment beats a {deployment} template...
    assert route_at(t, "/openai/deployments/gpt-4o/embeddings") == "gpt-4o"
    # ...which still serves every other deployment.
    assert route_at(t, "/openai/deployments/other/chat/completions") == "any"


@pytest.mark.parametrize("path_route_first", [False, True], ids=["model-first", "path-first"])
def test_a_path_route_on_a_model_in_body_path_serves_it_and_models_keep_the_rest(
    path_route_first: bool,
) -> None:
    files = [model_route("gpt-4o", "gpt-4o"), path_route("v1", "/openai/v1/chat/completions")]
    builder = TableBuilder(Compiler())
    for file in reversed(files) if path_route_first else files:
        assert builder.offer(file) is None, file.source
    t = builder.build(1)
    # The path route's explicit claim wins the one path, whatever the file order...
    assert route_at(t, "/openai/v1/chat/completions") == "v1"
    # ...and the model routes keep every other model-in-body path and their classic paths.
    assert isinstance(found(t, "/openai/v1/embeddings").value, ModelDispatch)
    assert route_at(t, "/openai/deployments/gpt-4o/chat/completions") == "gpt-4o"
    # Another model route still fits.
    assert builder.offer(model_route("other", "other")) is None
    # aigw check says what the path route takes from the model routes.
    assert check_warnings(t) == [
        "route v1 (conf.d/v1.yaml): claims /openai/v1/chat/completions, so every model's "
        "/openai/v1/chat/completions request goes to it, not to the model routes (route.models)"
    ]


def test_a_built_table_never_sees_models_offered_later() -> None:
    builder = TableBuilder(Compiler())
    assert builder.offer(model_route("a", "gpt-4o")) is None
    first = builder.build(1)
    assert builder.offer(model_route("b", "gpt-4o-mini")) is None
    second = builder.build(2)
    before, after = (found(t, "/openai/v1/chat/completions").value for t in (first, second))
    assert isinstance(before, ModelDispatch) and isinstance(after, ModelDispatch)
    assert set(before.models) == {"gpt-4o"}
    assert set(after.models) == {"gpt-4o", "gpt-4o-mini"}
    assert set(first.models) == {"gpt-4o"}


# -- the dispatcher -------------------------------------------------------------------------


def dispatcher(t: RouteTable, path: str) -> ModelDispatch:
    value = found(t, path, "GET" if path in REALTIME_PATHS else "POST").value
    assert isinstance(value, ModelDispatch)
    return value


def error_of(response: web.StreamResponse) -> dict[str, Any]:
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    error: dict[str, Any] = json.loads(response.body)["error"]
    return error


async def test_the_body_model_picks_the_route_and_the_body_is_parsed_once() -> None:
    t, compiler = table(model_route("a", "gpt-4o"), model_route("b", "gpt-4o-mini"))
    body = json.dumps({"model": "gpt-4o-mini", "input": "hi"}).encode()
    budget = BodyBudget(64 * MiB)
    ex = exchange(body, budget=budget)
    response = await dispatcher(t, "/openai/v1/responses").handler(ex)
    assert response.status == 200
    assert compiler.handlers["a"].seen == []
    (seen,) = compiler.handlers["b"].seen
    assert seen is ex
    assert ex.payload == {"model": "gpt-4o-mini", "input": "hi"}
    assert ex.client_body == ex.upstream_body == body
    assert ex.requested_model == "gpt-4o-mini"
    assert ex.body_preread is True
    assert (ex.operation, ex.api_style) == (BY_ROUTE_TYPE["llm/v1/responses"], "v1")
    # Held while the route ran, released when it returned.
    assert compiler.handlers["b"].budget_used == [len(body)]
    assert budget.held == 0


async def test_the_classic_responses_path_is_the_openai_style() -> None:
    t, compiler = table(model_route("a", "gpt-4o"))
    ex = exchange(b'{"model": "gpt-4o", "input": "x"}')
    await dispatcher(t, "/openai/responses").handler(ex)
    assert compiler.handlers["a"].seen == [ex]
    assert ex.api_style == "openai"


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "message"),
    [
        (
            b'{"model": "gpt-5", "messages": []}',
            404,
            "model_not_found",
            "model",
            "no route serves the model `gpt-5`: it is in no route's `route.models`",
        ),
        (
            b'{"messages": []}',
            400,
            "missing_model",
            "model",
            "the request body has no `model`; the model-in-body APIs choose the route by "
            "the body's `model`",
        ),
        (
            b'{"model": ["gpt-4o"]}',
            400,
            "missing_model",
            "model",
            "`model` must be a non-empty string naming a deployment",
        ),
        (b'{"model": ""}', 400, "missing_model", "model", "has no `model`"),
        (b"model=gpt-4o", 400, "invalid_json", None, "the request body is not valid JSON"),
        (b'["gpt-4o"]', 400, "invalid_json", None, "must be a JSON object, not an array"),
        (b"", 400, "invalid_json", None, "the request body is empty"),
    ],
)
async def test_a_body_that_names_no_route_is_answered_before_any_route(
    body: bytes, status: int, code: str, param: str | None, message: str
) -> None:
    t, compiler = table(model_route("a", "gpt-4o"))
    budget = BodyBudget(64 * MiB)
    ex = exchange(body, budget=budget)
    response = await dispatcher(t, "/openai/v1/chat/completions").handler(ex)
    assert response.status == status
    error = error_of(response)
    assert (error["code"], error["param"]) == (code, param)
    assert message in error["message"]
    assert compiler.handlers["a"].seen == []
    assert budget.held == 0
    assert ex.outcome == code


async def test_an_unknown_model_is_quoted_at_most_200_characters() -> None:
    t, _ = table(model_route("a", "gpt-4o"))
    ex = exchange(json.dumps({"model": "m" * 5000}).encode())
    error = error_of(await dispatcher(t, "/openai/v1/embeddings").handler(ex))
    assert f"`{'m' * 200}...`" in error["message"]
    assert "m" * 201 not in error["message"]


def limited(file: RouteFile, size: int) -> RouteFile:
    """*file* with its plugin's ``max_request_body_size`` at *size* (0: none)."""
    return replace(file, proxy=replace(file.proxy, max_request_body_size=size))


async def test_the_body_limit_is_the_loosest_model_routes() -> None:
    small = limited(model_route("a", "gpt-4o"), 100)
    big = limited(model_route("b", "gpt-4o-mini"), 1000)
    t, compiler = table(small, big)
    body = json.dumps({"model": "gpt-4o-mini", "input": "x" * 500}).encode()
    response = await dispatcher(t, "/openai/v1/embeddings").handler(exchange(body))
    assert response.status == 200
    too_big = json.dumps({"model": "gpt-4o-mini", "input": "x" * 1000}).encode()
    response = await dispatcher(t, "/openai/v1/embeddings").handler(exchange(too_big))
    assert response.status == 413
    assert error_of(response)["code"] == "request_too_large"
    assert len(compiler.handlers["b"].seen) == 1


async def test_an_unlimited_model_route_makes_the_dispatcher_unlimited() -> None:
    small = limited(model_route("a", "gpt-4o"), 100)
    unlimited = limited(model_route("b", "gpt-4o-mini"), 0)
    t, compiler = table(small, unlimited)
    body = json.dumps({"model": "gpt-4o-mini", "input": "x" * 100_000}).encode()
    response = await dispatcher(t, "/openai/v1/embeddings").handler(exchange(body))
    assert response.status == 200
    assert len(compiler.handlers["b"].seen) == 1


@pytest.mark.parametrize(("path", "param"), list((p, q) for p, (q, _) in REALTIME_PATHS.items()))
async def test_realtime_takes_the_model_from_the_query(path: str, param: str) -> None:
    t, compiler = table(model_route("a", "gpt-4o-realtime"))
    ex = exchange(path=f"{path}?api-version=2025-04-01-preview&{param}=gpt-4o-realtime")
    response = await dispatcher(t, path).handler(ex)
    assert response.status == 200
    assert compiler.handlers["a"].seen == [ex]
    assert (ex.operation, ex.api_style) == (REALTIME, REALTIME_PATHS[path][1])
    assert ex.requested_model == "gpt-4o-realtime"

    missing = await dispatcher(t, path).handler(exchange(path=path))
    error = error_of(missing)
    assert (missing.status, error["code"], error["param"]) == (400, "missing_model", param)
    assert f"the query has no `{param}`" in error["message"]

    unknown = await dispatcher(t, path).handler(exchange(path=f"{path}?{param}=nope"))
    error = error_of(unknown)
    assert (unknown.status, error["code"], error["param"]) == (404, "model_not_found", param)


# -- hot reload -----------------------------------------------------------------------------


def model_route_text(name: str, model: str, deployment: str) -> str:
    # A specific route_type: the reloader compiles for real, and the chain is not under test.
    head = f"  name: {name}\n  models: [{model}]\n"
    return route_text(head, model, deployment, "route_type: llm/v1/chat\n          ")


def serving(r: Reloader, model: str) -> str | None:
    """The deployment the current table's v1 dispatcher sends *model* to."""
    assert r.table is not None
    value = found(r.table, "/openai/v1/chat/completions").value
    assert isinstance(value, ModelDispatch)
    route = value.models.get(model)
    return None if route is None else route.target.deployment


@pytest.mark.parametrize("newcomer", ["0-new.yaml", "z-new.yaml"])
async def test_reload_a_second_file_for_a_served_model_waits_for_the_first_to_go(
    tmp_path: Path, newcomer: str
) -> None:
    (tmp_path / "m.yaml").write_text(model_route_text("first", "gpt-4o", "dep-first"))
    r = Reloader(tmp_path, ENV)
    r.load_initial()
    assert serving(r, "gpt-4o") == "dep-first"
    # Whatever its name sorts like, the newcomer is refused and the incumbent serves.
    (tmp_path / newcomer).write_text(model_route_text("second", "gpt-4o", "dep-second"))
    report = await r.reload("watch")
    (error,) = report.rejected
    assert "model `gpt-4o` is already served by route `first`" in str(error)
    assert serving(r, "gpt-4o") == "dep-first"
    files = r.status()["files"]
    assert files["m.yaml"]["models"] == ["gpt-4o"]
    assert (files["m.yaml"]["state"], files[newcomer]["state"]) == ("active", "rejected")
    # The incumbent deleted: the newcomer takes the model on the next reload.
    (tmp_path / "m.yaml").unlink()
    await r.reload("watch")
    assert serving(r, "gpt-4o") == "dep-second"
    assert r.status()["files"][newcomer]["state"] == "active"
    assert r.table is not None
    assert route_at(r.table, "/openai/deployments/gpt-4o/chat/completions") == "second"


async def test_reload_a_changed_model_list_moves_the_model(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(model_route_text("a", "gpt-4o", "dep-a"))
    r = Reloader(tmp_path, ENV)
    r.load_initial()
    (tmp_path / "a.yaml").write_text(model_route_text("a", "gpt-4o-mini", "dep-a"))
    (tmp_path / "b.yaml").write_text(model_route_text("b", "gpt-4o", "dep-b"))
    report = await r.reload("watch")
    assert report.rejected == ()
    assert (serving(r, "gpt-4o"), serving(r, "gpt-4o-mini")) == ("dep-b", "dep-a")


# -- multipart ------------------------------------------------------------------------------

BOUNDARY = "form-boundary-1234"


def form(*fields: tuple[str, bytes]) -> bytes:
    """A multipart/form-data body; a field named ``file`` is sent as a file."""
    parts = []
    for name, value in fields:
        filename = '; filename="a.wav"' if name == "file" else ""
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'
        parts.append(head.encode() + value + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
TRANSCRIPTIONS = "/openai/v1/audio/transcriptions"


async def test_a_forms_model_field_picks_the_route_and_the_file_is_left_to_stream() -> None:
    t, compiler = table(model_route("whisper", "whisper"))
    body = form(("model", b"whisper"), ("file", b"RIFF" + b"\0" * 4000))
    ex = exchange(body, headers=MULTIPART)
    response = await dispatcher(t, TRANSCRIPTIONS).handler(ex)
    assert response.status == 200
    assert compiler.handlers["whisper"].seen == [ex]
    assert ex.upstream_stream is not None
    assert ex.requested_model == "whisper"
    operation = BY_ROUTE_TYPE["audio/v1/audio/transcriptions"]
    assert (ex.operation, ex.api_style, ex.body_preread) == (operation, "v1", False)


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ((("model", b"nope"), ("file", b"x")), 404, "model_not_found"),
        ((("file", b"x"), ("model", b"whisper")), 400, "missing_model"),
    ],
)
async def test_a_form_naming_no_route_is_answered_before_any_route(
    fields: tuple[tuple[str, bytes], ...], status: int, code: str
) -> None:
    t, compiler = table(model_route("whisper", "whisper"))
    response = await dispatcher(t, TRANSCRIPTIONS).handler(exchange(form(*fields), MULTIPART))
    error = error_of(response)
    assert (response.status, error["code"], error["param"]) == (status, code, "model")
    assert compiler.handlers["whisper"].seen == []


async def test_reload_a_changed_file_claiming_a_served_model_keeps_its_last_known_good(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(model_route_text("a", "gpt-4o", "dep-a"))
    (tmp_path / "b.yaml").write_text(model_route_text("b", "small", "dep-b"))
    r = Reloader(tmp_path, ENV)
    r.load_initial()
    (tmp_path / "a.yaml").write_text(model_route_text("a", "small", "dep-a2"))
    report = await r.reload("watch")
    (error,) = report.rejected
    assert "model `small` is already served by route `b`" in str(error)
    assert r.status()["files"]["a.yaml"]["state"] == "lkg"
    assert (serving(r, "gpt-4o"), serving(r, "small")) == ("dep-a", "dep-b")


async def test_an_auto_routes_classic_paths_name_their_operations_at_load() -> None:
    route = compile_route(model_route("gpt-4o", "gpt-4o"))
    paths = dict(classic_paths(route, "gpt-4o"))
    assert set(paths) == {f"/openai/deployments/gpt-4o/{rest}" for rest in BY_SUFFIX}
    entry = paths["/openai/deployments/gpt-4o/audio/speech"]
    seen: list[tuple[object, object]] = []

    async def chain(ex: Exchange) -> web.StreamResponse:
        seen.append((ex.operation, ex.api_style))
        return web.Response()

    bound = classic_paths(replace(route, handler=chain), "gpt-4o")
    handler = dict(bound)["/openai/deployments/gpt-4o/audio/speech"].handler
    await handler(exchange(b"{}"))
    assert seen == [(BY_ROUTE_TYPE["audio/v1/audio/speech"], "deployments")]
    assert entry.operation is BY_ROUTE_TYPE["audio/v1/audio/speech"]
    # A route of one type: its own operation only; Responses has no deployment path.
    one_type = "route_type: llm/v1/chat\n          "
    chat = compile_route(model_route("c", "gpt-4o", route_type=one_type))
    paths_of_chat = [path for path, _ in classic_paths(chat, "m")]
    assert paths_of_chat == ["/openai/deployments/m/chat/completions"]
